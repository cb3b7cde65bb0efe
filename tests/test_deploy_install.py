"""deploy/ beyond typha and felix (issue 14): the CRDs and the custom resources of the install, the
autoscaler's ladder against the measured capacity and typha's rebalancing, the TLS overlay with the
certificates its script makes, install.sh, and the container image (built when a docker daemon is
around). Offline except for the image build."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loadtest.apiserver import ApiError, Store
from loadtest.apiserver.crds import crd_problems
from loadtest.apiserver.schema import STRICT
from loadtest.apiserver.store import Admission
from typha import config as typha_config
from typha.k8s.projection import RESOURCES, project
from typha.rebalance import LOWER_LIMIT, UPPER_LIMIT, connection_target

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CRD_FILE = DEPLOY / "crds" / "calico-crds.yaml"
TLS = DEPLOY / "components" / "tls"
CALICO = "crd.projectcalico.org"

# Measured in docs/benchmarks.md ("The target: 5,000 agents, 150,000 pods, 100 events/s"): one
# replica kept 5,000 agents within the p99 < 1 s target. The ladder keeps every replica at a fifth
# of that even after losing one replica (docs/operations.md, "Sizing").
MEASURED_AGENTS_PER_REPLICA = 5_000
NODES_PER_SURVIVOR = 1_000
SYNCER_TYPES = 2  # felix and bgp: typha's caches, the `syncer types` of the rebalancing target


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crds() -> list[dict[str, Any]]:
    return load(CRD_FILE)


def installed_store() -> Store:
    """An emulator store with the install's CRDs, as a cluster after `kubectl apply -k deploy/crds`."""
    s = Store(require_crds=True)
    for crd in crds():
        s.create("customresourcedefinitions", crd, strategy=True)
    return s


def admit_strict(s: Store, obj: dict[str, Any]) -> dict[str, Any]:
    group, _, version = obj["apiVersion"].rpartition("/")
    rt = next(r for r in s.registry if r.group == group and r.version == version and r.kind == obj["kind"])
    ns = obj["metadata"].get("namespace")
    if ns and s.namespace_object(ns) is None:
        s.create("namespaces", {"metadata": {"name": ns}})
    return s.create_object(rt, copy.deepcopy(obj), strategy=True, admission=Admission(STRICT)).to_dict()


# ---- CRDs ------------------------------------------------------------------------------------


def test_the_crd_file_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("generate_crds", DEPLOY / "crds" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert CRD_FILE.read_text() == module.render(), "run deploy/crds/generate.py"


def test_crds_cover_exactly_the_calico_kinds_typha_reads() -> None:
    served = {(c["spec"]["names"]["plural"], c["spec"]["scope"] == "Namespaced") for c in crds()}
    needed = {(r.plural, r.namespaced) for r in RESOURCES.values() if r.group == CALICO}
    assert served == needed
    for c in crds():
        assert c["spec"]["group"] == CALICO and [v["name"] for v in c["spec"]["versions"]] == ["v1"]
        assert c["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pytypha"  # install.sh waits on it


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.utils.latest_version()])
def test_crds_are_valid_structural_and_acceptable(version: str) -> None:
    for c in crds():
        kubernetes_validate.validate(c, version, strict=True)
        assert crd_problems(c) == [], c["metadata"]["name"]


def test_every_calico_object_of_the_synthetic_cluster_passes_strict_validation() -> None:
    """The schemas declare every field typha's projection reads, as Calico writes them: every custom
    resource the synthetic cluster renders (its generator follows Calico's object shapes) is admitted
    under fieldValidation=Strict, and projects exactly as the object did before admission."""
    from typha.simcluster.cluster import SyntheticCluster

    s = installed_store()
    seen: set[str] = set()
    for resource, obj in SyntheticCluster(nodes=6, pods_per_node=3, seed=3).initial_objects():
        if RESOURCES[resource].group != CALICO:
            continue
        seen.add(resource)
        md = {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "uid", "creationTimestamp")}
        admitted = admit_strict(s, {**obj, "metadata": md})
        assert project(resource, admitted) == project(resource, obj), resource
    assert {"ippools", "ipamblocks", "blockaffinities", "felixconfigurations", "clusterinformations"} <= seen
    assert "globalnetworkpolicies" in seen


