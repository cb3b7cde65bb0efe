"""The state summary: an order-independent digest of a key/value view, per bucket of the key space.

Design note
-----------
A client that reconnects to *another* replica (or to a restarted one) holds a complete view, but
sequence numbers from another cache mean nothing there (docs/protocol.md 8.1). What both sides can
compare is the state itself. Shipping it is what a snapshot does; comparing it cheaply needs a digest
that (a) does not depend on the order in which changes arrived, since two replicas apply the same
changes in different batches, (b) updates in O(1) per change, since the server applies thousands of
changes a second and the client must keep it current at every update, and (c) localises a difference,
so the server can send only what differs.

So the key space is cut into `LEAVES` (16,384) buckets by the top 14 bits of a hash of the key alone,
and each bucket's digest is the sum, modulo 2^64, of a 64-bit hash of each (key, value) it holds. Adding
a key adds its hash, deleting subtracts it, a changed value does both: O(1), and the sum is the same
whatever the order. The leaves are grouped 128 to a *top* bucket whose digest is the sum of its leaves'
(equivalently of its entries'), also kept current in O(1). A reconnecting client sends its 128 top
digests (1 KiB, so the hello stays small); the server answers with its leaf digests under the tops that
differ; the client asks for the leaves that differ, and receives exactly their contents, which replace
what it holds there (docs/protocol.md 12.2). One changed key costs about 1 KiB of digests plus the
~10 keys of one leaf at 160k keys, instead of the whole state.

Why these choices and not the obvious others:
- A Merkle tree over *sorted* keys also localises differences, but an insertion shifts every later
  boundary, and keeping it balanced costs O(log n) hashing per change on both sides; fixed hash buckets
  never move.
- Sum rather than XOR: both are order-independent and O(1); under XOR two equal entry hashes cancel,
  under a sum they do not. A view is a map, so the difference is small, but the sum costs nothing more.
- BLAKE2b (the standard library's, 8-byte digests) rather than a faster non-cryptographic hash: the
  values carry user-controlled content (labels, annotations), and with a seeded 64-bit hash like xxh3
  someone who can write objects could craft a change whose entry hash equals the old one, which a
  reconnecting agent would then never see. With BLAKE2b that is a 2^64 search. It costs about 0.5 us
  per hash; a change needs at most three (key, old entry, new entry), and the cache keeps the key's
  entry hash so it needs one.
- Fixed parameters (16,384 leaves under 128 tops) rather than negotiated ones: both sides must bucket
  identically, and a fixed layout is one thing less to get wrong; at 160k keys a leaf holds ~10 keys,
  at 1.6M keys ~100. A later summary version can change them.

The entry hash is BLAKE2b-64 over ``u32be(len(key)) || key || value`` (the key's UTF-8 bytes), read as a
big-endian unsigned integer; the leaf is the top 14 bits of BLAKE2b-64 over the key's UTF-8 bytes; leaf
``l`` belongs to top ``l >> 7``. Digests travel as big-endian u64s. Deleted keys are not in the view, so
they contribute nothing.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator
from hashlib import blake2b

#: The summary layout version carried in the hello; bump it to change any parameter below.
SUMMARY_VERSION = 1
LEAF_BITS = 14
LEAVES = 1 << LEAF_BITS  # 16,384
TOPS = 128
LEAVES_PER_TOP = LEAVES // TOPS  # 128
_TOP_SHIFT = LEAF_BITS - 7
_LEAF_SHIFT = 64 - LEAF_BITS
MASK = (1 << 64) - 1
DIGEST_SIZE = 8
#: Byte sizes on the wire: the client's top digests, one top's leaf digests, a bitmap of leaves.
TOP_DIGESTS_BYTES = TOPS * DIGEST_SIZE  # 1,024
LEAF_DIGESTS_PER_TOP_BYTES = LEAVES_PER_TOP * DIGEST_SIZE  # 1,024
LEAF_BITMAP_BYTES = LEAVES // 8  # 2,048

_SWAP = sys.byteorder == "little"


def key_hash(key: str) -> int:
    """BLAKE2b-64 of the key's UTF-8 bytes (its top 14 bits are the key's leaf)."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big")


def leaf_of(key: str) -> int:
    """The leaf bucket (0 .. LEAVES-1) a key belongs to."""
    return key_hash(key) >> _LEAF_SHIFT


def top_of_leaf(leaf: int) -> int:
    return leaf >> _TOP_SHIFT


def entry_hash(key: str, value: bytes) -> int:
    """BLAKE2b-64 of ``u32be(len(key)) || key || value``: what one (key, value) adds to its leaf."""
    kb = key.encode()
    return int.from_bytes(blake2b(len(kb).to_bytes(4, "big") + kb + value, digest_size=8).digest(), "big")


def _to_wire(a: array[int]) -> bytes:
    if _SWAP:
        a = array("Q", a)
        a.byteswap()
    return a.tobytes()


def _from_wire(data: bytes) -> array[int]:
    a = array("Q")
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a


