"""Felix with the bird backend: one owner per route, the setting (Calico's name too), readiness and /status."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from common.settings import SettingsError
from felix.bgp.agent import BgpAgent
from felix.bgp.bird import BirdManager
from felix.calc import RouteCalculator
from felix.config import load_config
from loadtest.apiserver.fixtures import make_pod
from protocol import SyncStatus
from protocol.keys import SYNCER_FELIX

from . import bgp_fixtures as F
from .conftest import wait_for

TYPHA = {"FELIX_TYPHA_ADDRESSES": "127.0.0.1:5473"}


def cluster() -> list[F.Obj]:
    objs = F.nodes_and_blocks(3)
    objs += [
        F.pool("vxlan", "10.244.0.0/16", vxlanMode="Always"),
        F.pool("quiet", "10.245.0.0/16", disableBGPExport=True),
        F.affinity("node2", "10.244.2.0/26"),
        F.block("10.244.2.0/26", "node2"),
        F.affinity("node2", "10.245.2.0/26"),
        F.block("10.245.2.0/26", "node2"),
        ("pods", make_pod("default", "a", "node1", "198.19.1.5")),
        ("pods", make_pod("default", "lent", "node3", "198.19.2.40")),  # borrowed from node2's block
    ]
    nodes = [o for o in objs if o[0] == "nodes"]
    for o in nodes:  # felix's calculation needs the VTEP of a VXLAN pool's nodes
        ann = o[1]["metadata"]["annotations"]
        i = o[1]["metadata"]["name"][-1]
        ann["projectcalico.org/IPv4VXLANTunnelAddr"] = f"10.244.{i}.0"
        ann["projectcalico.org/VXLANTunnelMACAddr"] = f"66:00:00:00:00:0{i}"
    return objs


def routes(bgp: bool) -> dict[str, str]:
    calc = RouteCalculator("node1", bgp=bgp)
    calc.apply(F.kvs(cluster(), syncer=SYNCER_FELIX))
    return {dst: r.encap if r.type == "unicast" and r.gateway else r.type for dst, r in calc.desired().items()}


def test_with_bgp_felix_leaves_remote_native_routes_to_bird_and_keeps_the_rest() -> None:
    alone, with_bird = routes(bgp=False), routes(bgp=True)
    bird_owned = {"198.19.2.0/26", "198.19.3.0/26", "198.19.2.40/32"}  # remote blocks, borrowed /32
    assert bird_owned <= alone.keys()
    assert with_bird == {k: v for k, v in alone.items() if k not in bird_owned}
    assert with_bird["198.19.1.0/26"] == "blackhole" and "198.19.1.5/32" in with_bird, "local routes stay felix's"
    assert with_bird["10.244.2.0/26"] == "vxlan", "VXLAN stays felix's"
    assert with_bird["10.245.2.0/26"] == "none", "a pool BGP does not export stays felix's"


def test_networking_backend_setting_and_calicos_name() -> None:
    assert not load_config([], environ=TYPHA).bgp, "off by default: BGP needs bird2 and port 179"
    assert load_config([], environ={**TYPHA, "CALICO_NETWORKING_BACKEND": "bird"}).bgp
    env = {**TYPHA, "CALICO_NETWORKING_BACKEND": "bird", "FELIX_NETWORKING_BACKEND": "none"}
    assert not load_config([], environ=env).bgp, "felix's own variable wins"
    assert load_config(["--networking-backend", "bird"], environ=env).bgp, "the flag wins over both"
    with pytest.raises(SettingsError, match="CALICO_NETWORKING_BACKEND='gobgp'"):
        load_config([], environ={**TYPHA, "CALICO_NETWORKING_BACKEND": "gobgp"})
    with pytest.raises(SettingsError, match="FELIX_NETWORKING_BACKEND='gobgp'"):
        load_config([], environ={**TYPHA, "FELIX_NETWORKING_BACKEND": "gobgp"})


async def test_readiness_and_status_say_why_bgp_cannot_work(tmp_path: object) -> None:
    manager = BirdManager(str(tmp_path), bird="/nonexistent/bird")
    agent = BgpAgent("node1", [("127.0.0.1", 1)], manager)
    assert agent.not_ready_because() == "BGP: not yet in sync with typha's bgp syncer"
    loop = asyncio.create_task(agent._render_loop())
    try:
        agent._on_updates(F.kvs(F.mesh_topology()))
        agent._on_status(SyncStatus.IN_SYNC)
        await wait_for(lambda: manager.rejects, 5, "the render to be tried")
        why = agent.not_ready_because() or ""
        assert why.startswith("BGP: bird -p rejected") and "/nonexistent/bird" in why
        status = agent.status()
        assert status["bird"]["config_valid"] is False and not status["bird"]["running"]
        assert [(p["name"], p["state"]) for p in status["peers"]] == [
            ("Global_198_18_9_254", "Down"),
            ("Mesh_198_18_9_2", "Down"),
            ("Mesh_198_18_9_3", "Down"),
        ]
        assert status["originated"] == ["198.19.1.0/26"]
        metrics = generate_latest(agent.metrics.registry).decode()
        assert "felix_bgp_config_valid 0.0" in metrics and "felix_bgp_config_rejects_total 1.0" in metrics
    finally:
        agent.stop()
        loop.cancel()


async def test_no_config_for_a_node_the_syncer_does_not_know(tmp_path: object) -> None:
    agent = BgpAgent("ghost", [("127.0.0.1", 1)], BirdManager(str(tmp_path)))
    loop = asyncio.create_task(agent._render_loop())
    try:
        agent._on_updates(F.kvs(F.mesh_topology()))
        agent._on_status(SyncStatus.IN_SYNC)
        await wait_for(lambda: agent.rendered is not None, 5, "a render")
        assert agent.not_ready_because() == "BGP: node ghost is not in the bgp syncer's view"
        assert agent.manager.applies == 0 and not agent.manager.running
    finally:
        agent.stop()
        loop.cancel()


def test_install_bird_everywhere_felix_runs() -> None:
    """bird2 comes with the README's commands and the image; the DaemonSet opens 179 and mounts BIRD's dir."""
    root = Path(__file__).resolve().parent.parent
    make = (root / "Makefile").read_text()
    assert re.search(r"SYSTEM_TOOLS :=.*\bbird\b", make) and re.search(r"apt-get install .*\bbird2\b", make)
    assert re.search(r"apt-get install[^&]*\bbird2\b", (root / "deploy" / "Dockerfile").read_text())
    docs = [d for d in yaml.safe_load_all((root / "deploy" / "base" / "felix.yaml").read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert {"name": "bgp", "containerPort": 179, "protocol": "TCP"} in c["ports"] and pod["hostNetwork"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    cfg = load_config([], environ={k: v for k, v in env.items() if v is not None} | TYPHA)
    assert cfg.bgp
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[cfg.bird_run_dir]]
    assert volume["hostPath"] == {"path": cfg.bird_run_dir, "type": "DirectoryOrCreate"}
