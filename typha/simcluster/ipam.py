"""Calico's IPAM over the synthetic cluster's one IPv4 pool: affine blocks, claiming, borrowing, release.

The algorithm is Calico's (seed 000): allocate from the node's affine blocks; else claim a free
block from the pool (while the node holds fewer than ``max_blocks_per_node``, 0 for no limit); else
*borrow* an address from any other block with room, found by random probing as Calico does. A
block that loses its node keeps the addresses it lends (``affinity: null``) and is deleted once
they are released. Every change emits the watch events Calico's writes produce, in order (pending
affinity, block, confirmed affinity), when an event list is given; during construction none is.
"""

from __future__ import annotations

from protocol.keys import ADDED, DELETED, MODIFIED

from .records import Block, Clock, IndexedSet, Node, Pod, Tunnel
from .render import Event, render_affinity, render_block


class Ipam:
    """The pool's blocks and who holds each address."""

    def __init__(
        self, clock: Clock, pool_base: int, pool_prefix: int, block_size: int, max_blocks_per_node: int
    ) -> None:
        self.clock = clock
        self.block_size = block_size
        self.block_addrs = 1 << (32 - block_size)
        self.max_blocks_per_node = max_blocks_per_node  # 0 = unlimited, as Calico's maxBlocksPerHost
        self._pool_base = pool_base
        self._pool_blocks = 1 << (block_size - pool_prefix)
        self._next_block = 0
        self._free_block_idx: list[int] = []  # released indices, reused LIFO
        self.blocks: dict[int, Block] = {}  # idx -> block (claimed or borrow-only)
        self._block_list = IndexedSet()  # for random borrowing

    def allocate(self, owner: Pod | Tunnel, node: Node, emit: list[Event] | None) -> Block | None:
        """Give ``owner`` an address the way Calico IPAM does; None if the pool is exhausted."""
        block = next((b for b in node.blocks if b.free), None)
        if block is None and (not self.max_blocks_per_node or len(node.blocks) < self.max_blocks_per_node):
            block = self._claim(node, emit)
        if block is None:
            block = self._borrowable()
            if block is None:
                return None
        self._take(block, owner)
        block.rv = self.clock.bump()
        if emit is not None:
            emit.append((MODIFIED, "ipamblocks", render_block(block)))
        return block

    def release(self, owner: Pod | Tunnel, emit: list[Event]) -> None:
        """Free ``owner``'s address (an orphaned block that empties is deleted, as Calico's GC does)."""
        block = owner.block
        if block is None:
            return
        block.owners[owner.ordinal] = None
        block.free.append(owner.ordinal)
        block.seq += 1
        owner.block = None
        block.rv = self.clock.bump()
        if block.node is None and len(block.free) == len(block.owners):
            self._drop_block(block, emit)
        else:
            emit.append((MODIFIED, "ipamblocks", render_block(block)))

    def release_affinities(self, node: Node, emit: list[Event]) -> None:
        """A node left: delete its affinities; empty blocks go, blocks still lending keep no affinity."""
        for block in node.blocks:
            block.aff_rv = self.clock.bump()
            emit.append((DELETED, "blockaffinities", render_affinity(block, node)))
            block.node = None
            if len(block.free) == len(block.owners):
                self._drop_block(block, emit)
            else:  # other nodes still borrow from it: keep it, without affinity
                block.rv = self.clock.bump()
                emit.append((MODIFIED, "ipamblocks", render_block(block)))
        node.blocks = []

    def borrowed(self) -> int:
        """Addresses held by a node other than their block's affine node."""
        return sum(1 for b in self.blocks.values() for o in b.owners if o is not None and o.node is not b.node)

    def _take(self, block: Block, owner: Pod | Tunnel) -> None:
        ordinal = block.free.popleft()
        block.owners[ordinal] = owner
        block.seq += 1
        owner.block, owner.ordinal, owner.ip, owner.alloc_seq = block, ordinal, block.base + ordinal, block.seq

    def _claim(self, node: Node, emit: list[Event] | None) -> Block | None:
        if self._free_block_idx:
            idx = self._free_block_idx.pop()
        elif self._next_block < self._pool_blocks:
            idx = self._next_block
            self._next_block += 1
        else:
            return None
        clock = self.clock
        base = self._pool_base + idx * self.block_addrs
        block = Block(idx, base, self.block_size, self.block_addrs, clock.uid(), clock.now)
        block.node = node
        block.aff_uid = clock.uid()
        self.blocks[idx] = block
        self._block_list.add(block)
        node.blocks.append(block)
        if emit is not None:  # Calico: pending affinity, then the block, then confirm
            block.aff_state = "pending"
            block.aff_rv = clock.bump()
            emit.append((ADDED, "blockaffinities", render_affinity(block)))
            block.rv = clock.bump()
            emit.append((ADDED, "ipamblocks", render_block(block)))
            block.aff_state = "confirmed"
            block.aff_rv = clock.bump()
            emit.append((MODIFIED, "blockaffinities", render_affinity(block)))
        else:
            block.rv = clock.bump()
            block.aff_rv = clock.bump()
        return block

    def _borrowable(self) -> Block | None:
        # Calico hunts through the pool's existing blocks at random for a free address.
        blocks = self._block_list
        for _ in range(16):
            if not blocks:
                return None
            b = blocks.choice(self.clock.rng)
            if b.free:
                return b
        return next((b for b in blocks.items if b.free), None)

    def _drop_block(self, block: Block, emit: list[Event]) -> None:
        del self.blocks[block.idx]
        self._block_list.remove(block)
        self._free_block_idx.append(block.idx)
        block.rv = self.clock.bump()
        emit.append((DELETED, "ipamblocks", render_block(block)))
