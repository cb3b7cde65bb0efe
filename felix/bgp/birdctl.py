"""BIRD's control socket: the reply format (sans-I/O), a small asyncio client, and `show protocols all`.

Design note
-----------
``birdc`` is a thin terminal over a Unix socket that speaks a line protocol: every reply line starts
with a four-digit code and a separator, ``-`` while more lines follow and a space on the last one;
a line starting with a space continues the previous code. Codes 0xxx end a command successfully,
1xxx/2xxx carry table rows and headings, 8xxx/9xxx are run-time and parse errors. Felix talks to
the socket directly instead of spawning ``birdc`` per command: the status poll runs every few
seconds on every node, and one process spawn costs more CPU than the whole exchange.

:class:`ReplyReader` is the pure part (bytes in, complete replies out, bounded); :class:`BirdControl`
is the connection, one command at a time, reconnecting when BIRD restarts; :func:`parse_protocols`
turns ``show protocols all`` into :class:`ProtocolStatus` rows (session state, neighbour, routes
imported and exported) for metrics and ``/status``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace

__all__ = [
    "BirdControl",
    "BirdError",
    "ProtocolStatus",
    "Reply",
    "ReplyReader",
    "parse_protocols",
]

MAX_REPLY = 16 << 20  # a reply larger than this is refused (felix never asks for route dumps)
_ROUTES = re.compile(r"Routes:\s+(\d+) imported,(?:\s+(\d+) filtered,)?\s+(\d+) exported")


class BirdError(Exception):
    """BIRD is unreachable, or answered a command with an error code."""


@dataclass(frozen=True, slots=True)
class Reply:
    lines: tuple[tuple[int, str], ...]  # (code, text) per line; continuation lines carry their code

    @property
    def code(self) -> int:
        return self.lines[-1][0] if self.lines else 0

    @property
    def ok(self) -> bool:
        return self.code < 8000

    @property
    def text(self) -> str:
        return "\n".join(t for _, t in self.lines)


class ReplyReader:
    """Feed bytes from the socket; get back each complete reply once its last line arrives."""

    def __init__(self, limit: int = MAX_REPLY) -> None:
        self._buf = bytearray()
        self._lines: list[tuple[int, str]] = []
        self._size = 0
        self._limit = limit

    def feed(self, data: bytes) -> list[Reply]:
        self._buf += data
        out: list[Reply] = []
        while (nl := self._buf.find(b"\n")) >= 0:
            raw = bytes(self._buf[:nl]).decode("utf-8", "replace")
            del self._buf[: nl + 1]
            self._size += len(raw)
            if self._size > self._limit:
                raise BirdError(f"reply larger than {self._limit} bytes")
            if raw.startswith(" ") or len(raw) < 5 or not raw[:4].isdigit():
                code = self._lines[-1][0] if self._lines else 0
                self._lines.append((code, raw[1:] if raw.startswith(" ") else raw))
                continue
            code, sep, text = int(raw[:4]), raw[4], raw[5:]
            self._lines.append((code, text))
            if sep == " ":
                out.append(Reply(tuple(self._lines)))
                self._lines, self._size = [], 0
        if len(self._buf) > self._limit:
            raise BirdError(f"reply line longer than {self._limit} bytes")
        return out


class BirdControl:
    """One command at a time over BIRD's control socket; connects (again) on demand."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies = ReplyReader()
        self._pending: list[Reply] = []
        self._lock = asyncio.Lock()
        self.version = ""

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), self.timeout)
        except (OSError, TimeoutError) as e:
            raise BirdError(f"cannot reach BIRD at {self.path}: {e}") from None
        self._replies, self._pending = ReplyReader(), []
        hello = await self._read_reply()
        if hello.code != 1:
            self.close()
            raise BirdError(f"unexpected greeting from BIRD: {hello.text!r}")
        self.version = hello.text

    async def _read_reply(self) -> Reply:
        assert self._reader is not None
        while not self._pending:
            data = await asyncio.wait_for(self._reader.read(65536), self.timeout)
            if not data:
                raise BirdError("BIRD closed the control connection")
            self._pending += self._replies.feed(data)
        return self._pending.pop(0)

    async def command(self, cmd: str, check: bool = True) -> Reply:
        """Send ``cmd``; its reply. ``BirdError`` when unreachable, or (``check``) on an error code."""
        if "\n" in cmd:
            raise ValueError("one command per line")
        async with self._lock:
            stale_possible = self._writer is not None
            try:
                reply = await self._exchange(cmd)
            except (OSError, TimeoutError, BirdError) as e:
                self.close()
                if not stale_possible:
                    raise e if isinstance(e, BirdError) else BirdError(f"{cmd}: {e!r}") from None
                try:  # the connection predates a BIRD restart: once more on a fresh one
                    reply = await self._exchange(cmd)
                except (OSError, TimeoutError) as e2:
                    self.close()
                    raise BirdError(f"{cmd}: {e2!r}") from None
                except BirdError:
                    self.close()
                    raise
        if check and not reply.ok:
            raise BirdError(f"{cmd}: {reply.text}")
        return reply

    async def _exchange(self, cmd: str) -> Reply:
        if self._writer is None:
            await self._connect()
        assert self._writer is not None
        self._writer.write(cmd.encode() + b"\n")
        await self._writer.drain()
        return await self._read_reply()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass(frozen=True, slots=True)
class ProtocolStatus:
    """One row of ``show protocols all``; BGP fields are empty for other protocols."""

    name: str
    proto: str
    state: str  # BIRD's protocol state: up, start, down, ...
    since: str
    info: str  # for BGP: the session state (Established, Active, Connect, ...) and any reason
    neighbor: str = ""
    neighbor_as: int | None = None
    routes_imported: int = 0
    routes_exported: int = 0
    routes_filtered: int = 0
    last_error: str = ""

    @property
    def established(self) -> bool:
        return self.proto == "BGP" and self.info.startswith("Established")


def parse_protocols(reply: Reply) -> list[ProtocolStatus]:
    """Rows of ``show protocols all`` (tolerant: unknown lines are skipped, numbers default to 0)."""
    rows: list[ProtocolStatus] = []
    for code, text in reply.lines:
        if code == 1002:  # "name proto table state since info..."
            parts = text.split(None, 5)
            if len(parts) >= 5:
                info = parts[5].strip() if len(parts) > 5 else ""
                rows.append(ProtocolStatus(parts[0], parts[1], parts[3], parts[4], info))
            continue
        if code != 1006 or not rows:
            continue
        line, row = text.strip(), rows[-1]
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "Neighbor address":
            rows[-1] = replace(row, neighbor=value)
        elif key == "Neighbor AS":
            rows[-1] = replace(row, neighbor_as=int(value) if value.isdigit() else None)
        elif key == "Last error":
            rows[-1] = replace(row, last_error=value)
        elif m := _ROUTES.search(line):  # one line per channel; BGP here has one (ipv4)
            rows[-1] = replace(
                row,
                routes_imported=row.routes_imported + int(m.group(1)),
                routes_filtered=row.routes_filtered + int(m.group(2) or 0),
                routes_exported=row.routes_exported + int(m.group(3)),
            )
    return rows
