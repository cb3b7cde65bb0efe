"""The README's "Following typha from Python" script runs as shown against a real typha server."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from .conftest import make_cache

pytestmark = pytest.mark.slow  # a typha server and a Python process

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_script() -> str:
    text = README.read_text()
    section = text[text.index("## Following typha from Python") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section has no python block"
    return match[1]


async def test_readme_follow_script_runs_as_shown(server_factory, tmp_path: Path) -> None:
    cache = make_cache(250)
    server = await server_factory(cache)
    script = readme_script()
    assert '[("127.0.0.1", 5473)]' in script
    path = tmp_path / "follow.py"
    path.write_text(script.replace('[("127.0.0.1", 5473)]', f'[("127.0.0.1", {server.port})]'))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert "typha's cache is IN_SYNC" in lines  # a status name, not a bare number
    assert "250 keys changed, e.g. /calico/test/000000" in lines
    assert f"in sync: 250 keys from typha {server.config.server_id}" in lines
