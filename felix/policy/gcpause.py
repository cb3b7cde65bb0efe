"""The cyclic garbage collector, paused for one bulk step of the policy pipeline.

Design note
-----------
A cold start builds a few hundred thousand long-lived objects -- endpoints, label index entries,
ip set members, rendered chains -- in about a second. Python's cyclic collector runs every 700 net
allocations, and its full passes walk the whole (growing) heap: on the benchmark's cold start it
took 15-25 % of the calculation's and the rendering's CPU (0.2-0.3 s of 1.1-1.3 s, measured with
the collector on and off) and found nothing to free, because this code makes no reference cycles;
reference counting frees everything else the moment it is dropped. ``paused()`` turns the collector
off for one step (a batch of updates, a flush, a write) and back on after, so at worst a cycle waits
for the next collection.

The obvious alternatives, raising the collector's thresholds for the whole process
(``gc.set_threshold``) or freezing the heap after start-up (``gc.freeze``), are decisions for the
program that owns the process; this keeps the change to the steps known to allocate in bulk. Steps
nest: an inner one leaves the collector as the outer one found it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused"]


@contextmanager
def paused() -> Iterator[None]:
    """Run the body with the cyclic collector off; restore its state after (also on errors)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
