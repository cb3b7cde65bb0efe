"""`loadtest run`: a whole cluster on one machine, measured end to end; `loadtest report` renders it.

What it stands up (everything on loopback, every phase bounded in time): the Kubernetes API-server
emulator in this process, seeded with a synthetic cluster; `--replicas` real typha processes following
it; thousands of simulated agents in worker processes; then churn at `--rate` events/s (or a
`--ramp`), with faults on schedule. `--mode direct` gives the same cluster and churn to agents that
watch the API server themselves; `--mode both` runs both and the report puts them side by side.

Its parts: `scenario` (the options, pure), `orchestrator` (runs the modes, writes the files),
`modes/` (what differs per mode), `faults` (injection and recovery), `measure` (figures from what
the fleets report), `replicas` (typha processes that survive restarts), `progress` (live view),
`results` (the typed schema of results.json that `loadtest.report` reads).
"""
