"""What the API emulator's schema admission and OpenAPI documents cost (docs/apiserver.md, "Costs").

    .venv/bin/python tools/bench_emulator_admission.py

Prints: loading the built-in definitions (once per process), admitting one realistic pod under
fieldValidation=Strict, an HTTP-path pod create (strategy, validation) with and without admission,
and the sizes and build times of the OpenAPI documents kubectl fetches. Medians of 5 rounds.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from itertools import count
from typing import Any

from loadtest.apiserver import Store, make_pod
from loadtest.apiserver.openapi import OpenAPI
from loadtest.apiserver.schema import STRICT, WARN, load_definitions
from loadtest.apiserver.store import Admission


def median_seconds(fn: Callable[[], Any], n: int) -> float:
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n)
    return statistics.median(rounds)


def main() -> None:
    t0 = time.perf_counter()
    load_definitions(31)
    load = time.perf_counter() - t0
    s = Store()
    pod = make_pod("default", "p", "n1", "10.0.0.1", labels={"app": "web", "tier": "fe"})
    pod["spec"]["containers"][0].update(
        ports=[{"containerPort": 80, "name": "http"}],
        env=[{"name": "A", "value": "b"}],
        resources={"requests": {"cpu": "100m", "memory": "64Mi"}},
    )
    rt = s.resource("pods")
    admit = median_seconds(lambda: s.schemas.admit(rt, copy.deepcopy(pod), STRICT), 2000)
    copying = median_seconds(lambda: copy.deepcopy(pod), 2000)
    names = count()

    def create(admission: Admission | None) -> None:
        p = copy.deepcopy(pod)
        p["metadata"]["name"] = f"p{next(names)}"
        s.create_object("pods", p, strategy=True, admission=admission)

    plain = median_seconds(lambda: create(None), 1000)
    admitted = median_seconds(lambda: create(Admission(WARN)), 1000)
    api = OpenAPI(s)
    t0 = time.perf_counter()
    core, apps = api.v3_document("api/v1") or b"", api.v3_document("apis/apps/v1") or b""
    v3 = time.perf_counter() - t0
    t0 = time.perf_counter()
    v2, v2pb = api.v2_document(), api.v2_protobuf()
    v2_time = time.perf_counter() - t0
    print(f"built-in definitions loaded once per process: {load * 1000:.0f} ms")
    print(f"admitting one pod under Strict: {(admit - copying) * 1e6:.0f} us")
    print(f"HTTP-path pod create: {plain * 1e6:.0f} us without admission, {admitted * 1e6:.0f} us with")
    print(
        f"/openapi/v3 api/v1 {len(core) / 1024:.0f} KiB and apps/v1 {len(apps) / 1024:.0f} KiB, built in {v3 * 1000:.0f} ms"
    )
    print(
        f"/openapi/v2 {len(v2) / 1024:.0f} KiB JSON, {len(v2pb) / 1024:.0f} KiB protobuf, built in {v2_time * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
