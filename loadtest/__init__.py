"""Load tests, benchmarks and the demo: everything that exercises typha and felix from outside.

Nothing here is part of the product: typha and felix never import it, the container image does not
contain it, and its dependencies (rich, matplotlib, msgspec, trustme, cryptography) come with the `loadtest` extra
(`pip install 'pytypha[loadtest]'`; `make demo`, `make test` and `make bench` install it).

Its parts:
- `__main__`: the `loadtest` command (`demo`, `run`, `report`, `bench ...`, `apiserver`);
- `apiserver/`: a Kubernetes API-server emulator (HTTPS, lists, watches, faults on demand);
- `commands/`: the demo and the benchmarks, one module each;
- `run/`: `loadtest run`, a whole cluster on one machine with churn and faults, and its results schema;
- `report/`: `loadtest report`, tables, plots and summary.md from a run's results.json;
- `fleets/`: simulated agents in worker processes (protocol agents, and agents watching the API directly);
- `support/`: shared helpers (typha child processes and their /status and metrics, the synthetic
  cluster's bridge to the emulator, histograms, host figures, console output).
"""
