"""The emulator's serving certificate and start-up errors (issue 9, items 10 and 13).

With ``--host`` set to a non-loopback address the certificate used to cover only loopback,
so a verifying client (typha) failed for ever; a bad port or an address in use printed a
traceback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes_asyncio import client, config

from loadtest.apiserver import start_apiserver
from loadtest.apiserver.kubeconfig import cert_hosts

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]


def _sans(h: object) -> set[str]:
    pem = h.tls.server_cert.cert_chain_pems[0].bytes()  # type: ignore[attr-defined]
    ext = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {str(v) for v in ext.value.get_values_for_type(x509.IPAddress)} | set(
        ext.value.get_values_for_type(x509.DNSName)
    )


def test_cert_hosts_cover_loopback_host_and_sans() -> None:
    assert cert_hosts("127.0.0.2") == ("127.0.0.1", "localhost", "::1", "127.0.0.2")
    assert cert_hosts("10.0.0.5", ["API.example.com", "fd00::1"])[-3:] == ("10.0.0.5", "api.example.com", "fd00::1")
    wildcard = cert_hosts("0.0.0.0")
    assert wildcard[:3] == ("127.0.0.1", "localhost", "::1") and socket.gethostname().lower() in wildcard
    with pytest.raises(ValueError):
        cert_hosts("127.0.0.1", ["not a name"])


@pytest.mark.slow
async def test_non_loopback_listen_address_is_in_the_certificate(tmp_path) -> None:
    # 127.0.0.2 is not one of the loopback names the certificate always carries, so a
    # verifying client only succeeds if the listen address itself was certified.
    h = await start_apiserver(host="127.0.0.2", token="t", sans=["api.test", "192.0.2.7"])
    try:
        assert h.url.startswith("https://127.0.0.2:")
        assert {"127.0.0.2", "api.test", "192.0.2.7", "127.0.0.1"} <= _sans(h)
        assert ipaddress.ip_address("127.0.0.2")
        cfg = client.Configuration()
        await config.load_kube_config(config_file=h.write_kubeconfig(str(tmp_path / "kc")), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            assert (await client.VersionApi(api).get_code()).major == "1"
    finally:
        await h.stop()


async def _run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.apiserver",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_startup_errors_are_one_line_naming_the_option() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = str(busy.getsockname()[1])
        cases = {
            ("--port", "99999"): "--port",
            ("--port", "abc"): "--port",
            ("--port", port): "--port " + port,
            ("--host", "999.1.1.1"): "--host 999.1.1.1",
            ("--san", "bad name"): "--san",
            ("--seed-pods", "-1"): "--seed-pods",
            ("--kubeconfig-out", "/proc/no/such/dir/kc"): "--kubeconfig-out",
        }
        results = await asyncio.gather(*(_run(*args) for args in cases))
    finally:
        busy.close()
    for (args, option), (rc, out, err) in zip(cases.items(), results):
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, (args, err)
        assert (
            option in lines[0]
            and "Traceback" not in err
            and lines[0].startswith("python -m loadtest.apiserver: error:")
        )
        assert out == ""