def test_misspelt_calico_fields_are_rejected() -> None:
    s = installed_store()
    with pytest.raises(ApiError) as ei:
        admit_strict(
            s, {"apiVersion": f"{CALICO}/v1", "kind": "IPPool", "metadata": {"name": "x"}, "spec": {"cdir": "1"}}
        )
    assert 'unknown field "spec.cdir"' in ei.value.message
    rule = {"action": "Allow", "destination": {"port": [53]}}
    gnp = {
        "apiVersion": f"{CALICO}/v1",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "g"},
        "spec": {"egress": [rule]},
    }
    with pytest.raises(ApiError) as ei:
        admit_strict(s, gnp)
    assert 'unknown field "spec.egress[0].destination.port"' in ei.value.message


def test_the_default_pool_and_the_policy_set_validate_and_project() -> None:
    s = installed_store()
    (pool,) = load(DEPLOY / "base" / "ippool.yaml")
    [(_, value)] = project("ippools", admit_strict(s, pool))
    assert value == {
        "cidr": "192.168.0.0/16",
        "ipipMode": "Never",
        "vxlanMode": "CrossSubnet",
        "natOutgoing": True,
        "disabled": False,
        "disableBGPExport": False,
        "blockSize": 26,
    }
    by_kind = {}
    for doc in load(DEPLOY / "components" / "policy" / "policy.yaml"):
        if doc["apiVersion"].startswith(CALICO):
            doc = admit_strict(s, doc)
        resource = {"GlobalNetworkPolicy": "globalnetworkpolicies", "NetworkPolicy": "networkpolicies"}[doc["kind"]]
        if doc["apiVersion"].startswith(CALICO):
            resource = "calico-networkpolicies" if doc["kind"] == "NetworkPolicy" else resource
        [(_, value)] = project(resource, doc)
        by_kind[doc["metadata"]["name"]] = value
    deny = by_kind["default-deny"]
    assert deny["order"] == 2000.0 and deny["types"] == ["ingress", "egress"] and deny["selector"] == "all()"
    assert {r["protocol"] for r in deny["outboundRules"] if r.get("dstPorts") == [53]} == {"udp", "tcp"}
    # Both namespace policies come before it: Kubernetes' at Calico's fixed 1000, Calico's written so.
    assert by_kind["pytypha"]["order"] == by_kind["pytypha-autoscaler"]["order"] == 1000.0
    assert {p for r in by_kind["pytypha"]["inboundRules"] for p in r.get("dstPorts", [])} >= {5473, 9098, 9093}


# ---- sizing -------------------------------------------------------------------------------------


def ladder() -> list[tuple[int, int]]:
    (cm,) = [d for d in load(DEPLOY / "base" / "autoscaler.yaml") if d["kind"] == "ConfigMap"]
    params = json.loads(cm["data"]["ladder"])
    assert params["coresToReplicas"] == []
    return [tuple(step) for step in params["nodesToReplicas"]]  # type: ignore[misc]


def replicas_for(nodes: int) -> int:
    """cluster-proportional-autoscaler's ladder lookup: the last step at or below ``nodes``."""
    steps = ladder()
    below = [r for n, r in steps if n <= nodes]
    return below[-1] if below else steps[0][1]


def test_ladder_is_well_formed() -> None:
    steps = ladder()
    assert steps[0] == (1, 1)
    assert [n for n, _ in steps] == sorted({n for n, _ in steps})
    assert [r for _, r in steps] == sorted(r for _, r in steps)


