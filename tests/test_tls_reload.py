"""Certificates rotated under live connections: new connections use the new files, open ones stay up.

The server's files are laid out like a Kubernetes Secret volume (each file a symlink through ``..data``
to a timestamped directory, swapped atomically on update), which is how cert-manager rotations reach
a pod; the client's are plain files replaced in place.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from loadtest.support.certs import CertificateAuthority, Leaf
from protocol.client import SyncClient
from protocol.tls import CertReloader, TLSFiles

from .conftest import make_cache, wait_for

pytestmark = pytest.mark.slow  # typha servers and clients on loopback

TYPHA_CN, FELIX_CN = "typha-server", "typha-client"


class SecretVolume:
    """A directory whose files change the way a mounted Secret's do: one atomic symlink swap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()

    def publish(self, files: dict[str, bytes]) -> None:
        self.version += 1
        data = self.root / f"..v{self.version}"
        data.mkdir()
        for name, content in files.items():
            (data / name).write_bytes(content)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")

    def path(self, name: str) -> str:
        return str(self.root / name)


def serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def reloads(server, result: str) -> float:
    return server.metrics.registry.get_sample_value("typha_tls_reloads_total", {"result": result}) or 0.0


async def served_serial(port: int, client: TLSFiles) -> int:
    """The serial number of the certificate a new connection to the server is shown."""
    ctx = CertReloader.for_client(client).context
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    cert = writer.get_extra_info("peercert")
    writer.close()
    return int(cert["serialNumber"], 16)


async def test_server_certificate_rotation_keeps_live_agents(server_factory, tmp_path: Path) -> None:
    ca = CertificateAuthority()
    first = ca.issue(TYPHA_CN)
    secret = SecretVolume(tmp_path / "typha-tls")
    secret.publish({"ca.crt": ca.cert_pem, "tls.crt": first.cert_pem, "tls.key": first.key_pem})
    felix = ca.issue(FELIX_CN)
    felix.write(tmp_path / "felix.crt", tmp_path / "felix.key")
    client_files = TLSFiles(secret.path("ca.crt"), str(tmp_path / "felix.crt"), str(tmp_path / "felix.key"), TYPHA_CN)
    cache = make_cache(20)
    server = await server_factory(
        cache,
        ca_file=secret.path("ca.crt"),
        server_cert_file=secret.path("tls.crt"),
        server_key_file=secret.path("tls.key"),
        client_cn=FELIX_CN,
        tls_check_interval=0.05,
        housekeeping_interval=0.05,
    )
    clients = [
        SyncClient(
            [("127.0.0.1", server.port)], "felix", hostname=f"node-{i}", tls=CertReloader.for_client(client_files)
        )
        for i in range(3)
    ]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.gather(*(c.wait_in_sync(10) for c in clients))
    assert await served_serial(server.port, client_files) == serial(first.cert_pem)

    # Rotation: a new key and certificate, published the way the kubelet updates a Secret volume.
    second = ca.issue(TYPHA_CN)
    secret.publish({"ca.crt": ca.cert_pem, "tls.crt": second.cert_pem, "tls.key": second.key_pem})
    await wait_for(lambda: reloads(server, "ok") == 1, 5, "the server to reload")
    assert await served_serial(server.port, client_files) == serial(second.cert_pem)
    cache.apply([("/calico/test/after-rotation", b"1", "99")])
    await wait_for(lambda: all("/calico/test/after-rotation" in c.state for c in clients), 5, "updates after rotation")
    assert [c.stats.disconnects for c in clients] == [0, 0, 0]  # nobody was dropped by the rotation

    # A half-updated set (a certificate beside a key that is not its own) does not load: the server
    # keeps the last good pair, says so, and new agents still get in.
    third = ca.issue(TYPHA_CN)
    secret.publish({"ca.crt": ca.cert_pem, "tls.crt": third.cert_pem, "tls.key": second.key_pem})
    await wait_for(lambda: reloads(server, "failed") == 1, 5, "the failed reload to be counted")
    assert await served_serial(server.port, client_files) == serial(second.cert_pem)
    late = SyncClient([("127.0.0.1", server.port)], "felix", hostname="late", tls=CertReloader.for_client(client_files))
    late_task = asyncio.create_task(late.run())
    await late.wait_in_sync(10)

    # CA rotation: a bundle of the old and the new CA, then agents with certificates from the new CA.
    new_ca = CertificateAuthority("next CA")
    secret.publish({"ca.crt": ca.cert_pem + new_ca.cert_pem, "tls.crt": second.cert_pem, "tls.key": second.key_pem})
    await wait_for(lambda: reloads(server, "ok") == 2, 5, "the CA bundle to load")
    new_ca.issue(FELIX_CN).write(tmp_path / "felix2.crt", tmp_path / "felix2.key")
    moved = TLSFiles(secret.path("ca.crt"), str(tmp_path / "felix2.crt"), str(tmp_path / "felix2.key"), TYPHA_CN)
    newcomer = SyncClient([("127.0.0.1", server.port)], "felix", hostname="new-ca", tls=CertReloader.for_client(moved))
    new_task = asyncio.create_task(newcomer.run())
    await newcomer.wait_in_sync(10)
    assert [c.stats.disconnects for c in clients] == [0, 0, 0]
    for c in (*clients, late, newcomer):
        c.stop()
    await asyncio.wait_for(asyncio.gather(*tasks, late_task, new_task), 10)


