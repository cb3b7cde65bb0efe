"""felix.policy.labelindex and felix.policy.ipsets: incremental matching checked against brute force."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from felix.policy.ipsets import IpSetCalculator, named_port_set, selector_set
from felix.policy.labelindex import LabelIndex
from felix.policy.messages import IpSetDeltaUpdate, IpSetRemove, IpSetUpdate
from felix.policy.model import Endpoint, NamedPort, NetworkSet
from felix.policy.selector import parse

SELECTORS = [
    "app == 'x'",
    "app in {'x', 'y'}",
    "has(app)",
    "!has(app)",
    "app != 'x'",
    "pcns.team == 'blue'",
    "app == 'x' && pcns.team == 'blue'",
    "app == 'x' || role == 'db'",
    "role contains 'd'",
    "app == 'x' && app == 'y'",
    "all()",
]
LABELS = st.dictionaries(st.sampled_from(["app", "role", "pcns.team"]), st.sampled_from(["x", "y", "db", "blue"]))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("item"), st.integers(0, 5), LABELS, st.lists(st.sampled_from(["p1", "p2"]), unique=True)),
        st.tuples(st.just("rm-item"), st.integers(0, 5)),
        st.tuples(st.just("parent"), st.sampled_from(["p1", "p2"]), st.one_of(st.none(), LABELS)),
        st.tuples(st.just("sel"), st.integers(0, 3), st.sampled_from(SELECTORS)),
        st.tuples(st.just("rm-sel"), st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_label_index_equals_brute_force(ops: list[tuple]) -> None:
    seen: set[tuple[int, int]] = set()

    def on_match(s: int, i: int) -> None:
        assert (s, i) not in seen, "match reported twice"
        seen.add((s, i))

    def on_unmatch(s: int, i: int) -> None:
        assert (s, i) in seen, "unmatch of a pair that never matched"
        seen.discard((s, i))

    index: LabelIndex[int, int] = LabelIndex(on_match, on_unmatch)
    items: dict[int, tuple[dict[str, str], list[str]]] = {}
    parents: dict[str, dict[str, str]] = {}
    sels: dict[int, str] = {}
    for op in ops:
        if op[0] == "item":
            items[op[1]] = (op[2], op[3])
            index.update_item(op[1], op[2], tuple(op[3]))
        elif op[0] == "rm-item":
            items.pop(op[1], None)
            index.remove_item(op[1])
        elif op[0] == "parent":
            if op[2] is None:
                parents.pop(op[1], None)
            else:
                parents[op[1]] = op[2]
            index.update_parent(op[1], op[2])
        elif op[0] == "sel":
            sels[op[1]] = op[2]
            index.update_selector(op[1], parse(op[2]))
        else:
            sels.pop(op[1], None)
            index.remove_selector(op[1])
        # brute force: effective labels = own, then parents in order where the item has none
        expected = set()
        for iid, (own, pids) in items.items():
            eff: dict[str, str] = {}
            for pid in pids:
                for k, v in parents.get(pid, {}).items():
                    eff.setdefault(k, v)
            eff.update(own)
            assert index.labels(iid) == eff
            for sid, text in sels.items():
                if parse(text).matches(eff):
                    expected.add((sid, iid))
        assert seen == expected
        for sid in sels:
            assert set(index.matches(sid)) == {i for s, i in expected if s == sid}
        for iid in items:
            assert set(index.selectors_of(iid)) == {s for s, i in expected if i == iid}


def ep(ip: str, labels: dict[str, str], ports: tuple[NamedPort, ...] = (), profiles: tuple[str, ...] = ()) -> Endpoint:
    return Endpoint("n1", "cali0", (f"{ip}/32",), (), "", labels, profiles, ports)


def drain(calc: IpSetCalculator, state: dict[str, set[str]]) -> list[object]:
    ups, rms = calc.flush()
    for m in ups:
        if isinstance(m, IpSetUpdate):
            state[m.id] = set(m.members)
        else:
            assert isinstance(m, IpSetDeltaUpdate)
            assert not (m.added & state[m.id]), "added members already present"
            assert m.removed <= state[m.id], "removed members not present"
            state[m.id] = (state[m.id] | m.added) - m.removed
    for r in rms:
        assert isinstance(r, IpSetRemove)
        del state[r.id]
    return [*ups, *rms]


def test_ip_sets_members_deltas_named_ports_and_refcounted_addresses() -> None:
    calc = IpSetCalculator()
    state: dict[str, set[str]] = {}
    http = NamedPort("http", "tcp", 8080)
    calc.update_item("e1", ep("10.0.0.1", {"app": "x"}, (http,)))
    calc.update_item("e2", ep("10.0.0.2", {"app": "y"}, (NamedPort("http", "tcp", 9090),)))
    calc.update_item("ns1", NetworkSet({"app": "x"}, ("10.0.0.0/24", "10.0.0.1/32"), ()))
    x, http_x = selector_set(parse("app == 'x'")), named_port_set(parse("app == 'x'"), "tcp", "http")
    http_all = named_port_set(parse(""), "tcp", "http")
    for spec in (x, http_x, http_all):
        calc.ref(spec)
    msgs = drain(calc, state)
    assert [type(m) for m in msgs] == [IpSetUpdate] * 3
    assert state[x.id] == {"10.0.0.1/32", "10.0.0.0/24"}
    assert state[http_x.id] == {"10.0.0.1,tcp:8080"}  # network sets have no ports
    assert state[http_all.id] == {"10.0.0.1,tcp:8080", "10.0.0.2,tcp:9090"}
    assert {m.type for m in msgs if isinstance(m, IpSetUpdate)} == {"hash:net", "hash:ip,port"}

    # e1 stops matching: its /32 is still contributed by the network set, so x keeps it.
    calc.update_item("e1", ep("10.0.0.1", {"app": "z"}, (http,)))
    msgs = drain(calc, state)
    assert msgs == [IpSetDeltaUpdate(http_x.id, frozenset(), frozenset({"10.0.0.1,tcp:8080"}))]
    # A change and its reversal within one batch send nothing.
    calc.update_item("e2", ep("10.0.0.2", {"app": "x"}))
    calc.update_item("e2", ep("10.0.0.2", {"app": "y"}, (NamedPort("http", "tcp", 9090),)))
    assert drain(calc, state) == []
    # An address change of a matching item swaps its members.
    calc.update_item("e2", ep("10.0.0.3", {"app": "y"}, (NamedPort("http", "tcp", 9090),)))
    drain(calc, state)
    assert state[http_all.id] == {"10.0.0.1,tcp:8080", "10.0.0.3,tcp:9090"}
    # Sharing and release: a second reference keeps the set; the last one removes it.
    calc.ref(x)
    calc.unref(x)
    assert drain(calc, state) == []
    calc.unref(x)
    calc.update_item("ns1", None)
    assert drain(calc, state) == [IpSetRemove(x.id)]
    assert x.id not in calc.set_ids() and calc.members(x.id) == frozenset()
    # A set created and released within one batch is never sent.
    calc.ref(x)
    calc.unref(x)
    assert drain(calc, state) == []