@pytest.mark.parametrize("nodes", [1, 2, 3, 10, 100, 500, 1000, 2000, 2001, 3000, 4500, 5000, 5001, 6000])
def test_ladder_follows_the_sizing_rule_and_agrees_with_rebalancing(nodes: int) -> None:
    r = replicas_for(nodes)
    # The rule (docs/operations.md): three replicas from three nodes up, and after losing one replica
    # every survivor carries at most NODES_PER_SURVIVOR nodes' agents.
    assert r == min(nodes, 3) or nodes > 2000
    if r > 1:
        assert math.ceil(nodes / (r - 1)) <= NODES_PER_SURVIVOR or nodes > 6000
    # typha's rebalancing (typha/rebalance.py) gives each replica a target it sheds down to.
    target = connection_target(SYNCER_TYPES, nodes, r)
    # Survivors of a lost replica can take all its agents without shedding them back and forth...
    survivors = max(1, r - 1)
    assert target >= SYNCER_TYPES * nodes / survivors
    # ...and the target stays within what one replica was measured to serve at the latency target.
    assert target <= MEASURED_AGENTS_PER_REPLICA
    assert LOWER_LIMIT <= target <= UPPER_LIMIT


def test_autoscaler_targets_the_typha_deployment_with_least_privilege() -> None:
    docs = load(DEPLOY / "base" / "autoscaler.yaml")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--namespace=pytypha", "--configmap=pytypha-autoscaler", "--target=deployment/pytypha"} <= set(args)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["pytypha-autoscaler"], "verbs": ["get"]},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "resourceNames": ["pytypha"],
            "verbs": ["get", "update"],
        },
    ]
    # The install leaves typha's replica count to the autoscaler: a re-apply must not reset it.
    kust = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    [patch] = kust["patches"]
    assert patch["target"]["name"] == "pytypha" and "path: /spec/replicas" in patch["patch"]


def test_operations_guide_sizing_table_is_the_ladder() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Sizing", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*([\d,]+)(?:\s*-\s*[\d,]+|\+)?\s*\|\s*(\d+)\s*\|", section, re.M)
    table = [(int(n.replace(",", "")), int(r)) for n, r in rows]
    assert table == ladder(), "docs/operations.md's sizing table must list the ladder's steps"


# ---- TLS ---------------------------------------------------------------------------------------


def tls_env(patch: str) -> dict[str, str]:
    (doc,) = load(TLS / patch)
    return {e["name"]: e["value"] for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}


def _known_env(module: Any) -> set[str]:
    return {s.env(module.ENV_PREFIX) for s in module.SETTINGS}


@pytest.mark.parametrize(
    ("patch", "module_name"), [("typha-tls.yaml", "typha.config"), ("felix-tls.yaml", "felix.config")]
)
def test_tls_settings_are_the_programs_settings(patch: str, module_name: str) -> None:
    module = importlib.import_module(module_name)
    env = tls_env(patch)
    known = _known_env(module)
    if not env.keys() & known:
        pytest.skip(f"{module_name} has no TLS settings yet (issue 12): the overlay uses Calico's names {sorted(env)}")
    assert env.keys() <= known, f"not {module_name} settings: {sorted(env.keys() - known)}"


def test_tls_patches_mount_what_their_settings_name() -> None:
    kust = yaml.safe_load((TLS / "kustomization.yaml").read_text())
    generated = {g["name"] for g in kust["secretGenerator"] + kust["configMapGenerator"]}
    for patch in ("typha-tls.yaml", "felix-tls.yaml"):
        (doc,) = load(TLS / patch)
        pod = doc["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v.get("secret", {}).get("secretName") or v["configMap"]["name"] for v in pod["volumes"]}
        assert set(volumes.values()) <= generated
        for name, value in tls_env(patch).items():
            if value.startswith("/"):
                directory = str(Path(value).parent)
                assert directory in mounts, f"{name}={value} is not under a mounted volume"
                key = Path(value).name
                source = volumes[mounts[directory]]
                files = next(
                    g["files"] for g in kust["secretGenerator"] + kust["configMapGenerator"] if g["name"] == source
                )
                assert any(f.split("=")[0] == key for f in files), f"{source} has no {key}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: make-certs.sh needs it")
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(["sh", str(TLS / "make-certs.sh"), "--days", "30", str(out)], check=True, capture_output=True)
    return out


def _subject(cert: dict[str, Any]) -> tuple[str, list[str]]:
    cn = next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")
    return cn, [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]


