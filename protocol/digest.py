"""A digest of a key/value view, so an agent, a server and a test can compare views without shipping them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def state_digest(items: Iterable[tuple[str, bytes | None]]) -> str:
    """SHA-256 over the (key, value) pairs in key order; independent of the order given."""
    h = hashlib.sha256()
    for key, value in sorted(items):
        h.update(key.encode())
        h.update(b"\0")
        h.update(value or b"")
        h.update(b"\1")
    return h.hexdigest()
