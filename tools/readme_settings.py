"""Regenerate the README's settings tables from the programs' declarations.

    .venv/bin/python tools/readme_settings.py README.md

A developer tool, not part of any package: it imports typha and felix, which `common` (where the
table renderer lives) must never do. tests/test_config.py fails when the README is stale.
"""

from __future__ import annotations

import importlib
import sys

from common.settings import markdown_table, replace_block

PROGRAMS = (("typha.config", "typha-settings"), ("felix.config", "felix-settings"))


def regenerate(text: str) -> str:
    for module, marker in PROGRAMS:
        if f"<!-- {marker}:begin" not in text:
            continue
        mod = importlib.import_module(module)
        text = replace_block(text, marker, markdown_table(mod.SETTINGS, mod.ENV_PREFIX))
    return text


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "README.md"
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(regenerate(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
