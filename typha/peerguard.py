"""The sync server's gatekeeper: TLS, the handshake budget, stalled snapshots, log lines about peers.

Design note
-----------
`SyncServer` moves bytes; this object decides who may stay. It holds the per-peer budgets of
`peerbudget` and the certificate reloader of `typha.tls`, and the server's connections call it at the
few points where a peer proves (or fails to prove) something: when the connection is accepted, when
its first bytes show whether it speaks TLS, when the TLS handshake ends, and on every housekeeping
pass. Keeping these rules here, apart from the fan-out, keeps each readable on its own, and the
fan-out's hot path untouched: nothing here runs per update.

Every refusal is counted (`typha_connections_dropped{reason}`, `typha_tls_handshakes{result}`) and
logged through one rate limiter, so a flood of bad peers costs a few log lines a second and the
metrics still say how many there were.
"""

from __future__ import annotations

import logging
import resource
import socket
import ssl
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from protocol import Goodbye, GoodbyeCode, encode
from protocol.tls import FAILED, RELOADED, CertReloader

from .config import ServerConfig
from .metrics import ServerMetrics
from .peerbudget import Handshakes, InboundBudget, LogLimiter, fd_budget
from .tls import TLSSession, looks_like_plaintext_hello, looks_like_tls

if TYPE_CHECKING:
    from .syncconn import SyncConnection

log = logging.getLogger("typha.server")

# X509 verification codes (OpenSSL's X509_V_ERR_*) grouped into the metric's few results.
_EXPIRED = {10}  # certificate has expired
_NOT_YET_VALID = {9}
_UNKNOWN_CA = {2, 18, 19, 20, 21}  # no issuer, self-signed, untrusted chain


