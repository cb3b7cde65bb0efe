"""The load tests are an optional part: their dependencies come with the `loadtest` extra, the
container image holds neither them nor loadtest/, and without them the command fails in one line."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from loadtest.__main__ import EXTRA_MODULES

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("protocol", "common", "typha", "felix")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_loadtest_dependencies_are_an_extra_that_make_installs() -> None:
    project = _pyproject()["project"]
    extra = _requirement_names(project["optional-dependencies"]["loadtest"])
    assert {"rich", "matplotlib", "trustme"} <= extra  # msgspec is typha's now (typha.k8s.wire)
    assert not extra & _requirement_names(project["dependencies"]), "load-test-only dependencies in the core"
    assert set(EXTRA_MODULES) <= extra
    install = [line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line and "-e" in line]
    assert install and all("loadtest" in line for line in install), install


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_imports_nothing_of_the_extra(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in EXTRA_MODULES]
    assert not bad, bad


@pytest.mark.slow
def test_the_image_build_installs_no_loadtest_and_drops_its_script(tmp_path: Path) -> None:
    """Build the wheel from exactly what deploy/Dockerfile copies, as its `pip install .` does."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = [
        src
        for words in (line.split() for line in dockerfile.splitlines())
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words)
        for src in words[1:-1]
        if not src.startswith("--") and not src.startswith("deploy/")
    ]
    assert "loadtest" not in copied and "!loadtest/" not in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in copied:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, ctx / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ctx)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert not [n for n in names if n.startswith("loadtest/")]
    assert any(n.startswith("typha/") for n in names) and any(n.startswith("felix/") for n in names)
    # pip writes every console script, whatever packages were found: the image must remove this one.
    assert re.search(r"^loadtest = ", entry_points, re.M)
    assert "rm /opt/venv/bin/loadtest" in dockerfile


@pytest.mark.slow
def test_without_the_extra_the_command_fails_in_one_line() -> None:
    hide = (  # a None entry in sys.modules makes the module unimportable, as if not installed
        "import sys\n"
        "sys.modules.update(rich=None, matplotlib=None)\n"
        "from loadtest.__main__ import main\n"
        "sys.exit(main(['demo']))\n"
    )
    out = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "rich, matplotlib" in out.stderr and "pytypha[loadtest]" in out.stderr
