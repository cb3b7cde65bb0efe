"""Declarative settings: one table gives CLI flags, environment variables, defaults and validation.

Design note
-----------
Typha and Felix both take every setting as a CLI flag *and* as an environment variable (`TYPHA_*`,
`FELIX_*`), because in Kubernetes manifests set env vars while people at a shell type flags. Declaring
each setting once, with its type and its check, keeps the two spellings, the `--help` text, the README
table and the manifests' expectations from drifting apart (a test compares the defaults with
deploy/). A flag beats an env var, which beats the default. A bad value stops start-up with a message
naming the setting, the value and what was expected, instead of failing later in a strange place.

It lives in `protocol` only because that is the one package both agents share; it knows nothing of
the wire format.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class SettingsError(ValueError):
    """A setting has an invalid value."""


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


@dataclass(frozen=True)
class Setting:
    name: str  # attribute name, e.g. "ping_interval"; flag --ping-interval; env PREFIX_PING_INTERVAL
    type: Callable[[str], Any]
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    choices: Sequence[Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def env(self, prefix: str) -> str:
        return f"{prefix}_{self.name.upper()}"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port (0-65535)"


def parse_settings(
    settings: Sequence[Setting],
    prefix: str,
    argv: Sequence[str] | None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
    description: str = "",
    cross_checks: Sequence[Callable[[dict[str, Any]], str | None]] = (),
) -> dict[str, Any]:
    """Parse flags and env vars into a dict; raises SettingsError with a clear message on bad input."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for s in settings:
        kwargs: dict[str, Any] = {"dest": s.name, "default": None, "help": f"{s.help} (env {s.env(prefix)}, default {s.default!r})".replace("%", "%%")}
        if s.type is parse_bool:
            kwargs["metavar"] = "BOOL"
        if s.choices:
            kwargs["choices"] = [str(c) for c in s.choices]
        parser.add_argument(s.flag, **kwargs)
    args = parser.parse_args(list(argv) if argv is not None else None)
    values: dict[str, Any] = {}
    for s in settings:
        raw = getattr(args, s.name)
        source = s.flag
        if raw is None and s.env(prefix) in environ:
            raw = environ[s.env(prefix)]
            source = s.env(prefix)
        if raw is None:
            values[s.name] = s.default
            continue
        try:
            value = s.type(raw)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{source}={raw!r}: {exc}") from None
        if s.choices and value not in s.choices:
            raise SettingsError(f"{source}={raw!r}: must be one of {', '.join(map(str, s.choices))}")
        if s.check is not None and (msg := s.check(value)):
            raise SettingsError(f"{source}={raw!r}: {msg}")
        values[s.name] = value
    for check in cross_checks:
        if msg := check(values):
            raise SettingsError(msg)
    return values


def markdown_table(settings: Sequence[Setting], prefix: str) -> str:
    """The README's table of settings, generated so it cannot disagree with the code."""
    rows = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for s in settings:
        rows.append(f"| `{s.flag}` | `{s.env(prefix)}` | `{s.default}` | {s.help} |")
    return "\n".join(rows)


def replace_block(text: str, marker: str, body: str) -> str:
    """Replace what lies between `<!-- marker:begin ... -->` and `<!-- marker:end -->` with `body`."""
    begin = text.index(f"<!-- {marker}:begin")
    begin = text.index("-->", begin) + 3
    end = text.index(f"<!-- {marker}:end -->", begin)
    return text[:begin] + "\n" + body.strip() + "\n" + text[end:]


if __name__ == "__main__":
    # Regenerate the README's settings tables: python -m protocol.settings README.md
    import importlib
    import sys

    path = sys.argv[1] if len(sys.argv) > 1 else "README.md"
    with open(path) as f:
        text = f.read()
    for module, marker in (("typha.config", "typha-settings"), ("felix.config", "felix-settings")):
        if f"<!-- {marker}:begin" not in text:
            continue
        mod = importlib.import_module(module)
        text = replace_block(text, marker, markdown_table(mod.SETTINGS, mod.ENV_PREFIX))
    with open(path, "w") as f:
        f.write(text)
