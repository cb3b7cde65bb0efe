"""The import rule: dependencies point one way.

protocol (wire format, key schema, client library) and common (process plumbing) sit at the bottom and
import nothing of ours; typha and felix build on them and never on each other; loadtest may use all.
Every import is checked, including those inside functions, so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"protocol", "common", "typha", "felix", "loadtest"}
ALLOWED = {
    "protocol": {"protocol"},
    "common": {"common"},
    "typha": {"typha", "protocol", "common"},
    "felix": {"felix", "protocol", "common"},
    "loadtest": OURS,
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """Top-level packages of ours that `path` imports, with the line of each import."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update((name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in OURS)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in files
        for target, line in sorted(imported_packages(path))
        if target not in ALLOWED[package]
    ]
    assert not bad, "imports against the layering rule:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from typha.snapcache import SnapCache\n    import felix.calc\n")
    assert imported_packages(module) == {("typha", 2), ("felix", 3)}
