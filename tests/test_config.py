"""Typha's settings: flags, env vars, validation, and the README table generated from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.settings import SettingsError, markdown_table, replace_block
from typha.config import ENV_PREFIX, SETTINGS, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_calico() -> None:
    cfg = load_config([], environ={})
    assert (cfg.port, cfg.health_port, cfg.metrics_port) == (5473, 9098, 9093)
    assert (cfg.handshake_timeout, cfg.ping_interval, cfg.ping_timeout) == (10, 10, 60)
    assert (cfg.write_timeout, cfg.max_fall_behind, cfg.new_client_grace) == (120, 300, 300)
    assert cfg.max_frame == 4096 and cfg.max_hello_frame == 16384  # smaller than Calico's 1 MiB on purpose
    assert cfg.drain_seconds == pytest.approx(285)
    assert cfg.server_id  # defaults to the hostname


def test_env_and_flag_precedence() -> None:
    env = {"TYPHA_PORT": "6000", "TYPHA_COMPRESSION": "false", "TYPHA_PING_INTERVAL": "5"}
    cfg = load_config([], environ=env)
    assert (cfg.port, cfg.compression, cfg.ping_interval) == (6000, False, 5.0)
    cfg = load_config(["--port", "7000"], environ=env)
    assert cfg.port == 7000


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--port", "70000"], {}, "--port='70000': must be a TCP port"),
        (["--ping-interval", "-1"], {}, "must be greater than 0"),
        ([], {"TYPHA_MAX_CONNECTIONS": "lots"}, "TYPHA_MAX_CONNECTIONS='lots'"),
        ([], {"TYPHA_COMPRESSION": "maybe"}, "expected true/false"),
        (["--ping-interval", "30", "--ping-timeout", "20"], {}, "must be longer than --ping-interval"),
        (["--max-frame", "10"], {}, "at least 4096"),
        ([], {"TYPHA_DATASTORE": "etcd"}, "must be one of"),
    ],
)
def test_bad_values_rejected_with_clear_message(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_config(argv, environ=env)


def test_main_reports_bad_config_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from typha.__main__ import main

    assert main(["--port", "nope"]) == 2
    assert "typha: error: --port='nope'" in capsys.readouterr().err


def test_readme_settings_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    fresh = replace_block(readme, "typha-settings", markdown_table(SETTINGS, ENV_PREFIX))
    assert readme == fresh, "run: .venv/bin/python tools/readme_settings.py README.md"


def test_readme_felix_settings_table_is_current() -> None:
    from felix.config import ENV_PREFIX as FELIX_PREFIX
    from felix.config import SETTINGS as FELIX_SETTINGS

    readme = (ROOT / "README.md").read_text()
    fresh = replace_block(readme, "felix-settings", markdown_table(FELIX_SETTINGS, FELIX_PREFIX))
    assert readme == fresh, "run: .venv/bin/python tools/readme_settings.py README.md"


def test_each_setting_is_declared_once_and_the_rest_derived() -> None:
    from dataclasses import fields

    from typha.config import ServerConfig, TyphaConfig

    # The table is the dataclass's declared fields: names, defaults and the flag spelling agree.
    declared = {s.name: s for s in SETTINGS}
    cfg = TyphaConfig()
    assert all(getattr(cfg, name) == s.default for name, s in declared.items())
    assert declared["host"].flag == "--listen-host" and declared["host"].env(ENV_PREFIX) == "TYPHA_LISTEN_HOST"
    # The sync server's settings are a prefix of typha's, and its internal knobs are not settings.
    server = [f.name for f in fields(ServerConfig) if f.name in declared]
    assert [s.name for s in SETTINGS][: len(server)] == server
    assert "housekeeping_interval" not in declared and "write_high_water" not in declared
    assert load_config(["--listen-host", "127.0.0.2"], environ={}).host == "127.0.0.2"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "abc"], "--port='abc': expected a whole number"),
        (["--ping-interval", "soon"], "--ping-interval='soon': expected a number"),
        (["--shutdown-timeout", "inf"], "expected a finite number"),
    ],
)
def test_number_errors_are_worded_for_people_not_pythons_int(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as exc:
        load_config(argv, environ={})
    assert str(exc.value) == message or message in str(exc.value)
    assert "invalid literal" not in str(exc.value) and "could not convert" not in str(exc.value)
