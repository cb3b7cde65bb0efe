"""The felix node agent: follows typha and programs this node's kernel.

Pure cores and thin shells, joined in `agent`:

- `model` parses typha's key/value updates into records; `calc` turns them into desired routes
  (pure, incremental);
- `dataplane` writes the kernel: netlink codec and socket, route and device managers (each a pure
  planner and a thin shell), workload-interface sysctls;
- `policy` is the network-policy calculation and its contract with the dataplane;
- `agent` joins the sync client (`protocol.client`), the calculation and the dataplane; `config`,
  `discovery`, `metrics`, `ops` and `__main__` are the process around it.

felix depends only on `protocol` and `common`, never on typha (tests/test_layering.py).
"""
