"""deploy/: the manifests parse, validate against Kubernetes' schemas, and agree with the code.

Offline and fast: schemas come from the kubernetes-validate package, settings from typha/config.py
(and felix/config.py once it exists). The manifests are the place where a setting's default, a port
and a probe can silently disagree, so every number in them is traced back to a setting here.
"""

from __future__ import annotations

import copy
import functools
import importlib
import re
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from common.settings import Setting, SettingsError, parse_settings
from typha import config as typha_config
from typha.k8s.projection import RESOURCES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
# The built-in kinds of the install (the custom resources are checked in test_deploy_install.py).
MANIFESTS = ("typha.yaml", "felix.yaml", "autoscaler.yaml")

# The oldest Kubernetes the manifests must be valid for (every field they use exists there, e.g.
# topologySpreadConstraints' nodeTaintsPolicy and matchLabelKeys), and the newest that the installed
# kubernetes-validate ships.
K8S_VERSIONS = ("1.30", latest_version())

TYPHA_PREFIX = typha_config.ENV_PREFIX
FELIX_PREFIX = "FELIX"

# Values the downward API would fill in, for parsing env vars that use `valueFrom.fieldRef`.
FIELD_REF_PLACEHOLDERS = {
    "metadata.name": "pod-name-abcde",
    "spec.nodeName": "node-1",
    "status.podIP": "10.0.0.10",
    "status.hostIP": "10.0.0.1",
}


# --------------------------------------------------------------------------------------------
# Loading and looking things up
# --------------------------------------------------------------------------------------------


@functools.cache
def _documents(filename: str) -> tuple[dict[str, Any], ...]:
    with open(BASE / filename, encoding="utf-8") as f:
        return tuple(doc for doc in yaml.safe_load_all(f) if doc is not None)


def documents(filename: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_documents(filename)))


