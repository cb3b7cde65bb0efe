"""felix.policy.calc's central property: any sequence of updates, cut into batches, replays (through
the model dataplane) to the same state as a fresh calculator fed only the final state.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from felix.policy.calc import PolicyCalculator
from protocol import keys as K
from tests.support.policy_lab import (
    KV,
    ME,
    Replay,
    j,
)

# -- the whole contract, incrementally: replayed batches equal a fresh calculation -----------------

NODES = [ME, "node-b"]
NAMESPACES = ["a", "b"]
SEL = st.sampled_from(
    ["app == 'x'", "has(app)", "app != 'x'", "pcns.team == 'blue'", "role == 'db' || app == 'y'", "all()", "has("]
)


def _wep(i: int, ip: int, node: int, labels: dict[str, str], port: int | None) -> KV:
    ns = NAMESPACES[i % 2]
    value: dict[str, Any] = {
        "name": f"cali{i:011d}",
        "node": NODES[node],
        "ipNetworks": [f"10.0.0.{ip}/32"],
        "profiles": [f"kns.{ns}"],
        "labels": {**labels, "projectcalico.org/namespace": ns},
    }
    if port is not None:
        value["ports"] = [{"name": "http", "protocol": "tcp", "port": port}]
    return K.workload_key(NODES[node], ns, f"p{i}"), j(value)


def _rule(draw_sel: str | None, named: bool) -> dict[str, Any]:
    r: dict[str, Any] = {"action": "allow"}
    if draw_sel is not None:
        r["srcSelector"] = draw_sel
    if named:
        r["protocol"] = "tcp"
        r["dstPorts"] = ["http", 80]
    return r


UPDATE = st.one_of(
    st.builds(
        _wep,
        st.integers(0, 4),
        st.integers(1, 3),
        st.integers(0, 1),
        st.dictionaries(st.sampled_from(["app", "role"]), st.sampled_from(["x", "y", "db"])),
        st.one_of(st.none(), st.sampled_from([8080, 9090])),
    ),
    st.builds(
        lambda i, node: (K.workload_key(NODES[node], NAMESPACES[i % 2], f"p{i}"), None),
        st.integers(0, 4),
        st.integers(0, 1),
    ),
    st.builds(
        lambda ns, team, rules: (
            K.profile_key(f"kns.{ns}"),
            None
            if team is None
            else j({"labels": {"pcns.team": team}, "inboundRules": rules, "outboundRules": [{"action": "allow"}]}),
        ),
        st.sampled_from(NAMESPACES),
        st.one_of(st.none(), st.sampled_from(["blue", "red"])),
        st.lists(st.builds(_rule, st.one_of(st.none(), SEL), st.booleans()), max_size=2),
    ),
    st.builds(
        lambda name, tier, order, sel, types, rules: (
            K.policy_key(name, None, tier),
            j(
                {
                    "tier": tier,
                    "order": order,
                    "selector": sel,
                    "types": types,
                    "inboundRules": rules,
                    "outboundRules": rules,
                }
            ),
        ),
        st.sampled_from(["p1", "p2", "p3"]),
        st.sampled_from(["default", "t1"]),
        st.sampled_from([None, 1.0, 2.0]),
        SEL,
        st.sampled_from([["ingress"], ["egress"], ["ingress", "egress"]]),
        st.lists(st.builds(_rule, st.one_of(st.none(), SEL), st.booleans()), max_size=2),
    ),
    st.builds(
        lambda name, tier: (K.policy_key(name, None, tier), None),
        st.sampled_from(["p1", "p2", "p3"]),
        st.sampled_from(["default", "t1"]),
    ),
    st.builds(
        lambda labels, nets: (K.network_set_key("ns1"), j({"labels": labels, "nets": nets})),
        st.dictionaries(st.sampled_from(["app", "role"]), st.sampled_from(["x", "db"])),
        st.lists(st.sampled_from(["10.0.0.1/32", "10.9.0.0/16"]), max_size=2),
    ),
    st.just((K.network_set_key("ns1"), None)),
)


@settings(max_examples=250, deadline=None)
@given(st.lists(st.lists(UPDATE, min_size=1, max_size=6), min_size=1, max_size=8))
def test_incremental_batches_replay_to_the_same_state_as_a_fresh_calculation(batches: list[list[KV]]) -> None:
    calc = PolicyCalculator(ME)
    replay = Replay()
    final: dict[str, bytes] = {}
    for b in batches:
        batch, _ = calc.apply(b)
        replay.apply(batch)
        for k, v in b:
            if v is None:
                final.pop(k, None)
            else:
                final[k] = v
    fresh, _ = PolicyCalculator(ME).apply(list(final.items()))
    expected = Replay().apply(fresh)
    assert replay.state() == expected.state()
    # every local endpoint of the final state is present, and only those
    assert set(replay.endpoints) == {k for k in final if k.startswith(f"/calico/v1/host/{ME}/")}
