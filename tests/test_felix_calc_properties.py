"""felix.calc's central property: a calculator fed any sequence of updates, batch by batch, ends
with exactly the routes, neighbours and unresolved destinations of a fresh calculator fed only the
final state, and its deltas alone rebuild them (all the route manager ever sees).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix.calc import Neighbor, Route, RouteCalculator, RouteDelta
from felix.model import parse_net
from tests.support.felix_kvs import affinity, block, node, pool, wep

ME = "node-a"


NODES = [ME, "node-b", "node-c"]
ADDRS = ["192.168.1.1/24", "192.168.1.2/24", "192.168.2.3/24", "192.168.1.9/16", None]
VTEPS = [None, "10.64.3.1", "10.64.3.2", "fd00:64::1"]
MACS = [None, "66:00:00:00:00:01", "66:00:00:00:00:02"]
POOLS = ["10.64.0.0/22", "10.64.0.0/24", "10.80.0.0/16", "fd00:64::/48"]
MODES = ["Never", "Always", "CrossSubnet"]
BLOCKS = [
    "10.64.0.0/26",
    "10.64.0.64/26",
    "10.64.1.0/26",
    "10.80.0.0/26",
    "10.64.0.0/24",
    "fd00:64::/122",
    "10.64.0.7/32",
]
IPS = ["10.64.0.1", "10.64.0.2", "10.64.0.7", "10.64.0.65", "10.64.1.1", "10.80.0.1", "10.99.0.1", "fd00:64::3"]


def _node_kv(name: str) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.builds(
        lambda a, v, m, a6: node(
            name, a, vtep=v if v and ":" not in v else None, mac=m, ip6=a6, vtep6=v if v and ":" in v else None, mac6=m
        ),
        st.sampled_from(ADDRS),
        st.sampled_from(VTEPS),
        st.sampled_from(MACS),
        st.sampled_from([None, "fd00:1::1/64", "fd00:2::1/64"]),
    )


def _pool_kv(cidr: str) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.builds(
        lambda i, v, dis: pool(cidr, ipip=i if ":" not in cidr else "Never", vxlan=v, disabled=dis),
        st.sampled_from(MODES),
        st.sampled_from(MODES),
        st.booleans(),
    )


def _block_kv(cidr: str) -> st.SearchStrategy[tuple[str, bytes]]:
    size = parse_net(cidr).size()
    return st.builds(
        lambda o, bor: block(cidr, o, [(x, n) for x, n in bor if x < size]),
        st.sampled_from([*NODES, None]),
        st.lists(st.tuples(st.integers(0, 8), st.sampled_from(NODES)), max_size=3, unique_by=lambda t: t[0]),
    )


def _aff_kv(name: str, cidr: str) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.builds(
        lambda state: affinity(name, cidr, state), st.sampled_from(["confirmed", "pending", "pendingDeletion"])
    )


def _wep_kv(name: str, pod: str) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.builds(lambda ips: wep(name, pod, ips), st.lists(st.sampled_from(IPS), max_size=2, unique=True))


def _change(kv: st.SearchStrategy[tuple[str, bytes]]) -> st.SearchStrategy[tuple[str, bytes | None]]:
    """A new value, a delete, or an unparseable value for the key."""
    return st.one_of(kv, kv.map(lambda x: (x[0], None)), kv.map(lambda x: (x[0], b"{broken")))


KEY_STRATEGIES = (
    [_node_kv(n) for n in NODES]
    + [_pool_kv(p) for p in POOLS]
    + [_block_kv(b) for b in BLOCKS]
    + [_aff_kv(n, b) for n in NODES[:2] for b in BLOCKS[:3]]
    + [_wep_kv(n, p) for n in NODES for p in ("p1", "p2")]
)


@st.composite
def _op_sequences(draw: st.DrawFn) -> list[tuple[str, bytes | None]]:
    # A dense random starting state (most keys present), so that interactions between nodes,
    # pools, blocks and endpoints are the rule rather than a lucky draw; then random changes.
    start = draw(st.permutations([draw(s) for s in KEY_STRATEGIES if draw(st.integers(0, 5))]))
    changes = draw(st.lists(st.one_of(*(_change(s) for s in KEY_STRATEGIES)), max_size=25))
    return start + changes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_op_sequences(), cuts=st.lists(st.integers(0, 60), max_size=8))
def test_incremental_equals_fresh(ops: list[tuple[str, bytes | None]], cuts: list[int]) -> None:
    inc = RouteCalculator(ME, network_mtu=1400)
    routes: dict[str, Route] = {}
    neighbors: dict[str, Neighbor] = {}
    bounds = sorted({0, len(ops), *(c for c in cuts if c <= len(ops))})
    for lo, hi in itertools.pairwise(bounds):
        d = inc.apply(ops[lo:hi])
        # Deltas alone must rebuild desired(): that is all the route manager ever sees.
        assert not (set(d.routes) & d.removed)
        for dst in d.removed:
            assert dst in routes
            del routes[dst]
        routes.update(d.routes)
        for ip in d.neighbors_removed:
            del neighbors[ip]
        neighbors.update(d.neighbors)
    final: dict[str, bytes | None] = {}
    for k, v in ops:
        final[k] = v
    fresh = RouteCalculator(ME, network_mtu=1400)
    fresh.apply([(k, v) for k, v in final.items() if v is not None])
    assert inc.desired() == fresh.desired() == routes
    assert inc.desired_neighbors() == fresh.desired_neighbors() == neighbors
    assert inc.unresolved() == fresh.unresolved()


def test_empty_delta_is_falsy() -> None:
    assert not RouteDelta()
    assert RouteDelta(removed={"10.0.0.0/8"})