class StateSummary:
    """Per-leaf and per-top digests of a view, updated in O(1) per change."""

    __slots__ = ("leaves", "tops")

    def __init__(self) -> None:
        self.leaves: array[int] = array("Q", bytes(LEAVES * DIGEST_SIZE))
        self.tops: array[int] = array("Q", bytes(TOPS * DIGEST_SIZE))

    @classmethod
    def of(cls, items: Iterable[tuple[str, bytes]]) -> StateSummary:
        """The summary of a whole view, (key, value) pairs in any order."""
        s = cls()
        for key, value in items:
            s.add(key, value)
        return s

    def copy(self) -> StateSummary:
        s = StateSummary.__new__(StateSummary)
        s.leaves = array("Q", self.leaves)
        s.tops = array("Q", self.tops)
        return s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateSummary) and self.leaves == other.leaves

    __hash__ = None  # type: ignore[assignment]  # mutable

    # -- changes -------------------------------------------------------------------------------------
    def add_hash(self, leaf: int, h: int) -> None:
        """Add one entry hash to `leaf` (callers that keep entry hashes use these two directly)."""
        self.leaves[leaf] = (self.leaves[leaf] + h) & MASK
        top = leaf >> _TOP_SHIFT
        self.tops[top] = (self.tops[top] + h) & MASK

    def remove_hash(self, leaf: int, h: int) -> None:
        self.leaves[leaf] = (self.leaves[leaf] - h) & MASK
        top = leaf >> _TOP_SHIFT
        self.tops[top] = (self.tops[top] - h) & MASK

    def add(self, key: str, value: bytes) -> None:
        self.add_hash(leaf_of(key), entry_hash(key, value))

    def remove(self, key: str, value: bytes) -> None:
        self.remove_hash(leaf_of(key), entry_hash(key, value))

    def change(self, key: str, old: bytes | None, new: bytes | None) -> None:
        """The key's value went from `old` to `new` (None: absent). Equal values change nothing."""
        if old == new:
            return
        leaf = leaf_of(key)
        if old is not None:
            self.remove_hash(leaf, entry_hash(key, old))
        if new is not None:
            self.add_hash(leaf, entry_hash(key, new))

    # -- comparing -----------------------------------------------------------------------------------
    def top_digests(self) -> bytes:
        """The 128 top digests as the hello carries them (1 KiB)."""
        return _to_wire(self.tops)

    def differing_tops(self, their_tops: bytes) -> list[int]:
        """Indexes of the tops whose digest differs from `their_tops` (a peer's `top_digests()`)."""
        if len(their_tops) != TOP_DIGESTS_BYTES:
            raise ValueError(f"top digests must be {TOP_DIGESTS_BYTES} bytes, got {len(their_tops)}")
        theirs = _from_wire(their_tops)
        return [i for i, (a, b) in enumerate(zip(self.tops, theirs)) if a != b]

    def leaf_digests(self, tops: Iterable[int]) -> bytes:
        """The leaf digests under each of `tops`, in that order (1 KiB per top)."""
        out = array("Q")
        for t in tops:
            start = t * LEAVES_PER_TOP
            out.extend(self.leaves[start : start + LEAVES_PER_TOP])
        return _to_wire(out)

    def differing_leaves(self, tops: list[int], their_leaf_digests: bytes) -> list[int]:
        """The leaves under `tops` whose digest differs from a peer's `leaf_digests(tops)`."""
        if len(their_leaf_digests) != len(tops) * LEAF_DIGESTS_PER_TOP_BYTES:
            raise ValueError(
                f"{len(tops)} tops need {len(tops) * LEAF_DIGESTS_PER_TOP_BYTES} bytes of leaf digests, "
                f"got {len(their_leaf_digests)}"
            )
        theirs = _from_wire(their_leaf_digests)
        out = []
        mine = self.leaves
        for n, t in enumerate(tops):
            start = t * LEAVES_PER_TOP
            base = n * LEAVES_PER_TOP
            for j in range(LEAVES_PER_TOP):
                if mine[start + j] != theirs[base + j]:
                    out.append(start + j)
        return out


# -- leaf sets on the wire ---------------------------------------------------------------------------
def leaves_to_bitmap(leaves: Iterable[int]) -> bytes:
    """A set of leaves as a 2 KiB bitmap (bit ``l % 8`` of byte ``l // 8``, least significant first)."""
    bits = bytearray(LEAF_BITMAP_BYTES)
    for leaf in leaves:
        if not 0 <= leaf < LEAVES:
            raise ValueError(f"leaf {leaf} out of range")
        bits[leaf >> 3] |= 1 << (leaf & 7)
    return bytes(bits)


def bitmap_to_leaves(bitmap: bytes) -> list[int]:
    """The leaves set in a bitmap, ascending. ValueError for a bitmap of the wrong size."""
    if len(bitmap) != LEAF_BITMAP_BYTES:
        raise ValueError(f"a leaf bitmap is {LEAF_BITMAP_BYTES} bytes, got {len(bitmap)}")
    return list(_iter_bits(bitmap))


def _iter_bits(bitmap: bytes) -> Iterator[int]:
    for i, byte in enumerate(bitmap):
        if byte:
            for b in range(8):
                if byte >> b & 1:
                    yield i * 8 + b


def valid_tops(tops: object) -> bool:
    """True for a strictly ascending list of top indexes (what a DIGESTS message must carry)."""
    if not isinstance(tops, (list, tuple)):
        return False
    prev = -1
    for t in tops:
        if type(t) is not int or not prev < t < TOPS:
            return False
        prev = t
    return True


class IndexedSummary(StateSummary):
    """A summary that also remembers each key's entry hash, per leaf: a change then costs one key hash
    and at most one entry hash, and the keys of a leaf can be listed (what a server sends for a WANT).

    About 70 bytes per key; the server's caches use it, a client's view needs only `StateSummary`."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        super().__init__()
        self.index: list[dict[str, int]] = [{} for _ in range(LEAVES)]

    def set(self, key: str, value: bytes | None) -> None:
        """The key now holds `value` (None: deleted)."""
        leaf = leaf_of(key)
        bucket = self.index[leaf]
        old = bucket.pop(key, None)
        if old is not None:
            self.remove_hash(leaf, old)
        if value is not None:
            h = entry_hash(key, value)
            bucket[key] = h
            self.add_hash(leaf, h)

    def keys_in(self, leaves: Iterable[int]) -> Iterator[str]:
        """Every key held in `leaves`."""
        index = self.index
        for leaf in leaves:
            yield from index[leaf]
