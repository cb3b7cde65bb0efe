"""The state summary (protocol.summary): order-independent, O(1) per change, and localising differences."""

from __future__ import annotations

from hashlib import blake2b

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.summary import (
    LEAF_BITMAP_BYTES,
    LEAVES,
    LEAVES_PER_TOP,
    TOP_DIGESTS_BYTES,
    TOPS,
    IndexedSummary,
    StateSummary,
    bitmap_to_leaves,
    entry_hash,
    key_hash,
    leaf_of,
    leaves_to_bitmap,
    top_of_leaf,
    valid_tops,
)

keys = st.sampled_from([f"/calico/v1/k{i}" for i in range(40)] + ["", "é/ü", "a\x00b"])
values = st.binary(max_size=12)
# A change: (key, value or None for a delete).
changes = st.lists(st.tuples(keys, st.none() | values), max_size=60)


def apply(changes: list[tuple[str, bytes | None]]) -> dict[str, bytes]:
    view: dict[str, bytes] = {}
    for k, v in changes:
        if v is None:
            view.pop(k, None)
        else:
            view[k] = v
    return view


def incremental(changes: list[tuple[str, bytes | None]], summary: StateSummary) -> StateSummary:
    view: dict[str, bytes] = {}
    for k, v in changes:
        summary.change(k, view.get(k), v)
        if v is None:
            view.pop(k, None)
        else:
            view[k] = v
    return summary


def test_the_hashes_are_the_specified_blake2b_64() -> None:
    """docs/protocol.md 12.2 defines them byte for byte; another implementation must agree."""
    key, value = "/calico/v1/config/LogSeverityScreen", b'"Info"'
    kb = key.encode()
    assert key_hash(key) == int.from_bytes(blake2b(kb, digest_size=8).digest(), "big")
    assert leaf_of(key) == key_hash(key) >> 50
    framed = len(kb).to_bytes(4, "big") + kb + value
    assert entry_hash(key, value) == int.from_bytes(blake2b(framed, digest_size=8).digest(), "big")
    # The worked example of docs/protocol.md 13.8, pinned.
    assert f"{key_hash(key):016x}" == "eab756ae4d15d0e5"
    assert leaf_of(key) == 15021 and top_of_leaf(15021) == 117
    assert f"{entry_hash(key, value):016x}" == "879647f9721e798f"


@settings(deadline=None)
@given(changes, st.randoms(use_true_random=False))
def test_the_summary_depends_on_the_view_only_not_on_the_order_of_changes(changes, rnd) -> None:
    final = apply(changes)
    direct = StateSummary.of(final.items())
    assert incremental(changes, StateSummary()) == direct
    shuffled = list(final.items())
    rnd.shuffle(shuffled)
    assert StateSummary.of(shuffled) == direct
    # The indexed flavour (the server's) computes the same digests and lists each leaf's keys.
    indexed = IndexedSummary()
    for k, v in changes:
        indexed.set(k, v)
    assert indexed == direct and indexed.tops == direct.tops
    for k in final:
        assert k in set(indexed.keys_in([leaf_of(k)]))
    assert sorted(indexed.keys_in(range(LEAVES))) == sorted(final)


@settings(deadline=None)
@given(changes, changes)
def test_differing_tops_and_leaves_are_exactly_those_holding_a_difference(a_changes, b_changes) -> None:
    a, b = apply(a_changes), apply(b_changes)
    sa, sb = StateSummary.of(a.items()), StateSummary.of(b.items())
    differing_keys = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    tops = sa.differing_tops(sb.top_digests())
    assert tops == sorted({top_of_leaf(leaf_of(k)) for k in differing_keys})
    leaves = sb.differing_leaves(tops, sa.leaf_digests(tops))
    assert leaves == sorted({leaf_of(k) for k in differing_keys})
    assert (sa == sb) == (not differing_keys)


