"""A typha sync server preloaded with synthetic KVs, driven over stdin/stdout by the fan-out benchmark.

It runs the real `SyncServer` and `SnapCache` in a process of its own, so the benchmark measures the
server's CPU and memory apart from the agents'. Commands are JSON lines on stdin; each gets one JSON
line back on stdout:
  {"cmd": "stats"}                       -> rss, connections, streaming, head seq, cache stats
  {"cmd": "churn", "rate": R, "seconds": T, "tick": 0.01} -> changes R keys/s for T s, then replies
  {"cmd": "digest"}                      -> digest of the cache state (to verify sampled agents)
  {"cmd": "release"}                     -> drop cached snapshots and collect garbage
  {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

from loadtest.support.processes import process_rss_bytes
from protocol import SyncStatus
from protocol.digest import state_digest
from typha.snapcache import SnapCache
from typha.syncserver import ServerConfig, SyncServer


def synthetic_value(i: int, rng: random.Random, size: int) -> bytes:
    """A JSON value shaped like a workload endpoint, padded to about `size` bytes."""
    ns = f"ns-{i % 97}"
    base = (
        '{"name":"cali%011x","ipNetworks":["10.%d.%d.%d/32"],"profiles":["kns.%s","ksa.%s.default"],'  # noqa: UP031 - a %-template keeps the JSON shape readable
        '"labels":{"app":"app-%d","pod-template-hash":"%08x","projectcalico.org/namespace":"%s",'
        '"projectcalico.org/orchestrator":"k8s"},"node":"node-%05d","orchestrator":"k8s","workload":"%s/pod-%d"'
        % (
            rng.getrandbits(44),
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            ns,
            ns,
            i % 31,
            rng.getrandbits(32),
            ns,
            i % 5000,
            ns,
            i,
        )
    )
    # Random hex padding (annotations, hashes): compresses about as badly as real values do.
    pad = max(0, size - len(base) - 12)
    return (base + ',"pad":"' + rng.randbytes(pad // 2 + 1).hex()[:pad] + '"}').encode()


async def serve(kvs: int, value_size: int, port: int, seed: int, tls_dir: str = "") -> None:
    rng = random.Random(seed)
    cache = SnapCache("felix")
    batch = [
        (
            f"/calico/v1/host/node-{i % 5000:05d}/workload/k8s/ns%2fpod-{i}/endpoint/eth0",
            synthetic_value(i, rng, value_size),
            "1",
        )
        for i in range(kvs)
    ]
    cache.apply(batch)
    del batch
    cache.set_status(SyncStatus.IN_SYNC)
    tls: dict[str, str] = {}
    if tls_dir:  # the layout of loadtest.support.certs.write_cluster, with its default names
        d = Path(tls_dir)
        tls = {
            "ca_file": str(d / "ca.crt"),
            "server_cert_file": str(d / "typha.crt"),
            "server_key_file": str(d / "typha.key"),
            "client_cn": "typha-client",
        }
    config = ServerConfig(host="127.0.0.1", port=port, max_connections=15000, max_handshakes=2000, **tls)  # type: ignore[arg-type]
    server = SyncServer({"felix": cache}, config)
    await server.start()
    out = sys.stdout

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"port": server.port, "pid": os.getpid(), "kvs": len(cache)})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    keys = list(cache.items())
    counter = 0
    while line := await reader.readline():
        try:
            cmd = json.loads(line)
        except ValueError:
            reply({"error": "bad json"})
            continue
        name = cmd.get("cmd")
        if name == "stats":
            st = cache.stats
            reply(
                {
                    "rss": process_rss_bytes(os.getpid()),
                    "connections": len(server.connections),
                    "streaming": sum(len(s) for s in server._following.values()),
                    "seq": cache.head.seq,
                    "updates": st.updates_total,
                    "skipped": st.updates_skipped,
                    "breadcrumbs": st.breadcrumbs,
                    "snapshots_generated": st.snapshots_generated,
                    "snapshots_reused": st.snapshots_reused,
                    "snapshot_raw_bytes": st.snapshot_raw_bytes,
                    "snapshot_wire_bytes": st.snapshot_wire_bytes,
                    "cpu": time.process_time(),
                }
            )
        elif name == "churn":
            rate, seconds, tick = float(cmd["rate"]), float(cmd["seconds"]), float(cmd.get("tick", 0.01))
            start = time.monotonic()
            sent = 0
            while (elapsed := time.monotonic() - start) < seconds:
                due = int(rate * elapsed) - sent
                if due > 0:
                    upd = []
                    for _ in range(due):
                        counter += 1
                        upd.append((rng.choice(keys), synthetic_value(counter, rng, value_size), str(counter)))
                    cache.apply(upd)
                    sent += due
                await asyncio.sleep(tick)
            reply({"done": True, "updates": sent, "seq": cache.head.seq})
        elif name == "digest":
            items = [(k, v) for k, (_, v, _) in cache.items().items()]
            reply({"seq": cache.head.seq, "keys": len(items), "digest": state_digest(items)})
        elif name == "release":
            cache.release_snapshots()
            gc.collect()
            reply({"rss": process_rss_bytes(os.getpid())})
        elif name == "quit":
            reply({"bye": True})
            break
        else:
            reply({"error": f"unknown command {name!r}"})
    await server.shutdown()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="loadtest-benchserver")
    p.add_argument("--kvs", type=int, default=100_000)
    p.add_argument("--value-size", type=int, default=500)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tls-dir", default="", help="serve mutual TLS with the certificates in this directory")
    a = p.parse_args(argv)
    import signal

    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark, not a Ctrl-C, ends this server

    uvloop.run(serve(a.kvs, a.value_size, a.port, a.seed, a.tls_dir))


if __name__ == "__main__":
    main()