async def test_client_uses_rotated_files_from_its_next_dial(server_factory, tmp_path: Path) -> None:
    ca, rogue = CertificateAuthority(), CertificateAuthority("rogue")
    ca.write(tmp_path / "ca.crt")
    ca.issue(TYPHA_CN).write(tmp_path / "typha.crt", tmp_path / "typha.key")
    cert, key = tmp_path / "felix.crt", tmp_path / "felix.key"
    ca.issue(FELIX_CN).write(cert, key)
    server = await server_factory(
        make_cache(5),
        ca_file=str(tmp_path / "ca.crt"),
        server_cert_file=str(tmp_path / "typha.crt"),
        server_key_file=str(tmp_path / "typha.key"),
        client_cn=FELIX_CN,
    )
    tls = CertReloader.for_client(TLSFiles(str(tmp_path / "ca.crt"), str(cert), str(key), TYPHA_CN))
    client = SyncClient([("127.0.0.1", server.port)], "felix", hostname="node-1", tls=tls, backoff_initial=0.05)
    task = asyncio.create_task(client.run())
    await client.wait_in_sync(10)
    # The agent's certificate is replaced by one typha does not trust: the open stream is unaffected...
    rogue.issue(FELIX_CN).write(cert, key)
    await asyncio.sleep(0.1)
    assert client.in_sync and client.stats.disconnects == 0
    # ...and the next dial presents it, and is refused.
    client.disconnect("test: redial")
    await wait_for(lambda: client.stats.disconnects >= 2, 5, "the redial with the new certificate to fail")
    assert "unknown" in client.stats.last_error.lower() and tls.reloads == 1
    # A good certificate again: the agent is back without a restart.
    Leaf.write(ca.issue(FELIX_CN), cert, key)
    await client.wait_in_sync(10)
    assert tls.reloads == 2
    client.stop()
    await task


def test_reloader_keeps_the_last_good_context(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    ca.write(tmp_path / "ca.crt")
    ca.issue(FELIX_CN).write(tmp_path / "c.crt", tmp_path / "c.key")
    files = TLSFiles(str(tmp_path / "ca.crt"), str(tmp_path / "c.crt"), str(tmp_path / "c.key"), TYPHA_CN)
    reloader = CertReloader.for_client(files)
    first = reloader.context
    assert reloader.check() == "unchanged"
    (tmp_path / "c.key").write_text("not a key")
    assert reloader.check() == "failed" and reloader.context is first and "SSLError" in reloader.last_error
    assert reloader.check() == "unchanged"  # retried only when the files change again
    os.remove(tmp_path / "c.crt")
    assert reloader.check() == "failed"
    ca.issue(FELIX_CN).write(tmp_path / "c.crt", tmp_path / "c.key")
    assert reloader.check() == "reloaded" and reloader.context is not first and not reloader.last_error
    with pytest.raises((OSError, ssl.SSLError)):
        CertReloader.for_client(TLSFiles(str(tmp_path / "missing.crt"), files.cert_file, files.key_file, TYPHA_CN))
