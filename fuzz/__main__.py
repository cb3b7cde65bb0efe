"""`python -m fuzz`: run the fuzz targets with atheris (coverage-guided), or a hypothesis fallback.

    python -m fuzz list                          the targets and their seed counts
    python -m fuzz run TARGET [--seconds N] [--runs N --seed N] [-- LIBFUZZER_FLAG ...]
    python -m fuzz all [--seconds N] [--runs N --seed N]   every target in turn (make fuzz, make fuzz-ci)
    python -m fuzz replay [TARGET ...]           every corpus file once, no fuzzing (what the tests do)

Nothing of ours is imported before atheris starts instrumenting: coverage feedback needs the parsers to
be loaded through its import hook.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
WORK = ROOT / ".fuzz"  # found inputs and crashes: not committed
INSTRUMENTED = ["protocol", "typha", "loadtest", "felix.policy", "felix.dataplane", "fuzz.targets"]
NAMES = (
    "frames",
    "decode",
    "projection",
    "selectors",
    "patches",
    "bodies",
    "policy",
    "kernelstate",
    "admission",
)  # == targets.TARGETS, without importing


def _seeds(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / name).iterdir()) if p.is_file()]


def have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


def _run_atheris(name: str, seconds: int, runs: int, seed: int, extra: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        from fuzz.targets import TARGETS
    found, crashes = WORK / name, WORK / "crashes"
    if seed:  # reproducible: start from the committed seeds alone, not from what earlier runs found
        found = WORK / "seeded" / name
        shutil.rmtree(found, ignore_errors=True)
    found.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        *([f"-runs={runs}"] if runs else []),
        *([f"-seed={seed}"] if seed else []),
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/{name}-",
        *extra,
        str(found),  # new inputs are written to the first directory only: the seeds stay as committed
        str(CORPUS / name),
    ]
    atheris.Setup(argv, TARGETS[name])
    atheris.Fuzz()  # exits the process: 0 when the time is up, non-zero on a crash


def _mutate(seed: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    data = bytearray(seed)
    for pos, chunk in edits:
        at = pos % (len(data) + 1)
        if pos & 1:
            data[at : at + len(chunk)] = chunk  # overwrite
        else:
            data[at:at] = chunk  # insert
    return bytes(data)


def _run_hypothesis(name: str, seconds: int, runs: int = 0, seed: int = 0) -> None:
    """Fallback where atheris is unavailable: random and seed-mutating inputs, no coverage feedback."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from fuzz.targets import TARGETS

    target = TARGETS[name]
    edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)), max_size=6)
    inputs = st.binary(max_size=4096) | st.builds(_mutate, st.sampled_from(_seeds(name)), edits)
    failing: list[bytes] = []

    def batch(batch_seed: int) -> None:
        @settings(
            max_examples=500,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis_seed(batch_seed)
        @given(inputs)
        def check(data: bytes) -> None:
            try:
                target(data)
            except Exception:
                failing.append(data)
                raise

        check()

    rng = random.Random(seed or None)
    deadline = time.monotonic() + seconds
    done = 0
    try:
        while time.monotonic() < deadline and not (runs and done >= runs):
            batch(rng.getrandbits(32))
            done += 500
    except Exception:
        if failing:  # the last failing input is the shrunk one hypothesis reports
            crashes = WORK / "crashes"
            crashes.mkdir(parents=True, exist_ok=True)
            path = crashes / f"{name}-hypothesis-{int(time.time())}"
            path.write_bytes(failing[-1])
            print(f"crash input (shrunk) written to {path}", file=sys.stderr)
        raise
    print(f"stat::number_of_executed_units: {done}", file=sys.stderr)


def run_all(seconds: int, runs: int = 0, seed: int = 0) -> int:
    """Each target in its own process (atheris.Fuzz never returns); one summary line per target."""
    WORK.mkdir(exist_ok=True)
    failed = []
    engine = "atheris" if have_atheris() else "hypothesis fallback (atheris not installed)"
    budget = f"{seconds}s" + (f" or {runs} runs" if runs else "") + (f", seed {seed}" if seed else "")
    print(f"fuzzing {len(NAMES)} targets ({budget} each) with {engine}", flush=True)
    for name in NAMES:
        log = WORK / f"{name}.log"
        with log.open("wb") as out:
            rc = subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "fuzz",
                    "run",
                    name,
                    *("--seconds", str(seconds), "--runs", str(runs)),
                    *("--seed", str(seed)),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                # A fixed seed is only reproducible with a fixed hash seed too (set iteration order).
                env={**os.environ, "PYTHONPATH": str(ROOT), **({"PYTHONHASHSEED": "0"} if seed else {})},
            )
        text = log.read_text(errors="replace")
        execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
        folder = WORK / "seeded" / name if seed else WORK / name
        found = len(list(folder.glob("*"))) if folder.exists() else 0
        status = "ok" if rc == 0 else f"CRASH (exit {rc})"
        print(f"  {name:<11} {status:<16} {execs[1] if execs else '?':>9} runs  {found} new inputs", flush=True)
        if rc != 0:
            failed.append(name)
            print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
            print(f"  full log: {log}", file=sys.stderr)
    return 1 if failed else 0


def replay(names: list[str]) -> int:
    from fuzz.targets import TARGETS

    bad = 0
    for name in names or list(TARGETS):
        target: Callable[[bytes], None] = TARGETS[name]
        files = sorted(p for p in (CORPUS / name).iterdir() if p.is_file())
        for path in files:
            try:
                target(path.read_bytes())
            except Exception as exc:
                bad += 1
                print(f"{path.relative_to(ROOT)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"{name}: {len(files)} inputs replayed")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    extra = args[args.index("--") + 1 :] if "--" in args else []
    args = args[: args.index("--")] if "--" in args else args
    parser = argparse.ArgumentParser(prog="python -m fuzz", description="Fuzz the parsers of untrusted input.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the targets and their seed counts")
    run = sub.add_parser("run", help="fuzz one target (atheris, else hypothesis)")
    run.add_argument("target", choices=NAMES)
    every = sub.add_parser("all", help="fuzz every target in turn")
    for p in (run, every):
        p.add_argument("--seconds", type=int, default=60, help="time budget per target (default 60)")
        p.add_argument("--runs", type=int, default=0, help="stop after this many inputs (default: no limit)")
        p.add_argument("--seed", type=int, default=0, help="random seed, for a reproducible run (default: random)")
    rep = sub.add_parser("replay", help="run every corpus input once")
    rep.add_argument("targets", nargs="*", choices=[[], *NAMES], default=[])
    opts = parser.parse_args(args)
    if opts.command == "list":
        for name in NAMES:
            print(f"{name:<11} {len(_seeds(name))} seeds")
        return 0
    if opts.command == "all":
        return run_all(opts.seconds, opts.runs, opts.seed)
    if opts.command == "replay":
        return replay(opts.targets)
    if have_atheris():
        _run_atheris(opts.target, opts.seconds, opts.runs, opts.seed, extra)
    else:
        _run_hypothesis(opts.target, opts.seconds, opts.runs, opts.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
