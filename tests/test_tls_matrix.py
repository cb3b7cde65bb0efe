"""Mutual TLS between the sync server and the client library, over real loopback sockets.

The matrix of the issue: the right CA and name (CN or URI SAN) both ways; a wrong CA, a wrong name,
an expired certificate and no certificate, each on either side; a plaintext client to a TLS server
and a TLS client to a plaintext server; a TLS client that goes silent. Every refusal must leave the
client out of sync (it never received a byte of state), say why on the side that refused, and be
counted by typha.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from loadtest.support.certs import CertificateAuthority, Leaf
from protocol import ClientHello, Goodbye, GoodbyeCode, encode
from protocol.client import SyncClient
from protocol.tls import CertReloader, TLSFiles, peer_identity_problem

from .conftest import make_cache, wait_for

pytestmark = pytest.mark.slow  # every test runs a typha server on loopback

TYPHA_CN, FELIX_CN = "typha-server", "typha-client"
FELIX_URI = "spiffe://cluster.local/ns/calico-system/sa/calico-node"
DAY = dt.timedelta(days=1)


@dataclass
class Material:
    dir: Path
    ca: CertificateAuthority

    def leaf(self, name: str, leaf: Leaf) -> tuple[str, str]:
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        leaf.write(cert, key)
        return str(cert), str(key)

    @property
    def ca_file(self) -> str:
        path = self.dir / "ca.crt"
        if not path.exists():
            self.ca.write(path)
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Certificates for every case, made once: the CA, another CA, and leaves of every shape."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = (
        Material(d / "ca", CertificateAuthority("cluster CA")),
        Material(d / "other", CertificateAuthority("rogue CA")),
    )
    for m in (ca, other):
        m.dir.mkdir()
    now = dt.datetime.now(dt.UTC)
    return {
        "ca": ca.ca_file,
        "other_ca": other.ca_file,
        "typha": ca.leaf("typha", ca.ca.issue(TYPHA_CN)),
        "felix": ca.leaf("felix", ca.ca.issue(FELIX_CN)),
        "felix_uri": ca.leaf("felix-uri", ca.ca.issue("", FELIX_URI)),
        "felix_wrong_name": ca.leaf("impostor", ca.ca.issue("kube-apiserver")),
        "felix_other_ca": other.leaf("felix", other.ca.issue(FELIX_CN)),
        "felix_expired": ca.leaf(
            "felix-expired", ca.ca.issue(FELIX_CN, not_before=now - 30 * DAY, not_after=now - DAY)
        ),
        "typha_wrong_name": ca.leaf("typha-wrong", ca.ca.issue("some-webhook")),
        "typha_other_ca": other.leaf("typha", other.ca.issue(TYPHA_CN)),
        "typha_expired": ca.leaf(
            "typha-expired", ca.ca.issue(TYPHA_CN, not_before=now - 30 * DAY, not_after=now - DAY)
        ),
    }


def server_tls(pki: dict, cert: str = "typha", *, cn: str = FELIX_CN, uri: str = "") -> dict[str, str]:
    c, k = pki[cert]
    return {"ca_file": pki["ca"], "server_cert_file": c, "server_key_file": k, "client_cn": cn, "client_uri_san": uri}


def client_tls(pki: dict, cert: str = "felix", *, ca: str = "ca", cn: str = TYPHA_CN, uri: str = "") -> CertReloader:
    c, k = pki[cert]
    return CertReloader.for_client(TLSFiles(pki[ca], c, k, cn, uri))


def handshakes(server, result: str) -> float:
    return server.metrics.registry.get_sample_value("typha_tls_handshakes_total", {"result": result}) or 0.0


def dropped(server, reason: str) -> float:
    return server.metrics.registry.get_sample_value("typha_connections_dropped_total", {"reason": reason}) or 0.0


async def follow(port: int, tls: CertReloader | None, **kw) -> tuple[SyncClient, asyncio.Task]:
    client = SyncClient([("127.0.0.1", port)], "felix", hostname="node-1", tls=tls, backoff_initial=0.05, **kw)
    return client, asyncio.create_task(client.run())


async def refused(port: int, tls: CertReloader | None, timeout: float = 5.0) -> str:
    """Dial until the client has failed twice; returns its last error. It must never have synced."""
    client, task = await follow(port, tls)
    try:
        await wait_for(lambda: client.stats.disconnects >= 2, timeout, "two refused connections")
        assert not client.state and client.status.name == "UNKNOWN" and client.stats.snapshots == 0
        return client.stats.last_error
    finally:
        client.stop()
        await asyncio.wait_for(task, 5)


async def test_right_ca_and_names_both_ways_sync_and_stream(server_factory, pki) -> None:
    cache = make_cache(50)
    server = await server_factory(cache, **server_tls(pki))
    client, task = await follow(server.port, client_tls(pki))
    await client.wait_in_sync(10)
    cache.apply([("/calico/test/new", b"1", "9")])
    await wait_for(lambda: "/calico/test/new" in client.state, 5, "an update over TLS")
    assert len(client.state) == 51 and handshakes(server, "ok") == 1
    assert server.metrics.registry.get_sample_value("typha_tls_enabled") == 1
    client.stop()
    await task


async def test_uri_san_identity_is_enough_for_the_server(server_factory, pki) -> None:
    server = await server_factory(make_cache(5), **server_tls(pki, cn="", uri=FELIX_URI))
    client, task = await follow(server.port, client_tls(pki, "felix_uri"))
    await client.wait_in_sync(10)
    client.stop()
    await task
    # The same server refuses a certificate that names the CN but not the URI SAN it requires.
    error = await refused(server.port, client_tls(pki, "felix"))
    assert "unauthorized" in error and "URI SAN" in error


async def test_client_certificate_from_another_ca_is_refused(server_factory, pki) -> None:
    server = await server_factory(make_cache(5), **server_tls(pki))
    error = await refused(server.port, client_tls(pki, "felix_other_ca"))
    assert "UNKNOWN_CA" in error.upper() or "unknown ca" in error
    await wait_for(lambda: handshakes(server, "unknown-ca") >= 2, 5, "counted as unknown-ca")


async def test_client_certificate_with_a_wrong_name_is_refused(server_factory, pki) -> None:
    server = await server_factory(make_cache(5), **server_tls(pki))
    error = await refused(server.port, client_tls(pki, "felix_wrong_name"))
    assert "unauthorized" in error and "kube-apiserver" in error and FELIX_CN in error
    assert handshakes(server, "bad-identity") >= 2 and dropped(server, "tls-identity") >= 2


async def test_expired_client_certificate_is_refused(server_factory, pki) -> None:
    server = await server_factory(make_cache(5), **server_tls(pki))
    error = await refused(server.port, client_tls(pki, "felix_expired"))
    assert "expired" in error.lower()
    await wait_for(lambda: handshakes(server, "expired") >= 2, 5, "counted as expired")


async def test_client_without_a_certificate_is_refused(server_factory, pki) -> None:
    server = await server_factory(make_cache(5), **server_tls(pki))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki["ca"])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)  # TLS 1.3: ends client-side
    writer.write(encode(ClientHello("node-1", "felix")))
    with pytest.raises((ssl.SSLError, ConnectionError)) as exc:
        while await asyncio.wait_for(reader.read(1024), 5):
            pass
        raise ConnectionResetError("closed without an alert")
    assert "CERTIFICATE_REQUIRED" in str(exc.value).upper()
    writer.close()
    await wait_for(lambda: handshakes(server, "no-certificate") == 1, 5, "counted as no-certificate")


@pytest.mark.parametrize(
    "cert, ca, why",
    [
        ("typha_other_ca", "ca", "typha's TLS certificate rejected"),
        ("typha_expired", "ca", "expired"),
        ("typha_wrong_name", "ca", "typha's TLS certificate rejected"),
    ],
)
async def test_client_refuses_a_typha_it_cannot_authenticate(server_factory, pki, cert, ca, why) -> None:
    """Wrong CA, expired, or a name that is not typha's: the client sends no hello and takes no state."""
    server = await server_factory(make_cache(5), **server_tls(pki, cert))
    error = await refused(server.port, client_tls(pki, ca=ca))
    assert why in error
    assert server.metrics.registry.get_sample_value("typha_connections_streaming") == 0