def test_certificates_from_the_script_complete_a_mutual_handshake_with_the_overlay_names(certs: Path) -> None:
    typha_env, felix_env = tls_env("typha-tls.yaml"), tls_env("felix-tls.yaml")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(certs / "typha.crt", certs / "typha.key")
    server.load_verify_locations(certs / "ca.crt")
    server.verify_mode = ssl.CERT_REQUIRED  # typha requires a client certificate
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # felix checks the CN/URI SAN, not a host name
    client.load_cert_chain(certs / "felix.crt", certs / "felix.key")
    client.load_verify_locations(certs / "ca.crt")

    a, b = socket.socketpair()
    seen: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as tls:
                seen["client"] = tls.getpeercert()
                seen["data"] = tls.recv(1)
        except (ssl.SSLError, OSError) as e:
            seen["error"] = e

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(b) as tls:
        seen["server"] = tls.getpeercert()
        tls.sendall(b"x")
        t.join(10)
    assert "error" not in seen and seen["data"] == b"x", seen
    assert _subject(seen["client"]) == (typha_env["TYPHA_CLIENTCN"], [typha_env["TYPHA_CLIENTURISAN"]])
    cn, uris = _subject(seen["server"])
    assert cn == felix_env["FELIX_TYPHACN"] and felix_env["FELIX_TYPHAURISAN"] in uris

    # A certificate the script did not sign is refused.
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    other.check_hostname = False
    other.load_verify_locations(certs / "typha.crt")  # not the CA
    a, b = socket.socketpair()
    with pytest.raises(ssl.SSLError):
        threading.Thread(target=lambda: _quiet_handshake(server, a), daemon=True).start()
        other.wrap_socket(b)


def _quiet_handshake(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        ctx.wrap_socket(sock, server_side=True).close()
    except (ssl.SSLError, OSError):
        pass


def test_make_certs_reuses_its_ca_and_checks_its_arguments(certs: Path, tmp_path: Path) -> None:
    ca = (certs / "ca.crt").read_bytes()
    subprocess.run(["sh", str(TLS / "make-certs.sh"), str(certs)], check=True, capture_output=True)
    assert (certs / "ca.crt").read_bytes() == ca, "re-issuing must keep the CA everyone trusts"
    assert oct((certs / "ca.key").stat().st_mode & 0o777) == "0o600"
    bad = subprocess.run(
        ["sh", str(TLS / "make-certs.sh"), "--days", "soon", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 64 and "--days must be a whole number" in bad.stderr


# ---- install.sh and the image -------------------------------------------------------------------


def test_install_script_is_valid_sh_and_refuses_bad_arguments(tmp_path: Path) -> None:
    script = DEPLOY / "install.sh"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    out = subprocess.run(["sh", str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: install.sh" in out.stdout
    out = subprocess.run(["sh", str(script), "--frobnicate"], capture_output=True, text=True)
    assert out.returncode == 64 and "unknown option" in out.stderr
    out = subprocess.run(["sh", str(script), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 64 and "no kustomization.yaml" in out.stderr


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return "no docker daemon: " + (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_image_builds_runs_both_programs_and_holds_no_loadtest() -> None:
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)
    tag = "pytypha:test-image"
    build = subprocess.run(
        ["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    try:

        def run(*cmd: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["docker", "run", "--rm", tag, *cmd], capture_output=True, text=True, timeout=120)

        assert run("typha", "--help").returncode == 0
        assert run("felix", "--help").returncode == 0
        probe = run(
            "python",
            "-c",
            "import importlib.util as u; print([m for m in ('loadtest','rich','matplotlib','msgspec','trustme') if u.find_spec(m)])",
        )
        assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr
        assert run("sh", "-c", "command -v loadtest").returncode != 0
        user = run("id", "-u")
        assert user.stdout.strip() == "10001"
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)


def test_the_typha_settings_in_the_tls_overlay_do_not_break_the_base_settings() -> None:
    env = {k: v for k, v in tls_env("typha-tls.yaml").items() if k in _known_env(typha_config)}
    # Whatever of the overlay typha already knows parses (the files themselves are only read at start-up).
    typha_config.load_config([], environ={"TYPHA_DATASTORE": "synthetic", **env})
