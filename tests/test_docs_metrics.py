"""Every metric the operator docs tell people to alert on or read is one the programs export.

An alert on a renamed metric never fires; this keeps docs/operations.md and docs/security.md honest.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
# prometheus-client appends these to the family name it was declared with
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _declared_names() -> set[str]:
    names: set[str] = set()
    for package in ("typha", "felix"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"[\"']((?:typha|felix)_[a-z0-9_]+)[\"']", path.read_text()))
    return names


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@pytest.mark.parametrize("doc", DOCS)
def test_metrics_named_in_the_docs_exist(doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text()
    named = {m for m in re.findall(r"`[^`]*`", text) for m in re.findall(r"\b((?:typha|felix)_[a-z0-9_]+)", m)}
    declared = _declared_names()
    missing = sorted(n for n in named if _family(n) not in declared and n not in declared)
    assert not missing, f"docs/{doc} names metrics no program exports: {missing}"