async def test_plaintext_client_to_a_tls_server_is_told_why(server_factory, pki) -> None:
    server = await server_factory(make_cache(5), **server_tls(pki))
    error = await refused(server.port, None)
    assert "requires mutual TLS" in error
    assert handshakes(server, "plaintext-client") >= 2


async def test_tls_client_to_a_plaintext_server_never_talks(server_factory, pki) -> None:
    server = await server_factory(make_cache(5))
    assert server.metrics.registry.get_sample_value("typha_tls_enabled") == 0
    error = await refused(server.port, client_tls(pki))
    assert "TLS handshake failed" in error
    assert dropped(server, "tls-client-on-plaintext") >= 2


async def test_silent_tls_client_is_closed_within_the_handshake_timeout(server_factory, pki) -> None:
    server = await server_factory(make_cache(5), handshake_timeout=0.5, **server_tls(pki))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x16\x03\x01\x00\x40")  # the start of a ClientHello record, then nothing
    t0 = loop.time()
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, with no bytes for us
    assert loop.time() - t0 < 1.5
    assert handshakes(server, "timeout") == 1 and dropped(server, "tls-handshake-timeout") == 1
    writer.close()


async def test_old_tls_versions_are_refused(server_factory, pki) -> None:
    server = await server_factory(make_cache(5), **server_tls(pki))
    c, k = pki["felix"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki["ca"])
    ctx.load_cert_chain(c, k)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the point of the test
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port, ssl=ctx), 5)
    await wait_for(lambda: handshakes(server, "not-tls-1.2+") == 1, 5, "counted as an old protocol")


