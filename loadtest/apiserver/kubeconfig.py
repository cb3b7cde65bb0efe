"""Runtime TLS material (trustme CA + server cert) and kubeconfig writing.

Design note
-----------
A fresh CA is minted per emulator instance with trustme, so nothing secret lives in the
repo and every test run is isolated. The serving certificate names every address a
client may dial (:func:`cert_hosts`): loopback, the listen address, and the extra names
given with ``--san``; a client that verifies the server (typha does) fails for ever
against a certificate that does not name the address it dialled. The kubeconfig embeds the CA as
``certificate-authority-data`` and a bearer ``token``, which is everything the *unmodified*
kubernetes-asyncio (or client-go, or kubectl) loader needs to verify the server and
authenticate. It is written as YAML by hand (values are simple scalars) to avoid a
dependency on a YAML emitter.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trustme


@dataclass
class TLSMaterial:
    ca: trustme.CA
    server_cert: trustme.LeafCert
    _client_ctx: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """An SSL context trusting only this CA (for raw aiohttp clients). Cached: building
        one costs milliseconds, which adds up over thousands of watch connections."""
        if self._client_ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ca.configure_trust(ctx)
            self._client_ctx = ctx
        return self._client_ctx


LOOPBACK = ("127.0.0.1", "localhost", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*")


def check_san(name: str) -> str:
    """``name`` if it can be a subjectAltName (an IP address or a DNS name); else ValueError."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if len(name) > 253 or not _DNS_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is neither an IP address nor a DNS name")
    return name.lower()


def cert_hosts(host: str, sans: Iterable[str] = ()) -> tuple[str, ...]:
    """Names for the serving certificate: loopback, ``host`` and ``sans``.

    A wildcard ``host`` (0.0.0.0, ::) adds this machine's hostname and the addresses it
    resolves to, as far as they resolve; any other name a client will dial must be given
    in ``sans``.
    """
    out = list(LOOPBACK)

    def add(name: str) -> None:
        name = check_san(name)
        if name not in out:
            out.append(name)

    if host in _WILDCARDS:
        name = socket.gethostname()
        try:
            found = [name, *(str(ai[4][0]) for ai in socket.getaddrinfo(name, None))]
        except OSError:
            found = [name]
        for h in found:
            try:
                add(h.split("%", 1)[0])  # drop an IPv6 zone id
            except ValueError:
                pass  # a hostname that cannot be a DNS name is simply not certified
    else:
        add(host)
    for h in sans:
        add(h)
    return tuple(out)


def make_tls(hosts: Iterable[str] = LOOPBACK) -> TLSMaterial:
    ca = trustme.CA()
    return TLSMaterial(ca, ca.issue_cert(*hosts))


def _q(s: str) -> str:
    # A JSON string is a valid double-quoted YAML scalar.
    return json.dumps(s)


def kubeconfig_text(
    server: str, ca_pem: bytes, token: str, *, namespace: str = "default", name: str = "emulator"
) -> str:
    ca_b64 = base64.b64encode(ca_pem).decode()
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {_q(name)}\n"
        "  cluster:\n"
        f"    server: {_q(server)}\n"
        f"    certificate-authority-data: {_q(ca_b64)}\n"
        "users:\n"
        f"- name: {_q(name)}\n"
        "  user:\n"
        f"    token: {_q(token)}\n"
        "contexts:\n"
        f"- name: {_q(name)}\n"
        "  context:\n"
        f"    cluster: {_q(name)}\n"
        f"    user: {_q(name)}\n"
        f"    namespace: {_q(namespace)}\n"
        f"current-context: {_q(name)}\n"
    )


def write_kubeconfig(
    path: str | os.PathLike[str], server: str, ca_pem: bytes, token: str, *, namespace: str = "default"
) -> str:
    """Write atomically (readers never see half a file), mode 0600; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".kubeconfig-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(kubeconfig_text(server, ca_pem, token, namespace=namespace))
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return str(p)
