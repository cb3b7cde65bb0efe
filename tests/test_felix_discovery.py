"""Finding typha: EndpointSlice ordering (pure) and discovery against the API-server emulator."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

from common.settings import SettingsError
from felix.config import load_config, parse_addresses
from felix.discovery import EndpointSliceDiscovery, order_endpoints
from loadtest.apiserver import start_apiserver


def slice_(
    name: str, endpoints: list[tuple[str, str, dict]], port: int = 5473, port_name: str = "calico-typha"
) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {"name": name, "namespace": "pytypha", "labels": {"kubernetes.io/service-name": "pytypha"}},
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": cond} for ip, node, cond in endpoints],
    }


def test_local_replica_first_only_ready_rest_shuffled() -> None:
    slices = [
        slice_(
            "a",
            [
                ("10.0.0.1", "n1", {"ready": True}),
                ("10.0.0.2", "me", {"ready": True}),
                ("10.0.0.3", "n3", {"ready": False}),
            ],
        ),
        slice_(
            "b",
            [
                ("10.0.0.4", "n4", {}),
                ("10.0.0.5", "n5", {"ready": True, "terminating": True}),
                ("10.0.0.6", "n6", {"ready": True}),
            ],
        ),
        slice_("other-port", [("10.0.0.9", "me", {"ready": True})], port_name="metrics"),
    ]
    orders = {tuple(order_endpoints(slices, "calico-typha", "me", random.Random(seed))) for seed in range(20)}
    for order in orders:
        assert order[0] == ("10.0.0.2", 5473)
        assert set(order) == {("10.0.0.2", 5473), ("10.0.0.1", 5473), ("10.0.0.4", 5473), ("10.0.0.6", 5473)}
    assert len(orders) > 1  # the remote replicas really are shuffled


def test_static_addresses_and_config_validation() -> None:
    assert parse_addresses("10.0.0.1:5473, [::1]:5474") == (("10.0.0.1", 5473), ("::1", 5474))
    with pytest.raises(ValueError):
        parse_addresses("nohost")
    cfg = load_config([], environ={"FELIX_TYPHA_ADDRESSES": "127.0.0.1:5473", "NODENAME": "n7"})
    assert cfg.nodename == "n7" and cfg.typha_addresses == (("127.0.0.1", 5473),)
    assert (cfg.health_port, cfg.metrics_port, cfg.route_refresh_interval) == (9099, 9091, 90.0)
    with pytest.raises(SettingsError, match="needs a way to find typha"):
        load_config([], environ={})
    with pytest.raises(SettingsError, match="FELIX_TYPHA_ADDRESSES"):
        load_config([], environ={"FELIX_TYPHA_ADDRESSES": "x:notaport"})


@pytest.mark.slow
async def test_discovery_against_the_api_server(tmp_path: Path) -> None:
    api = await start_apiserver()
    try:
        api.store.create(
            "endpointslices",
            slice_("pytypha-abc", [("10.1.0.1", "n1", {"ready": True}), ("10.1.0.2", "me", {"ready": True})]),
        )
        api.store.create(
            "endpointslices",
            {
                **slice_("unrelated", [("10.9.9.9", "me", {"ready": True})]),
                "metadata": {
                    "name": "unrelated",
                    "namespace": "pytypha",
                    "labels": {"kubernetes.io/service-name": "other"},
                },
            },
        )
        kc = tmp_path / "kc"
        api.write_kubeconfig(str(kc))
        conf = kclient.Configuration()
        await kconfig.load_kube_config(config_file=str(kc), client_configuration=conf)
        async with kclient.ApiClient(conf) as k8s:
            disc = EndpointSliceDiscovery(k8s, "pytypha", "pytypha", "calico-typha", "me")
            assert await disc() == [("10.1.0.2", 5473), ("10.1.0.1", 5473)]
            # The API server going away: the last known addresses keep felix dialling.
            await api.stop()
            assert await disc() == [("10.1.0.2", 5473), ("10.1.0.1", 5473)]
            fresh = EndpointSliceDiscovery(k8s, "pytypha", "pytypha", "calico-typha", "me")
            with pytest.raises(OSError, match="discovery failed"):
                await fresh()
    finally:
        await api.stop()


def test_felix_reports_bad_start_up_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from felix.__main__ import main

    assert (
        main(
            [
                "--typha-addresses",
                "127.0.0.1:1",
                "--netns",
                "pt-no-such-ns",
                "--health-port",
                "0",
                "--metrics-port",
                "0",
            ]
        )
        == 2
    )
    assert "cannot open netlink sockets in network namespace 'pt-no-such-ns'" in capsys.readouterr().err
    assert main(["--typha-addresses", "nonsense"]) == 2
    assert "felix: error: --typha-addresses='nonsense'" in capsys.readouterr().err
