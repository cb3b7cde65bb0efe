"""TLS settings under Calico's names, for typha and felix, and what the real processes do with them.

All three files and a peer identity, or nothing: half a configuration is a start-up error naming what
is missing, never a silent fall-back to plaintext. A felix configured for TLS refuses a typha that
cannot prove its identity (here: a plaintext one at its address) and says why.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from common.settings import SettingsError
from felix import config as felix_config
from loadtest.support.certs import write_cluster
from typha import config as typha_config

from .conftest import make_cache, wait_for

TYPHA_ENV = {
    "TYPHA_CAFILE": "/ca",
    "TYPHA_SERVERCERTFILE": "/c",
    "TYPHA_SERVERKEYFILE": "/k",
    "TYPHA_CLIENTCN": "typha-client",
}
FELIX_ENV = {
    "FELIX_TYPHA_ADDRESSES": "127.0.0.1:5473",
    "FELIX_TYPHACAFILE": "/ca",
    "FELIX_TYPHACERTFILE": "/c",
    "FELIX_TYPHAKEYFILE": "/k",
    "FELIX_TYPHACN": "typha-server",
}


def test_typha_reads_calicos_tls_names() -> None:
    cfg = typha_config.load_config([], environ={**TYPHA_ENV, "TYPHA_CLIENTURISAN": "spiffe://x/felix"})
    assert (cfg.ca_file, cfg.server_cert_file, cfg.server_key_file) == ("/ca", "/c", "/k")
    assert (cfg.client_cn, cfg.client_uri_san) == ("typha-client", "spiffe://x/felix")
    cfg = typha_config.load_config(["--cafile", "/other"], environ=TYPHA_ENV)
    assert cfg.ca_file == "/other"  # the flag beats the environment, as for every setting
    assert typha_config.load_config([], environ={}).ca_file == ""  # plaintext unless configured


@pytest.mark.parametrize(
    "drop, message",
    [
        ("TYPHA_SERVERKEYFILE", "TLS needs TYPHA_SERVERKEYFILE as well"),
        ("TYPHA_CLIENTCN", "TLS needs TYPHA_CLIENTCN or TYPHA_CLIENTURISAN"),
    ],
)
def test_typha_refuses_half_a_tls_configuration(drop: str, message: str) -> None:
    env = {k: v for k, v in TYPHA_ENV.items() if k != drop}
    with pytest.raises(SettingsError, match=message):
        typha_config.load_config([], environ=env)
    with pytest.raises(SettingsError, match="TYPHA_CAFILE, TYPHA_SERVERCERTFILE and TYPHA_SERVERKEYFILE are not"):
        typha_config.load_config([], environ={"TYPHA_CLIENTCN": "typha-client"})


def test_felix_reads_calicos_tls_names() -> None:
    cfg = felix_config.load_config([], environ={**FELIX_ENV, "FELIX_TYPHAURISAN": "spiffe://x/typha"})
    assert (cfg.typha_ca_file, cfg.typha_cert_file, cfg.typha_key_file) == ("/ca", "/c", "/k")
    assert (cfg.typha_cn, cfg.typha_uri_san) == ("typha-server", "spiffe://x/typha")


@pytest.mark.parametrize(
    "drop, message",
    [
        ("FELIX_TYPHACERTFILE", "TLS to typha needs FELIX_TYPHACERTFILE as well"),
        ("FELIX_TYPHACN", "TLS to typha needs FELIX_TYPHACN or FELIX_TYPHAURISAN"),
    ],
)
def test_felix_refuses_half_a_tls_configuration(drop: str, message: str) -> None:
    env = {k: v for k, v in FELIX_ENV.items() if k != drop}
    with pytest.raises(SettingsError, match=message):
        felix_config.load_config([], environ=env)


@pytest.mark.slow
def test_typha_names_the_certificate_file_it_cannot_read(tmp_path: Path) -> None:
    import subprocess

    certs = write_cluster(tmp_path)
    env = {**os.environ, **certs.typha_env(), "TYPHA_SERVERKEYFILE": str(tmp_path / "missing.key")}
    proc = subprocess.run([sys.executable, "-m", "typha"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"typha: error: TYPHA_SERVERKEYFILE='{tmp_path / 'missing.key'}': cannot read it: No such file or directory"
    ]
    (tmp_path / "bad.key").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    env["TYPHA_SERVERKEYFILE"] = str(tmp_path / "bad.key")
    proc = subprocess.run([sys.executable, "-m", "typha"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "do not load together" in proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "typha, refusal",
    [
        ("plaintext", "TLS handshake failed: the server closed the connection"),
        ("wrong-ca", "typha's TLS certificate rejected: certificate signature failure"),
    ],
)
async def test_felix_with_tls_refuses_a_typha_it_cannot_authenticate(
    server_factory, tmp_path: Path, typha: str, refusal: str
) -> None:
    """Once TLS is configured felix never follows a typha it cannot authenticate (a plaintext one at its
    address, or one whose certificate another CA signed): no state, not ready, and one warning saying
    why (repeats of the same refusal are logged at INFO, with the reconnect backoff)."""
    certs = write_cluster(tmp_path / "felix")
    if typha == "plaintext":
        server = await server_factory(make_cache(10))  # anyone could be listening here
    else:
        impostor = write_cluster(tmp_path / "impostor")  # its own CA, and the right name on its certificate
        server = await server_factory(
            make_cache(10),
            ca_file=impostor.ca,
            server_cert_file=impostor.typha_cert,
            server_key_file=impostor.typha_key,
            client_cn=impostor.felix_cn,
        )
    health = _free_port()
    env = {
        **os.environ,
        **certs.felix_env(),
        "FELIX_NODENAME": "tls-test",
        "FELIX_TYPHA_ADDRESSES": f"127.0.0.1:{server.port}",
        "FELIX_ROUTES_ENABLED": "false",
        "FELIX_POLICY_ENABLED": "false",
        "FELIX_HEALTH_PORT": str(health),
        "FELIX_METRICS_PORT": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "felix", env=env, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line.decode(errors="replace"))

    reader = asyncio.create_task(read())
    try:
        await wait_for(lambda: sum(refusal in line for line in lines) >= 3, 60, "felix to refuse the typha thrice")
        assert any("mutual TLS; typha must present CN 'typha-server'" in line for line in lines)
        refused = [line for line in lines if refusal in line]
        assert ["WARNING" in line for line in refused] == [True] + [False] * (len(refused) - 1), refused
        assert not any("Traceback" in line for line in lines)
        assert server.metrics.registry.get_sample_value("typha_connections_streaming") == 0
        status, text = await _get(health, "/readiness")
        assert status == 503 and "not yet in sync" in text
        status, text = await _get(health, "/status")
        view = json.loads(text)
        assert not view["ready"] and not view["in_sync"] and view["routes"]["desired"] == 0
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await reader


def test_default_listen_addresses_are_what_probes_and_prometheus_need() -> None:
    """Which port listens where, by default and as deployed (docs/security.md, "Who can reach what"):
    typha's sync, health and metrics ports on every address (agents, the kubelet and Prometheus reach
    the pod IP); felix's health on the node's loopback (the kubelet probes 127.0.0.1 in the node's
    network namespace, which felix shares) and its /metrics on every address, because the DaemonSet
    asks Prometheus to scrape it from another pod."""
    import yaml

    typha = typha_config.load_config([], environ={})
    assert (typha.host, typha.health_host) == ("0.0.0.0", "0.0.0.0")
    felix = felix_config.load_config([], environ={"FELIX_TYPHA_ADDRESSES": "127.0.0.1:5473"})
    assert (felix.health_host, felix.metrics_host) == ("127.0.0.1", "0.0.0.0")
    deploy = Path(__file__).resolve().parent.parent / "deploy" / "base"
    [daemonset] = [d for d in yaml.safe_load_all((deploy / "felix.yaml").read_text()) if d and d["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    # The manifest keeps the defaults: no host override, the probes on loopback, the scrape annotation.
    assert "FELIX_HEALTH_HOST" not in env and "FELIX_METRICS_HOST" not in env
    assert container["livenessProbe"]["httpGet"]["host"] == "127.0.0.1"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
