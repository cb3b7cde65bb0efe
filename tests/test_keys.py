"""The key schema (protocol.keys): every kind survives build -> parse -> build, and bad keys are told apart."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import keys as K

# Kubernetes names: DNS-1123 labels and subdomains (no '/', no '%': those never reach a key unescaped).
label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
subdomain = st.lists(label, min_size=1, max_size=3).map(".".join)
endpoint = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,14}\Z")
namespace = st.none() | label


@st.composite
def cidrs(draw: st.DrawFn) -> str:
    v6 = draw(st.booleans())
    addr = draw(st.ip_addresses(v=6 if v6 else 4))
    plen = draw(st.integers(0, 128 if v6 else 32))
    return ipaddress.ip_network(f"{addr}/{plen}", strict=False).with_prefixlen


KINDS = st.one_of(
    st.builds(K.WorkloadKey, subdomain, st.sampled_from(["k8s", "openstack"]), label, subdomain, endpoint),
    st.builds(K.HostEndpointKey, subdomain, subdomain),
    st.builds(K.ProfileKey, st.builds(lambda ns, sa: f"ksa.{ns}.{sa}", label, label) | subdomain),
    st.builds(K.PolicyKey, label, namespace, subdomain),
    st.builds(K.NetworkSetKey, namespace, subdomain),
    st.builds(K.IPPoolKey, cidrs()),
    st.builds(K.BlockKey, cidrs()),
    st.builds(K.BlockAffinityKey, subdomain, cidrs()),
    st.builds(
        K.ResourceKey,
        st.sampled_from(["nodes", "felixconfigurations", "clusterinformations", "bgppeers", "bgpconfigurations"]),
        namespace,
        subdomain,
    ),
)


@given(KINDS)
def test_every_key_kind_round_trips(parts: K.Key) -> None:
    key = parts.key()
    assert K.parse_key(key) == parts
    assert type(K.parse_key(key)) is type(parts)
    assert K.parse_key(key).key() == key  # type: ignore[union-attr]


@given(subdomain, label, subdomain)
def test_builders_and_per_kind_parsers_agree(node: str, ns: str, pod: str) -> None:
    key = K.workload_key(node, ns, pod)
    assert K.parse_workload_key(key) == K.WorkloadKey(node, K.ORCHESTRATOR_K8S, ns, pod, K.DEFAULT_ENDPOINT)
    assert key.startswith(K.workload_prefix(node))
    assert K.parse_node_key(K.node_key(node)) == node
    assert K.parse_policy_key(K.policy_key(pod, ns)) == K.PolicyKey(K.DEFAULT_TIER, ns, pod)
    assert K.parse_node_key(key) is None and K.parse_workload_key(K.node_key(node)) is None


def test_keys_look_like_calicos() -> None:
    assert K.workload_key("n", "shop", "web") == "/calico/v1/host/n/workload/k8s/shop%2fweb/endpoint/eth0"
    assert K.block_affinity_key("n1", "fd00::/122") == "/calico/ipam/v2/host/n1/ipv6/block/fd00::-122"
    assert K.network_set_key("x", "ns") == "/calico/v1/netset/ns%2fx"
    assert K.resource_key("networkpolicies", "p", "ns") == "/calico/resources/v3/projectcalico.org/networkpolicies/ns/p"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/calico/v2/whatever",
        "/calico/v1/host/n/workload/k8s/a%2fb/endpoint",  # too short for a workload key
        "/calico/v1/policy/tier/default/rules/x",
        "/calico/ipam/v2/assignment/ipv4/notblock/10.0.0.0-24",
        "/calico/resources/v3/projectcalico.org/nodes/",
        "/calico/resources/v3/projectcalico.org/nodes/a/b/c",
    ],
)
def test_keys_outside_the_schema_parse_to_none(key: str) -> None:
    assert K.parse_key(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "/calico/v1/host/n/workload/k8s/noslash/endpoint/eth0",  # no namespace
        "/calico/v1/host//workload/k8s/a%2fb/endpoint/eth0",  # no node
        "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0",  # CIDR without a prefix length
        "/calico/ipam/v2/host/n/ipv4/block/10.0.0.0-x",
        "/calico/v1/ipam/v4/pool/garbage",
    ],
)
def test_keys_of_a_known_layout_with_bad_parts_are_malformed(key: str) -> None:
    with pytest.raises(K.MalformedKey) as exc:
        K.parse_key(key)
    assert exc.value.key == key
    # The per-kind helpers answer "is this one of those?" and never raise.
    assert K.parse_workload_key(key) is None and K.parse_block_key(key) is None