def test_a_top_digest_is_the_sum_of_its_leaves() -> None:
    s = StateSummary.of((f"k{i}", b"v%d" % i) for i in range(5000))
    for t in range(TOPS):
        assert s.tops[t] == sum(s.leaves[t * LEAVES_PER_TOP : (t + 1) * LEAVES_PER_TOP]) % (1 << 64)
    assert len(s.top_digests()) == TOP_DIGESTS_BYTES
    assert s.top_digests()[:8] == s.tops[0].to_bytes(8, "big")


def test_copy_is_independent_and_compares_by_digests() -> None:
    s = StateSummary.of([("a", b"1")])
    c = s.copy()
    c.add("b", b"2")
    assert c != s and StateSummary.of([("a", b"1")]) == s
    c.remove("b", b"2")
    assert c == s


@settings(deadline=None)
@given(st.sets(st.integers(0, LEAVES - 1), max_size=300))
def test_leaf_bitmaps_round_trip(leaves: set[int]) -> None:
    bitmap = leaves_to_bitmap(leaves)
    assert len(bitmap) == LEAF_BITMAP_BYTES
    assert bitmap_to_leaves(bitmap) == sorted(leaves)


def test_malformed_inputs_are_value_errors() -> None:
    s = StateSummary()
    with pytest.raises(ValueError):
        s.differing_tops(b"\0" * 8)
    with pytest.raises(ValueError):
        s.differing_leaves([1, 2], b"\0" * 1024)
    with pytest.raises(ValueError):
        bitmap_to_leaves(b"\0" * 10)
    with pytest.raises(ValueError):
        leaves_to_bitmap([LEAVES])
    assert valid_tops([0, 5, 127]) and valid_tops([])
    assert not valid_tops([5, 5]) and not valid_tops([3, 1]) and not valid_tops([128]) and not valid_tops([True])
    assert not valid_tops("ab") and not valid_tops([-1])


def test_keys_spread_evenly_over_the_leaves() -> None:
    """16,384 leaves: 100,000 keys put 6.1 per leaf on average, and no leaf far above it (a reconcile
    sends whole leaves, so a lopsided leaf would cost bytes)."""
    counts = [0] * LEAVES
    for i in range(100_000):
        counts[leaf_of(f"/calico/v1/host/node-{i % 997}/workload/k8s/ns%2fpod-{i}/endpoint/eth0")] += 1
    assert max(counts) < 30 and sum(1 for c in counts if c == 0) < 50


def test_the_worked_examples_of_the_spec() -> None:
    """docs/protocol.md 13.8, byte for byte."""
    from protocol import ClientHello, Digests, ServerHello, Want, encode

    s = StateSummary.of([("/calico/v1/config/LogSeverityScreen", b'"Info"')])
    assert s.top_digests() == bytes(117 * 8) + bytes.fromhex("879647f9721e798f") + bytes(80)
    assert encode(Digests(42, (), b"")).hex(" ") == (
        "00 00 00 15 09 00 00 00 83 a3 73 65 71 2a a4 74 6f 70 73 90 a6 6c 65 61 76 65 73 c4 00"
    )
    one = encode(Digests(42, (77,), bytes(1024)))
    assert len(one) == 1055 and one[8:].startswith(bytes.fromhex("83a3736571 2a a4746f7073 914d a66c6561766573 c50400"))
    want = encode(Want(leaves_to_bitmap([5, 9969])))
    assert len(want) == 2067 and want[:19] == bytes.fromhex("0000080b0a000000 81a66c6561766573c50800")
    bitmap = want[19:]
    assert [(i, b) for i, b in enumerate(bitmap) if b] == [(0, 0x20), (1246, 0x02)]
    hello = ClientHello("node-1", "felix", (1,), "felix 0.1", ("zstd",), "c1", summary=bytes(1024), summary_version=1)
    wire = encode(hello)
    assert len(wire) == 1156 and wire[8] == 0x88
    assert wire[-1024 - 28 :].startswith(b"\xafsummary_version\x01\xa7summary\xc5\x04\x00")
    sh = encode(ServerHello(1, "felix", "zstd", "srv1", 10.0, "5d1f0c8a9b3e4f27", reconcile=True))
    assert len(sh) == 125 and sh[8] == 0x87 and sh.endswith(b"\xa9reconcile\xc3")