def handshake_failure(exc: ssl.SSLError) -> str:
    """A short, bounded name for why a TLS handshake failed (a metric label)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _EXPIRED:
            return "expired"
        if code in _NOT_YET_VALID:
            return "not-yet-valid"
        if code in _UNKNOWN_CA:
            return "unknown-ca"
        return "bad-certificate"
    reason = (exc.reason or "").upper()
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no-certificate"
    if reason in ("WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):
        return "not-tls-1.2+"
    if "ALERT" in reason:
        return "refused-by-client"  # the client did not accept our certificate
    return "other"


class PeerGuard:
    """Admission and per-peer limits for one server's connections."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics, tls: CertReloader | None) -> None:
        self.config = config
        self.metrics = metrics
        self.tls = tls
        self.handshakes: Handshakes[SyncConnection] = Handshakes(config.max_handshakes)
        self.max_connections = config.max_connections
        self._log = LogLimiter[str](per_second=20.0)
        self._next_tls_check = 0.0

    # -- start-up -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Fit the budgets in the open-files limit, and say how connections are protected."""
        cfg = self.config
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile != resource.RLIM_INFINITY:
            agents, handshakes = fd_budget(nofile, cfg.max_connections, cfg.max_handshakes)
            if (agents, handshakes) != (cfg.max_connections, cfg.max_handshakes):
                log.warning(
                    "the open-files limit (%d) cannot hold --max-connections=%d plus --max-handshakes=%d and a "
                    "reserve for health and metrics: using %d and %d (raise the limit: ulimit -n)",
                    nofile,
                    cfg.max_connections,
                    cfg.max_handshakes,
                    agents,
                    handshakes,
                )
            self.max_connections, self.handshakes.limit = agents, handshakes
        self.metrics.tls_enabled.set(1 if self.tls is not None else 0)
        if self.tls is None:
            log.warning(
                "serving WITHOUT TLS: anyone who reaches this port can read every pod, policy and route of "
                "the cluster. Set TYPHA_CAFILE, TYPHA_SERVERCERTFILE, TYPHA_SERVERKEYFILE and TYPHA_CLIENTCN "
                "or TYPHA_CLIENTURISAN (docs/security.md)"
            )
        else:
            log.info("serving mutual TLS (1.2+); agents must present %s", self.tls.files.describe_peer())

    # -- connections --------------------------------------------------------------------------------
    @property
    def serving_tls(self) -> bool:
        return self.tls is not None

    def admit(self, conn: SyncConnection) -> None:
        """A new connection: kernel buffers capped, into the handshake budget (closing the oldest beyond
        it). Its TLS session, if TLS is served, starts with its first bytes (`transport_matches`)."""
        cfg = self.config
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            try:
                if cfg.socket_send_buffer:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.socket_send_buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.socket_receive_buffer)
            except OSError:
                pass  # not a TCP socket (tests over other transports): nothing to cap
        oldest = self.handshakes.add(conn)
        if oldest is not None:
            oldest.close(
                GoodbyeCode.SERVER_FULL,
                f"more than {self.handshakes.limit} connections in their handshake: closing the oldest",
                label="handshake-budget",
            )
        self.metrics.handshaking.set(len(self.handshakes))

    def hello_received(self, conn: SyncConnection, agents: int) -> bool:
        """`conn` said hello while `agents` others are past theirs; False (and closed) if that is too many."""
        self.handshakes.discard(conn)
        self.metrics.handshaking.set(len(self.handshakes))
        # From now on the client sends a WANT at most, PONGs and a GOODBYE: a small budget.
        cfg = self.config
        now = time.monotonic()
        conn.inbound = InboundBudget(cfg.inbound_burst, cfg.inbound_rate, now)
        conn.pings = InboundBudget(cfg.ping_burst, cfg.ping_rate, now)
        if agents >= self.max_connections:
            conn.close(GoodbyeCode.SERVER_FULL, f"server at its limit of {self.max_connections} agents")
            return False
        return True

    def ping_allowed(self, conn: SyncConnection) -> bool:
        """A client PING within its budget (a few, then one a second); beyond it the client is closed."""
        pings = conn.pings
        if pings is not None and pings.take(1, time.monotonic()):
            return True
        cfg = self.config
        conn.close(
            GoodbyeCode.PROTOCOL_ERROR,
            f"more than {cfg.ping_burst} PINGs at once or {cfg.ping_rate:g} a second",
            label="ping-flood",
        )
        return False

    def gone(self, conn: SyncConnection) -> None:
        self.handshakes.discard(conn)
        self.metrics.handshaking.set(len(self.handshakes))

    def expired_label(self, conn: SyncConnection) -> str:
        if self.tls is not None and (conn.tls is None or not conn.tls.handshake_done):
            self.metrics.tls_handshakes.labels("timeout").inc()
            return "tls-handshake-timeout"
        return ""

    def receive(self, conn: SyncConnection, data: bytes) -> bytes | None:
        """Bytes read from a connection's socket -> the plaintext for its protocol, or None (closed, or
        nothing yet). Applies the inbound budget, checks the first bytes, runs TLS."""
        if not conn.inbound.take(len(data), time.monotonic()):
            budget = conn.inbound
            conn.close(
                GoodbyeCode.PROTOCOL_ERROR,
                f"sent more than a client may ({budget.burst:.0f} bytes at once, {budget.rate:.0f} bytes/s after)",
                label="inbound-budget",
            )
            return None
        if conn.first_data:
            conn.first_data = False
            if not self.transport_matches(conn, data):
                return None
        tls = conn.tls
        if tls is None:
            return data
        handshaking = not tls.handshake_done
        try:
            data, reply = tls.receive(data)
        except ssl.SSLError as exc:
            self.tls_failed(conn, exc)
            return None
        if reply:
            conn._send_raw(reply)
        if handshaking and tls.handshake_done and not self.tls_established(conn):
            return None
        if tls.peer_closed:
            conn.close(GoodbyeCode.CLIENT_CLOSING, "TLS close_notify", send=False, count=False)
            return None
        return data or None

    def transport_matches(self, conn: SyncConnection, data: bytes) -> bool:
        """Check a connection's first bytes: TLS where TLS is served, our frames where it is not."""
        if self.tls is None:
            if looks_like_tls(data):
                conn.close(
                    GoodbyeCode.PROTOCOL_ERROR,
                    "a TLS client on a plaintext server (this typha has no TYPHA_CAFILE)",
                    send=False,
                    label="tls-client-on-plaintext",
                )
                return False
            return True
        if looks_like_tls(data):
            # The TLS session exists from the first TLS bytes on (an idle socket costs no SSL object),
            # made from whatever certificates are current.
            conn.tls = TLSSession(self.tls.context)
            return True
        self.metrics.tls_handshakes.labels("plaintext-client").inc()
        if looks_like_plaintext_hello(data):
            # An agent without TLS settings: tell it why, in the only language it speaks.
            reason = "this typha requires mutual TLS: configure the agent's CA, certificate, key and typha's name"
            conn._send_raw(encode(Goodbye(GoodbyeCode.PROTOCOL_ERROR, reason)))
        conn.close(
            GoodbyeCode.PROTOCOL_ERROR, "a plaintext client on a TLS server", send=False, label="plaintext-client"
        )
        return False

    def tls_failed(self, conn: SyncConnection, exc: ssl.SSLError) -> None:
        result = handshake_failure(exc)
        self.metrics.tls_handshakes.labels(result).inc()
        assert conn.tls is not None
        alert = conn.tls.pending()
        if alert:
            conn._send_raw(alert)  # the peer learns why: unknown CA, certificate required, expired ...
        detail = getattr(exc, "verify_message", "") or exc.reason or str(exc)
        conn.close(
            GoodbyeCode.PROTOCOL_ERROR, f"TLS handshake failed ({result}): {detail}", send=False, label="tls-handshake"
        )

    def tls_established(self, conn: SyncConnection) -> bool:
        """The handshake is done: does the client's certificate name an allowed identity?"""
        assert self.tls is not None and conn.tls is not None
        problem = self.tls.identity_problem(conn.tls.peer_certificate())
        if problem is not None:
            self.metrics.tls_handshakes.labels("bad-identity").inc()
            conn.close(GoodbyeCode.UNAUTHORIZED, f"client certificate not allowed: {problem}", label="tls-identity")
            return False
        self.metrics.tls_handshakes.labels("ok").inc()
        return True

    # -- housekeeping -------------------------------------------------------------------------------
    def housekeep(self, now: float, snapshotting: Iterable[SyncConnection]) -> None:
        """Stalled snapshot streams give their slot up; changed certificate files are reloaded."""
        stall = self.config.snapshot_stall_timeout
        for conn in [c for c in snapshotting if c.paused and now - c.paused_since > stall]:
            conn.close(
                GoodbyeCode.TOO_SLOW,
                f"snapshot stream made no progress for {stall:g}s; its slot goes to the next agent",
                label="snapshot-stalled",
            )
        if self.tls is not None and now >= self._next_tls_check:
            self._next_tls_check = now + self.config.tls_check_interval
            outcome = self.tls.check()
            if outcome == RELOADED:
                self.metrics.tls_reloads.labels("ok").inc()
                log.info("TLS certificate files changed: new connections use them, open ones keep theirs")
            elif outcome == FAILED:
                self.metrics.tls_reloads.labels("failed").inc()
                log.error(
                    "TLS certificate files changed but do not load (%s); still serving the previous ones",
                    self.tls.last_error,
                )

    # -- logging ------------------------------------------------------------------------------------
    def log_peer(self, level: int, kind: str, msg: str, *args: object) -> None:
        """Log a line about a peer, at most 20 a second of each kind (the surplus counted on the next)."""
        if not log.isEnabledFor(level):
            return
        allowed, suppressed = self._log.allow(kind, time.monotonic())
        if not allowed:
            return
        if suppressed:
            msg += " (%d more like it not logged)"
            args = (*args, suppressed)
        log.log(level, msg, *args)
