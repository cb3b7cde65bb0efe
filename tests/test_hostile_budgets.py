"""The per-peer budgets as plain objects: what a peer that has proved nothing may make typha hold or do."""

from __future__ import annotations

import pytest

from protocol import ClientHello, FrameTooLarge, Goodbye, MsgType, Ping, ProtocolError, ServerConnection, encode
from protocol.framing import HEADER
from typha.peerbudget import Handshakes, InboundBudget, LogLimiter, fd_budget, printable


def header(msg_type: int, length: int) -> bytes:
    return HEADER.pack(length, msg_type, 0, 0)


@pytest.mark.parametrize("msg_type", [MsgType.UPDATES, MsgType.SNAPSHOT, MsgType.PING, 99])
def test_a_frame_of_the_wrong_type_before_the_hello_is_refused_from_its_header(msg_type: int) -> None:
    """A state frame before the hello used to be buffered and decoded first (0.4 s of CPU per MiB)."""
    conn = ServerConnection(max_frame=4096, max_hello_frame=16384)
    with pytest.raises(ProtocolError) as exc:
        conn.receive_data(header(msg_type, 10_000))  # the header alone: no body was ever sent
    assert exc.value.code == "protocol-error"
    assert conn.buffered == 8


def test_after_the_hello_only_ping_pong_and_goodbye_and_small() -> None:
    conn = ServerConnection(max_frame=4096, max_hello_frame=16384)
    (hello,) = conn.receive_data(encode(ClientHello("node-1", "felix", info="x" * 10_000)))  # a big hello is fine
    assert isinstance(hello, ClientHello)
    assert isinstance(conn.receive_data(encode(Ping(1)))[0], Ping)
    with pytest.raises(ProtocolError, match="clients may not send CLIENT_HELLO after the hello"):
        conn.receive_data(header(MsgType.CLIENT_HELLO, 100))
    conn = ServerConnection(max_frame=4096, max_hello_frame=16384)
    conn.receive_data(encode(ClientHello("node-1", "felix")))
    with pytest.raises(FrameTooLarge):
        conn.receive_data(header(MsgType.GOODBYE, 4097))  # the limit drops to max_frame after the hello


def test_hello_frame_limit_applies_before_the_hello() -> None:
    conn = ServerConnection(max_frame=4096, max_hello_frame=16384)
    with pytest.raises(FrameTooLarge):
        conn.receive_data(header(MsgType.CLIENT_HELLO, 16385))
    conn = ServerConnection(max_frame=4096, max_hello_frame=16384)
    assert isinstance(conn.receive_data(encode(Goodbye("client-closing", "bye")))[0], Goodbye)


def test_handshake_budget_closes_the_oldest() -> None:
    budget: Handshakes[str] = Handshakes(3)
    assert [budget.add(c) for c in "abc"] == [None, None, None]
    assert budget.add("d") == "a"  # the caller closes it, which discards it
    budget.discard("a")
    budget.discard("b")  # said hello: no longer counted
    assert len(budget) == 2 and "b" not in budget
    assert budget.add("e") is None


def test_inbound_budget_allows_a_hello_then_a_trickle() -> None:
    budget = InboundBudget(burst=64 * 1024, rate=1024, now=0.0)
    assert budget.take(20_000, 0.0)  # a hello and a TLS handshake
    assert budget.take(40_000, 0.1)
    assert not budget.take(10_000, 0.2)  # a flood: over the burst
    budget = InboundBudget(burst=64 * 1024, rate=1024, now=0.0)
    assert budget.take(64 * 1024, 0.0)
    assert all(budget.take(100, 10.0 + i / 10) for i in range(100))  # 1 KB/s of PONGs for 10 s


def test_printable_escapes_and_truncates() -> None:
    assert printable("node-1") == "node-1"
    forged = "node\n2026-01-01 12:00:00 ERROR typha: everything is on fire"
    assert "\n" not in printable(forged, 200) and printable(forged, 200).startswith("node\\n2026")
    assert printable("a" * 1000) == "a" * 64 + "...(+936 chars)"
    assert printable("\x1b[31mred\u2028x\\") == "\\x1b[31mred\\u2028x\\\\"


def test_log_limiter_counts_what_it_suppresses() -> None:
    limiter: LogLimiter[str] = LogLimiter(per_second=2)
    assert [limiter.allow("close", 0.0) for _ in range(5)] == [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert limiter.allow("other", 0.0) == (True, 0)  # per kind
    assert limiter.allow("close", 1.0) == (True, 3)


def test_fd_budget_keeps_a_reserve() -> None:
    assert fd_budget(20_000, 10_000, 1_000) == (10_000, 1_000)
    agents, handshakes = fd_budget(1024, 10_000, 1_000)
    assert agents + handshakes <= 1024 - 256 and handshakes >= 16 and agents > 600
    assert fd_budget(300, 10, 1000) == (10, 16)  # 44 files to share: handshakes give way first
