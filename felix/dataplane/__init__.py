"""Felix's dataplane: everything that writes to the node's kernel, one manager per concern.

Each concern has the same shape: a pure planner (desired state + what the kernel holds -> operations,
tested without root) and a thin shell that carries the operations out and records the results.

- `netns`: run a function inside a network namespace (sockets and /proc/sys files stay bound to it).
- `netlink`: the rtnetlink codec and socket; `fakenetlink` is an in-memory kernel for tests.
- `routeplan` / `routes`: routes in the main table and VXLAN neighbours (`RouteManager`).
- `deviceplan` / `devices`: the tunnel devices the pools need, `vxlan.calico` and friends (`DeviceManager`).
- `sysctl`: per-workload-interface sysctls.
- `iptables` / `ipsets`: network policy in iptables and ip sets (`iptables.manager.PolicyDataplane`).
"""