def test_identity_rules() -> None:
    files = TLSFiles("ca", "c", "k", peer_cn="typha-client", peer_uri_san="spiffe://x/felix")
    by_cn = {"subject": ((("commonName", "typha-client"),),)}
    by_uri = {"subject": ((("commonName", "other"),),), "subjectAltName": (("URI", "spiffe://x/felix"),)}
    neither = {"subject": ((("commonName", "other"),),), "subjectAltName": (("DNS", "typha-client"),)}
    assert peer_identity_problem(by_cn, files) is None
    assert peer_identity_problem(by_uri, files) is None
    assert "CN 'other'" in (peer_identity_problem(neither, files) or "")  # a DNS SAN is not an identity
    assert peer_identity_problem(None, files) == "the peer presented no certificate"
    assert peer_identity_problem(by_cn, replace(files, peer_cn="")) is not None
    with pytest.raises(ValueError, match="Common Name or URI SAN"):
        TLSFiles("ca", "c", "k")


async def test_goodbye_code_for_a_refused_identity(server_factory, pki) -> None:
    """The server tells an authenticated but unauthorised client why, in a GOODBYE it can read."""
    server = await server_factory(make_cache(5), **server_tls(pki))
    c, k = pki["felix_wrong_name"]
    ctx = CertReloader.for_client(TLSFiles(pki["ca"], c, k, TYPHA_CN)).context
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
    from protocol import ClientConnection

    conn = ClientConnection(ClientHello("node-1", "felix"))
    data = await asyncio.wait_for(reader.read(4096), 5)
    (msg,) = conn.receive_data(data)
    assert isinstance(msg, Goodbye) and msg.code == GoodbyeCode.UNAUTHORIZED
    writer.close()
