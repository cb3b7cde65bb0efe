"""Mutual TLS for sync connections: contexts, the peer's identity, certificates reloaded from files.

Design note
-----------
Calico's Typha and Felix authenticate each other with mutual TLS, and so do we: both ends trust one CA,
both present a certificate signed by it, and each checks that the *other's* certificate names the
identity it expects, by Common Name or by URI SAN (a SPIFFE-style ``spiffe://cluster/ns/x/sa/felix``).
Not by hostname: agents dial pod IPs taken from EndpointSlices, which no certificate names, and what
matters is *who* the peer is, not where it answers. Either configured name matching is enough
(Calico's rule), and one must be configured: a CA often signs other certificates too (the API
server's, a webhook's), and "signed by the CA" alone would let any of their holders read the cluster.

TLS 1.2 is the floor (1.3 is negotiated whenever both ends have it); TLS-level compression and
renegotiation are off. The payload is compressed before it is encrypted (zstd snapshot chunks),
which is what makes compression safe here: a chunk's contents are never mixed with secrets an
attacker could probe for.

Certificates rotate: cert-manager renews them and Kubernetes swaps a Secret's mounted files through a
symlink. `CertReloader` stats the three files (following links) and, when any changed, builds a new
context from them. Connections already open keep the context they were made with, so a rotation
drops nobody; the next connection uses the new one. A half-updated set (a new certificate beside the
old key) does not load: the old context stays in use, the failure is counted and reported, and the
next change of the files is tried again. The check is three `stat` calls, cheap enough to run on
every dial or every second.

Nothing here does I/O on sockets; the asyncio client and the server use these contexts.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: The oldest TLS version either end accepts.
MIN_VERSION = ssl.TLSVersion.TLSv1_2

#: Results of `CertReloader.check`.
UNCHANGED, RELOADED, FAILED = "unchanged", "reloaded", "failed"

#: First byte of every TLS record that starts a connection (a handshake record).
TLS_HANDSHAKE_RECORD = 0x16


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Where one end's TLS material lives, and which identity it requires of its peer."""

    ca_file: str
    cert_file: str
    key_file: str
    peer_cn: str = ""  # the peer certificate's Common Name must equal this ...
    peer_uri_san: str = ""  # ... or one of its URI SANs this (either is enough; one must be set)

    def __post_init__(self) -> None:
        if not (self.ca_file and self.cert_file and self.key_file):
            raise ValueError("TLS needs a CA file, a certificate file and a key file")
        if not (self.peer_cn or self.peer_uri_san):
            raise ValueError("TLS needs the peer's expected Common Name or URI SAN: the CA alone proves nothing")

    @property
    def paths(self) -> tuple[str, str, str]:
        return (self.ca_file, self.cert_file, self.key_file)

    def describe_peer(self) -> str:
        wanted = []
        if self.peer_cn:
            wanted.append(f"CN {self.peer_cn!r}")
        if self.peer_uri_san:
            wanted.append(f"URI SAN {self.peer_uri_san!r}")
        return " or ".join(wanted)


def _configure(ctx: ssl.SSLContext, files: TLSFiles) -> ssl.SSLContext:
    ctx.minimum_version = MIN_VERSION
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.load_verify_locations(cafile=files.ca_file)
    ctx.load_cert_chain(files.cert_file, files.key_file)
    return ctx


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by the CA (the name is checked after)."""
    return _configure(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """A client context that presents our certificate and verifies the server's against the CA.

    The hostname check is off on purpose: the server's identity is its CN or URI SAN
    (`peer_identity_problem`), checked once the handshake is done, whatever address was dialled.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _configure(ctx, files)


def peer_names(cert: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(Common Names, URI SANs) of a certificate as `SSLObject.getpeercert()` returns it."""
    cns = [str(value) for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    uris = [str(value) for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    return cns, uris


def peer_identity_problem(cert: Mapping[str, Any] | None, files: TLSFiles) -> str | None:
    """None if the verified peer certificate names the identity `files` requires; else what is wrong."""
    if not cert:
        return "the peer presented no certificate"
    cns, uris = peer_names(cert)
    if files.peer_cn and files.peer_cn in cns:
        return None
    if files.peer_uri_san and files.peer_uri_san in uris:
        return None
    have = f"CN {cns[0]!r}" if cns else "no CN"
    have += f", URI SANs {uris!r}" if uris else ", no URI SAN"
    return f"certificate has {have}; expected {files.describe_peer()}"


def _signature(paths: tuple[str, ...]) -> tuple[tuple[int, int, int, int] | None, ...]:
    out: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class TLSConfigError(ValueError):
    """TLS files that cannot be used; the message names the setting to fix."""


class CertReloader:
    """The current context built from `files`, rebuilt by `check()` when one of the files changed.

    The constructor loads the files and raises (OSError, ssl.SSLError) when they do not load: that is
    a start-up error. Later failures keep the last good context (`last_error` says why).
    """

    def __init__(self, files: TLSFiles, build: Callable[[TLSFiles], ssl.SSLContext]) -> None:
        self.files = files
        self._build = build
        self._signature = _signature(files.paths)
        self.context = build(files)
        self.reloads = 0
        self.failures = 0
        self.last_error = ""

    @classmethod
    def for_server(cls, files: TLSFiles) -> CertReloader:
        return cls(files, server_context)

    @classmethod
    def for_client(cls, files: TLSFiles) -> CertReloader:
        return cls(files, client_context)

    @classmethod
    def load(cls, files: TLSFiles, server_side: bool, settings: tuple[str, str, str]) -> CertReloader:
        """First load, at start-up: raises TLSConfigError naming the setting (of `settings`, the names
        of the CA, certificate and key settings) whose file cannot be read, or all three when they do
        not load together (a key that is not the certificate's, a PEM that does not parse)."""
        for name, path in zip(settings, files.paths):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise TLSConfigError(f"{name}={path!r}: cannot read it: {exc.strerror or exc}") from None
        try:
            return cls.for_server(files) if server_side else cls.for_client(files)
        except (OSError, ValueError) as exc:
            raise TLSConfigError(f"{' / '.join(settings)} do not load together: {exc}") from None

    def check(self) -> str:
        """Rebuild the context if a file changed since the last look.

        Returns ``UNCHANGED``, ``RELOADED`` (new connections use the new context) or ``FAILED`` (the
        changed files do not load; the previous context stays in use, `last_error` says why).
        """
        sig = _signature(self.files.paths)
        if sig == self._signature:
            return UNCHANGED
        self._signature = sig  # a set that fails to load is retried when the files change again
        try:
            ctx = self._build(self.files)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return FAILED
        self.context = ctx
        self.reloads += 1
        self.last_error = ""
        return RELOADED

    def identity_problem(self, cert: Mapping[str, Any] | None) -> str | None:
        return peer_identity_problem(cert, self.files)
