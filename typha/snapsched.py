"""Snapshot streams: who may stream, in which order, and how many bytes per pass of the event loop.

Design note
-----------
When a replica dies, thousands of agents arrive at the survivor at once. What they cost it is bytes:
bytes queued in transport buffers (memory) and bytes written per pass of the event loop (time the
agents already following wait for their updates). A cap on the *number* of streams bounds neither: 200
streams of a 150k-pod snapshot could queue 200 x (256 KiB high-water mark + a chunk), and each stream's
own `pump` wrote a whole MiB before yielding, so 200 of them delayed a fan-out pass by 200 MiB of
copying. This scheduler bounds both by bytes:

- *in flight*: a stream that has written holds its transport buffer's bytes; one admitted but not yet
  written is charged `reserve_bytes` (what it will hold once its agent reads slower than we write), so a
  burst of arrivals in one loop iteration cannot all be admitted against buffers that are still empty;
- *admission*: a waiting stream starts only while the bytes in flight are under `buffer_bytes` (and, as
  an optional second bound, while fewer than `max_streams` full snapshots stream);
- *memory*: a pass writes nothing while the bytes already buffered reach `buffer_bytes`, whoever holds
  them, so agents that all slow down at once cannot make the buffers grow past it (plus one chunk);
- *pacing*: one writer writes at most `pass_bytes` per loop pass, or until it has encoded one fresh
  chunk (compression work), then yields to the loop with `call_soon`, so a due fan-out pass runs
  between two rounds of snapshot writes;
- *order*: reconciles (a partial snapshot of the leaves an agent lacks, usually a few KiB) are admitted
  and written before full snapshots, so the agents that need least are back first; full snapshots are
  written oldest first, and a younger stream is written only while the older ones are paused (their
  agents not reading). Round-robin would finish every stream of a storm at about the same, late time;
  oldest first gives the same total but the first agents in sync early, the mean time halved, while a
  slow agent still cannot hold the others up. A seq resume needs no snapshot at all and never queues.

The writer calls back into each connection (`SnapshotStream.write_snapshot_step`) for the actual
writes; this module holds no sockets and no snapshots, only the order and the accounting, so its
policy is tested on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class SnapshotStream(Protocol):
    """What the scheduler needs of a connection streaming a snapshot."""

    paused: bool

    def buffered_bytes(self) -> int:
        """Bytes waiting in its transport buffer."""
        ...

    def write_snapshot_step(self, max_bytes: int) -> tuple[int, bool, bool]:
        """Write at most about `max_bytes` (at least one frame); (bytes written, encoded a fresh chunk, done)."""
        ...


S = TypeVar("S", bound=SnapshotStream)

#: Seconds before the writer looks again when the buffers are full but no transport is paused (so no
#: `resume_writing` will wake it): the agents are reading, just not yet enough.
FULL_BUFFERS_RETRY = 0.01


class SnapshotScheduler(Generic[S]):
    """Admission by bytes in flight, partial snapshots first, oldest first, a byte quantum per loop pass."""

    def __init__(
        self,
        buffer_bytes: int,
        pass_bytes: int,
        reserve_bytes: int,
        max_streams: int = 0,
        on_admit: Callable[[S, bool], None] | None = None,
        on_wake: Callable[[float], None] | None = None,
        on_change: Callable[[SnapshotScheduler[S]], None] | None = None,
    ) -> None:
        """`on_admit(stream, partial)` hears that a waiting stream may start (it takes its snapshot then).
        `on_wake(delay)` arranges for `run_pass` to be called after `delay` seconds (the server: the loop's
        `call_soon`/`call_later`); without it the caller runs passes itself (tests). `on_change` hears
        every start, finish and queueing (metrics)."""
        self.buffer_bytes = buffer_bytes
        self.pass_bytes = pass_bytes
        self.reserve_bytes = reserve_bytes
        self.max_streams = max_streams
        self.active: dict[S, bool] = {}  # streaming now -> partial?, in order of admission
        self._unwritten: set[S] = set()  # admitted, nothing written yet: charged reserve_bytes
        self._waiting_partial: deque[S] = deque()
        self._waiting_full: deque[S] = deque()
        self._on_admit = on_admit
        self._on_wake = on_wake
        self._on_change = on_change
        self._scheduled = False
        self.passes = 0
        self.bytes_written = 0
        self.held_back = 0  # passes that wrote nothing because the buffers were full

    # -- membership ------------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._waiting_partial) + len(self._waiting_full)

    def __contains__(self, stream: object) -> bool:
        return stream in self.active

    def __iter__(self) -> Iterator[S]:
        return iter(list(self.active))

    def in_flight(self) -> int:
        """Bytes the active streams hold in their transport buffers, or will once they start writing."""
        unwritten = self._unwritten
        reserve = self.reserve_bytes
        return sum(reserve if s in unwritten else s.buffered_bytes() for s in self.active)

    def submit(self, stream: S, partial: bool) -> bool:
        """A stream wants to start: True if it may start now; else it waits its turn and `on_admit` is
        called when it may."""
        ahead = self._waiting_partial if partial else self._waiting_partial or self._waiting_full
        if not ahead and self._room(partial):
            self._activate(stream, partial)
            return True
        (self._waiting_partial if partial else self._waiting_full).append(stream)
        self._changed()
        return False

    def _room(self, partial: bool) -> bool:
        # Reconciles are a few KiB: only bytes hold them back, never the count of full snapshots.
        if not partial and self.max_streams and sum(1 for p in self.active.values() if not p) >= self.max_streams:
            return False
        return self.in_flight() < self.buffer_bytes

    def _activate(self, stream: S, partial: bool) -> None:
        self.active[stream] = partial
        self._unwritten.add(stream)
        self._changed()
        self.wake()

    def finished(self, stream: S) -> None:
        """`stream` is done (or gone): drop it and start whoever may start now."""
        self.active.pop(stream, None)
        self._unwritten.discard(stream)
        for q in (self._waiting_partial, self._waiting_full):
            try:
                q.remove(stream)
            except ValueError:
                pass
        self.admit_waiting()
        self._changed()

    def admit_waiting(self) -> None:
        """Start waiting streams while the bytes in flight allow (partial ones first, then in order)."""
        while self._waiting_partial and self._room(True):
            self._admit(self._waiting_partial.popleft(), True)
        while self._waiting_full and not self._waiting_partial and self._room(False):
            self._admit(self._waiting_full.popleft(), False)

    def _admit(self, stream: S, partial: bool) -> None:
        self._activate(stream, partial)
        if self._on_admit is not None:
            self._on_admit(stream, partial)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    # -- writing ---------------------------------------------------------------------------------------
    def wake(self, delay: float = 0.0) -> None:
        """Something can be written (a stream started, or its transport drained): run a pass soon."""
        if self._scheduled or self._on_wake is None:
            return
        self._scheduled = True
        self._on_wake(delay)

    def run_pass(self) -> list[S]:
        """Write one round: partial streams first, then full ones oldest first, each for as long as its
        transport takes it, until `pass_bytes` are written or a fresh chunk was encoded.

        Returns the streams that completed, no longer active (the caller moves them to streaming and calls
        `finished`, which starts waiting streams in their place)."""
        self._scheduled = False
        self.passes += 1
        self.admit_waiting()  # buffers drained since the last pass make room
        buffered = sum(s.buffered_bytes() for s in self.active if s not in self._unwritten)
        if buffered >= self.buffer_bytes:
            self.held_back += 1
            if any(not s.paused for s in self.active):
                self.wake(FULL_BUFFERS_RETRY)
            return []
        budget = min(self.pass_bytes, self.buffer_bytes - buffered)
        done: list[S] = []
        order = [s for s, partial in self.active.items() if partial]
        order += [s for s, partial in self.active.items() if not partial]
        encoded = False
        for stream in order:
            while budget > 0 and not stream.paused and not encoded:
                wrote, encoded, complete = stream.write_snapshot_step(budget)
                self._unwritten.discard(stream)
                self.bytes_written += wrote
                budget -= wrote
                if complete:
                    done.append(stream)
                    self.active.pop(stream, None)
                    break
                if not wrote:
                    break  # nothing it could write now (its transport filled up)
            if budget <= 0 or encoded:
                break  # this pass's share of the loop (or a chunk's compression) is spent: let the fan-out run
        if any(not s.paused for s in self.active):
            self.wake()
        return done