def find(filename: str, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in documents(filename) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(filename: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(filename, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/{filename}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(matches) == 1, f"{workload['kind']} {workload['metadata']['name']}: no single container {name!r}"
    return matches[0]


def container_env(workload: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the program would see it (downward-API fields filled in)."""
    env: dict[str, str] = {}
    namespace = workload["metadata"]["namespace"]
    for var in c.get("env", []):
        name = var["name"]
        assert name not in env, f"env var {name} is set twice"
        if "value" in var:
            env[name] = var["value"]
            continue
        field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field == "metadata.namespace":
            env[name] = namespace
        elif field in FIELD_REF_PLACEHOLDERS:
            env[name] = FIELD_REF_PLACEHOLDERS[field]
        else:
            pytest.fail(f"env var {name}: only `value` and downward-API fieldRefs are expected, got {var}")
    assert not c.get("envFrom"), "envFrom would hide settings from these checks"
    return env


def field_ref(c: dict[str, Any], name: str) -> str | None:
    for var in c.get("env", []):
        if var["name"] == name:
            return var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    return None


def container_port(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container port it reaches."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert named, f"container {c['name']} has no port named {port!r}"
    return named[0]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def setting_value(cfg: Any, name: str) -> Any:
    return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)


def known_env(settings: tuple[Setting, ...], prefix: str) -> dict[str, Setting]:
    return {s.env(prefix): s for s in settings}


# --------------------------------------------------------------------------------------------
# Every manifest: YAML, Kubernetes schemas, packaging
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", MANIFESTS)
def test_manifest_parses(filename: str) -> None:
    docs = documents(filename)
    assert docs, f"deploy/{filename} holds no objects"
    for doc in docs:
        assert isinstance(doc, dict), f"deploy/{filename}: a document is not a mapping: {doc!r}"
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"deploy/{filename}: an object lacks {key}: {doc!r}"
        assert doc["metadata"].get("name"), f"deploy/{filename}: a {doc['kind']} has no name"


def test_objects_are_unique_and_in_one_namespace() -> None:
    seen: set[tuple[str, str | None, str]] = set()
    namespaces = {d["metadata"]["name"] for f in MANIFESTS for d in documents(f) if d["kind"] == "Namespace"}
    assert namespaces == {"pytypha"}
    for filename in MANIFESTS:
        for doc in documents(filename):
            ident = (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
            assert ident not in seen, f"{ident} is defined twice"
            seen.add(ident)
            if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
                assert doc["metadata"].get("namespace") == "pytypha", f"{ident} must be in namespace pytypha"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("filename", MANIFESTS)
def test_manifest_validates_against_kubernetes_schemas(filename: str, version: str) -> None:
    for doc in documents(filename):
        what = f"deploy/{filename}: {doc['kind']} {doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{what} is invalid for Kubernetes {exc.version}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            pytest.fail(f"{what}: {exc.message}")


def test_schema_validation_is_strict() -> None:
    """Guard the guard: a misspelt field and a mistyped value must both be caught."""
    deployment = one("typha.yaml", "Deployment", "pytypha")
    misspelt = copy.deepcopy(deployment)
    container(misspelt, "typha")["livenessProbe"]["httpGet"]["paht"] = "/liveness"
    mistyped = copy.deepcopy(deployment)
    container(mistyped, "typha")["env"][0]["value"] = 5473
    for bad in (misspelt, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_kustomization_applies_the_manifests_with_the_same_image() -> None:
    assert yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"] == ["base"]
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted([*MANIFESTS, "ippool.yaml"])
    images = {
        c["image"].split(":")[0]
        for f in MANIFESTS
        for d in documents(f)
        if d["kind"] in ("Deployment", "DaemonSet")
        for c in d["spec"]["template"]["spec"]["containers"]
        if not c["image"].startswith("registry.k8s.io/")  # the autoscaler's own image
    }
    assert {i["name"] for i in kust["images"]} == images == {"pytypha"}


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_manifest_images_are_the_project_version_and_run_its_commands() -> None:
    project = _pyproject()["project"]
    version, scripts = project["version"], project["scripts"]
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert {i.get("newTag") for i in kust["images"]} == {version}
    for filename, kind, name, cname in (
        ("typha.yaml", "Deployment", "pytypha", "typha"),
        ("felix.yaml", "DaemonSet", "pyfelix", "felix"),
    ):
        c = container(one(filename, kind, name), cname)
        assert c["image"] == f"pytypha:{version}", f"{name}: image tag should be the project version {version}"
        # `args`, not `command`, so the image's tini + entrypoint (which raises the open-files limit) stay.
        assert "command" not in c
        assert c["args"][0] == cname and cname in scripts


def test_dockerfile_copies_every_package_and_the_ignore_file_lets_them_through() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = set()
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied.update(w for w in words[1:-1] if not w.startswith("--"))
    # loadtest/ is deliberately not in the image (tests/test_loadtest_packaging.py checks how).
    packages = {p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]} - {"loadtest"}
    assert packages <= copied, f"the image must copy every package: missing {packages - copied}"
    assert {"pyproject.toml", "README.md", "deploy/entrypoint.sh"} <= copied
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied <= allowed, f"Dockerfile.dockerignore excludes what the Dockerfile copies: {copied - allowed}"
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--", "/usr/local/bin/pytypha-entrypoint"\]$', dockerfile, re.M)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)


@pytest.mark.slow
def test_entrypoint_raises_the_open_files_soft_limit() -> None:
    hard = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True, check=True).stdout.strip()
    if hard == "unlimited" or int(hard) <= 256:
        pytest.skip(f"hard open-files limit here is {hard}: nothing to raise to")
    script = f'ulimit -Sn 256 && exec sh "{DEPLOY / "entrypoint.sh"}" sh -c "ulimit -Sn"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hard
    usage = subprocess.run(["sh", str(DEPLOY / "entrypoint.sh")], capture_output=True, text=True, timeout=10)
    assert usage.returncode == 64 and "usage" in usage.stderr


# --------------------------------------------------------------------------------------------
# Typha
# --------------------------------------------------------------------------------------------


def typha_deployment() -> dict[str, Any]:
    return one("typha.yaml", "Deployment", "pytypha")


def typha_container() -> dict[str, Any]:
    return container(typha_deployment(), "typha")


def typha_env() -> dict[str, str]:
    env = container_env(typha_deployment(), typha_container())
    return {k: v for k, v in env.items() if k.startswith(TYPHA_PREFIX + "_")}


def typha_cfg() -> typha_config.TyphaConfig:
    # load_config is the exact path `typha` takes at start-up: types, checks, choices and cross-checks.
    return typha_config.load_config([], environ=typha_env())


def test_typha_env_vars_are_known_settings() -> None:
    known = known_env(typha_config.SETTINGS, TYPHA_PREFIX)
    c = typha_container()
    for name in container_env(typha_deployment(), c):
        if name.startswith(TYPHA_PREFIX + "_"):
            assert name in known, f"{name} is not a typha setting (known: {', '.join(sorted(known))})"
            if field_ref(c, name):
                assert known[name].type is str, f"{name} comes from the downward API but is not a string setting"


def test_typha_env_values_parse_through_settings() -> None:
    cfg, env = typha_cfg(), typha_env()
    for s in typha_config.SETTINGS:
        if s.env(TYPHA_PREFIX) in env and s.name != "server_id":
            assert getattr(cfg, s.name) == s.type(env[s.env(TYPHA_PREFIX)])


def test_typha_runs_on_the_kubernetes_datastore_with_in_cluster_config() -> None:
    cfg = typha_cfg()
    assert cfg.datastore == "kubernetes"
    assert cfg.kubeconfig == "", "in a pod typha uses its service account (in-cluster config)"
    assert typha_deployment()["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_bad_typha_env_value_is_reported() -> None:
    """Guard the guard: the env built from the manifest really goes through the settings' checks."""
    with pytest.raises(SettingsError, match="TYPHA_DATASTORE='kubernets'"):
        typha_config.load_config([], environ={**typha_env(), "TYPHA_DATASTORE": "kubernets"})


def test_typha_pins_the_settings_its_ports_and_grace_period_depend_on() -> None:
    env = typha_env()
    for name in (
        "TYPHA_PORT",
        "TYPHA_HEALTH_PORT",
        "TYPHA_METRICS_PORT",
        "TYPHA_SHUTDOWN_TIMEOUT",
        "TYPHA_SHUTDOWN_MAX_DROP_INTERVAL",
    ):
        assert name in env, f"{name} should be set explicitly in deploy/base/typha.yaml"


def test_typha_ports_agree_with_settings() -> None:
    cfg, c = typha_cfg(), typha_container()
    assert cfg.health_port and cfg.metrics_port, "health and metrics must be enabled in the manifest"
    assert container_port(c, "calico-typha") == cfg.port
    assert container_port(c, "health") == cfg.health_port
    assert container_port(c, "metrics") == cfg.metrics_port
    assert {p["containerPort"] for p in c["ports"]} == {cfg.port, cfg.health_port, cfg.metrics_port}

    from typha.ops import health_app
    from typha.syncserver import ServerConfig, SyncServer

    routes = {r.canonical for r in health_app(SyncServer({}, ServerConfig()), {}).router.resources()}
    for probe, path in (("livenessProbe", "/liveness"), ("readinessProbe", "/readiness")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in routes
        assert container_port(c, get["port"]) == cfg.health_port
        assert "host" not in get  # typha is not hostNetwork: the kubelet probes the pod IP

    annotations = typha_deployment()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == cfg.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"

    sync = one("typha.yaml", "Service", "pytypha")["spec"]
    assert sync["type"] == "ClusterIP" and sync.get("clusterIP") != "None"
    [port] = sync["ports"]
    assert port["name"] == "calico-typha" and port["port"] == cfg.port
    assert container_port(c, port["targetPort"]) == cfg.port

    metrics = one("typha.yaml", "Service", "pytypha-metrics")["spec"]
    [port] = metrics["ports"]
    assert port["port"] == cfg.metrics_port and container_port(c, port["targetPort"]) == cfg.metrics_port


def test_typha_grace_period_matches_shutdown_timeout() -> None:
    spec = typha_deployment()["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == typha_cfg().shutdown_timeout
    # The drain (95%) has to finish inside the grace period, with time left to exit cleanly.
    assert typha_cfg().drain_seconds < spec["terminationGracePeriodSeconds"]
    # ... and a replica with few agents must not hold them for all of it (Calico's 1 s cap).
    assert 0 < typha_cfg().shutdown_max_drop_interval <= 1.0


def test_typha_rbac_is_exactly_list_watch_on_the_projected_resources() -> None:
    role = one("typha.yaml", "ClusterRole", "pytypha")
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule shape: {rule}"
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    needed = {(r.group, r.plural, v) for r in RESOURCES.values() for v in ("list", "watch")}
    assert granted == needed, f"missing {needed - granted}; extra {granted - needed}"

    sa = typha_deployment()["spec"]["template"]["spec"]["serviceAccountName"]
    binding = one("typha.yaml", "ClusterRoleBinding", "pytypha")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pytypha"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "pytypha"}]
    one("typha.yaml", "ServiceAccount", sa)


def test_typha_may_only_list_its_own_endpointslices() -> None:
    role = one("typha.yaml", "Role", "pytypha")
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}]
    binding = one("typha.yaml", "RoleBinding", "pytypha")
    assert binding["roleRef"]["name"] == "pytypha" and binding["metadata"]["namespace"] == role["metadata"]["namespace"]


def test_typha_deployment_is_spread_hardened_and_sized() -> None:
    dep = typha_deployment()
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selects(spec["selector"]["matchLabels"], labels)
    assert spec["replicas"] >= 3
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}

    assert not pod.get("hostNetwork", False)
    assert pod["enableServiceLinks"] is False
    by_node = [t for t in pod["topologySpreadConstraints"] if t["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node and by_node[0]["whenUnsatisfiable"] == "DoNotSchedule" and by_node[0]["maxSkew"] == 1
    assert all(selects(t["labelSelector"]["matchLabels"], labels) for t in pod["topologySpreadConstraints"])

    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = typha_container()["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc

    resources = typha_container()["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, f"typha needs cpu and memory {kind}"

    pdb = one("typha.yaml", "PodDisruptionBudget", "pytypha")["spec"]
    assert pdb["maxUnavailable"] == 1 and selects(pdb["selector"]["matchLabels"], labels)
    for name in ("pytypha", "pytypha-metrics"):
        assert selects(one("typha.yaml", "Service", name)["spec"]["selector"], labels)


# --------------------------------------------------------------------------------------------
# Felix: the manifest on its own (always), and against felix/config.py (once it exists)
# --------------------------------------------------------------------------------------------


def felix_daemonset() -> dict[str, Any]:
    return one("felix.yaml", "DaemonSet", "pyfelix")


def felix_container() -> dict[str, Any]:
    return container(felix_daemonset(), "felix")


def felix_env() -> dict[str, str]:
    env = container_env(felix_daemonset(), felix_container())
    return {k: v for k, v in env.items() if k.startswith(FELIX_PREFIX + "_")}


def test_felix_daemonset_runs_on_every_node_with_the_host_network() -> None:
    ds = felix_daemonset()
    pod, labels = ds["spec"]["template"]["spec"], ds["spec"]["template"]["metadata"]["labels"]
    assert selects(ds["spec"]["selector"]["matchLabels"], labels)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["enableServiceLinks"] is False
    assert {"operator": "Exists"} in pod["tolerations"], "felix must tolerate every taint"
    c = felix_container()
    assert c["securityContext"]["privileged"] is True and c["securityContext"]["runAsUser"] == 0
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/lib/modules"]["readOnly"] is True
    assert volumes[mounts["/lib/modules"]["name"]]["hostPath"]["path"] == "/lib/modules"
    assert not mounts["/run/xtables.lock"].get("readOnly", False)
    assert volumes[mounts["/run/xtables.lock"]["name"]]["hostPath"] == {
        "path": "/run/xtables.lock",
        "type": "FileOrCreate",
    }


def test_felix_finds_typha_through_the_service() -> None:
    c, env = felix_container(), felix_env()
    service = one("typha.yaml", "Service", "pytypha")
    assert field_ref(c, "FELIX_NODENAME") == "spec.nodeName"
    assert env["FELIX_TYPHA_K8S_SERVICE_NAME"] == service["metadata"]["name"]
    assert env["FELIX_TYPHA_K8S_NAMESPACE"] == service["metadata"]["namespace"]


def test_felix_probes_and_ports_are_consistent() -> None:
    c, env = felix_container(), felix_env()
    health, metrics = container_port(c, "felix-health"), container_port(c, "felix-metrics")
    assert (health, metrics) == (int(env["FELIX_HEALTH_PORT"]), int(env["FELIX_METRICS_PORT"]))
    for probe, path in (("livenessProbe", "/liveness"), ("readinessProbe", "/readiness")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and container_port(c, get["port"]) == health
        assert get["host"] == "127.0.0.1"
    annotations = felix_daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == metrics
    typha_ports = {p["containerPort"] for p in typha_container()["ports"]}
    assert not typha_ports & {health, metrics}


def test_felix_rbac_is_only_reading_typha_endpointslices() -> None:
    assert not find("felix.yaml", "ClusterRole") and not find("felix.yaml", "ClusterRoleBinding")
    namespace = one("typha.yaml", "Service", "pytypha")["metadata"]["namespace"]
    role = one("felix.yaml", "Role", "pyfelix")
    assert role["metadata"]["namespace"] == namespace
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}]
    sa = felix_daemonset()["spec"]["template"]["spec"]["serviceAccountName"]
    binding = one("felix.yaml", "RoleBinding", "pyfelix")
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pyfelix"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": felix_daemonset()["metadata"]["namespace"]}
    ]
    one("felix.yaml", "ServiceAccount", sa)


@pytest.fixture
def felix_config() -> Any:
    if not (ROOT / "felix" / "config.py").exists():
        pytest.skip("felix/config.py does not exist yet: FELIX_* settings are checked once it does")
    module = importlib.import_module("felix.config")
    if not isinstance(getattr(module, "SETTINGS", None), tuple | list):
        pytest.skip("felix/config.py defines no SETTINGS yet: FELIX_* settings are checked once it does")
    return module


def _felix_settings(module: Any) -> tuple[str, dict[str, Setting]]:
    prefix = getattr(module, "ENV_PREFIX", FELIX_PREFIX)
    assert prefix == FELIX_PREFIX, f"felix/config.py ENV_PREFIX is {prefix!r}; the manifest uses {FELIX_PREFIX}_*"
    return prefix, known_env(tuple(module.SETTINGS), prefix)


def _felix_cfg(module: Any) -> Any:
    env = felix_env()
    if hasattr(module, "load_config"):
        return module.load_config([], environ=env)
    return parse_settings(tuple(module.SETTINGS), FELIX_PREFIX, [], env)


def test_felix_env_vars_are_known_settings(felix_config: Any) -> None:
    _, known = _felix_settings(felix_config)
    c = felix_container()
    for name in felix_env():
        assert name in known, (
            f"{name} is not a felix setting (known: {', '.join(sorted(known))}): align deploy/base/felix.yaml"
        )
        if field_ref(c, name):
            assert known[name].type is str, f"{name} comes from the downward API but is not a string setting"


def test_felix_env_values_parse_through_settings(felix_config: Any) -> None:
    _felix_cfg(felix_config)  # raises SettingsError naming the variable on a bad value


def test_felix_ports_agree_with_settings(felix_config: Any) -> None:
    cfg, c = _felix_cfg(felix_config), felix_container()
    _, known = _felix_settings(felix_config)
    names = {s.name for s in known.values()}
    assert {"health_port", "metrics_port"} <= names, "felix settings should include health_port and metrics_port"
    assert container_port(c, "felix-health") == setting_value(cfg, "health_port")
    assert container_port(c, "felix-metrics") == setting_value(cfg, "metrics_port")
    if "health_host" in names:
        # The probes go to 127.0.0.1 on the node: felix must listen there or on every address.
        assert setting_value(cfg, "health_host") in ("127.0.0.1", "localhost", "0.0.0.0", "::", "")
    if "shutdown_timeout" in names:
        grace = felix_daemonset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= setting_value(cfg, "shutdown_timeout")
