"""fuzz/: every corpus input passes its target, the seeds are current, and crashes once found stay found.

The corpus replay is what turns a fuzzer's find into a regression test: after the fix, the crash input
goes into `fuzz/corpus/<target>/regress-<what>` and runs here on every test run. Crashes found in code
owned by another area, not fixed yet, are listed below as strict xfails: when the fix lands they start
passing, the strict mark fails the run, and the input moves into the corpus.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.__main__ import CORPUS, NAMES, _run_hypothesis
from fuzz.seeds import write
from fuzz.targets import TARGETS


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_input_passes_its_target(path: Path) -> None:
    TARGETS[path.parent.name](path.read_bytes())


def test_every_target_has_a_driver_name_and_seeds() -> None:
    assert set(NAMES) == set(TARGETS) == {d.name for d in CORPUS.iterdir() if d.is_dir()}
    for name in NAMES:
        assert any((CORPUS / name).glob("seed-*")), f"{name} has no seeds"


def test_wire_format_seeds_are_what_the_encoder_writes(tmp_path: Path) -> None:
    # Seeds of the protocol targets follow the encoder (rerun the generator after a wire change); the
    # Kubernetes-object seeds need only be valid, which the replay above checks.
    write(tmp_path)
    for fresh in sorted([*tmp_path.glob("frames/seed-*"), *tmp_path.glob("decode/seed-*")]):
        committed = CORPUS / fresh.relative_to(tmp_path)
        assert committed.exists(), f"run: python -m fuzz.seeds ({committed.name} is missing)"
        assert committed.read_bytes() == fresh.read_bytes(), f"run: python -m fuzz.seeds ({committed} is stale)"


def test_the_round_trip_oracle_catches_an_encoder_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    import fuzz.targets
    from protocol import Ping, encode

    ping = (CORPUS / "decode" / "seed-ping").read_bytes()
    TARGETS["decode"](ping)
    monkeypatch.setattr(fuzz.targets, "encode", lambda msg: encode(Ping(msg.timestamp_ns + 1)))  # a planted bug
    with pytest.raises(AssertionError, match="does not survive re-encoding"):
        TARGETS["decode"](ping)


def test_hypothesis_fallback_runs_the_same_targets() -> None:
    _run_hypothesis("decode", 1)  # what `python -m fuzz run` does where atheris is not installed
