"""Felix's settings: node name sources, and values that must be refused at start-up with one line."""

from __future__ import annotations

import re
import socket

import pytest

from common.settings import SettingsError
from felix.config import load_config

TYPHA = {"FELIX_TYPHA_ADDRESSES": "127.0.0.1:5473"}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"FELIX_NODENAME": "a", "FELIX_FELIXHOSTNAME": "b", "NODENAME": "c"}, "a"),
        ({"FELIX_FELIXHOSTNAME": "b", "NODENAME": "c"}, "b"),  # Calico's name for the setting
        ({"NODENAME": "c"}, "c"),
        ({}, socket.gethostname()),
    ],
)
def test_node_name_sources_in_order(env: dict[str, str], expected: str) -> None:
    assert load_config([], environ={**TYPHA, **env}).nodename == expected


def test_node_name_flag_beats_every_variable() -> None:
    env = {**TYPHA, "FELIX_FELIXHOSTNAME": "b", "NODENAME": "c"}
    assert load_config(["--nodename", "n1"], environ=env).nodename == "n1"


@pytest.mark.parametrize("mtu", ["10", "575", "0"])
def test_network_mtu_below_576_is_refused(mtu: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"--network-mtu={mtu!r}: must be at least 576")):
        load_config(["--network-mtu", mtu], environ=TYPHA)
    assert load_config(["--network-mtu", "576"], environ=TYPHA).network_mtu == 576


def test_main_refuses_a_tiny_mtu_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from felix.__main__ import main

    assert main(["--typha-addresses", "127.0.0.1:5473", "--network-mtu", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("felix: error: --network-mtu='10': must be at least 576")
