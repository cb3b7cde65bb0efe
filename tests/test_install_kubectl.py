"""The real kubectl installs deploy/ and each overlay on the API emulator (issue 14 item 5).

The emulator runs as `loadtest apiserver --require-crds` would for an operator rehearsing the
install: custom resources exist only once their CRDs do, as on a real cluster. Everything goes
through kubectl exactly as the docs tell a user to run it (deploy/install.sh, kubectl apply -k,
diff, get, delete), with its default client-side validation, which on the emulator means
server-side strict field validation through /openapi/v3.

kubectl comes from PATH (the test skips, saying so, without it). Where PATH's kubectl is the
Google Cloud SDK's version dispatcher, the newest versioned kubectl beside it is used as well
for the protobuf creates that kubectl 1.32+ sends.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _kubectl_binaries() -> list[str]:
    found = shutil.which("kubectl")
    if found is None:
        return []
    out = [found]
    real = Path(found).resolve()
    versioned = sorted(
        real.parent.glob("kubectl.1.*"), key=lambda p: int(p.name.rsplit(".", 1)[-1]) if p.name[-1].isdigit() else 0
    )
    if versioned:
        out.append(str(versioned[-1]))
    return out


KUBECTLS = _kubectl_binaries()
if not KUBECTLS:
    pytest.skip("kubectl is not on PATH: the install rehearsal needs the real kubectl", allow_module_level=True)


@dataclass
class Cluster:
    """An emulator process and a kubectl pointed at it (own discovery cache, own kubeconfig)."""

    kubeconfig: Path
    cache: Path
    kubectl: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECTL": f"{self.kubectl} --cache-dir {self.cache}"}

    def run(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [self.kubectl, "--cache-dir", str(self.cache), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=60, input=stdin)
        if check and out.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def sh(self, script: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["sh", str(script), *args], capture_output=True, text=True, env=self.env(), timeout=120)
        if check and out.returncode != 0:
            pytest.fail(f"{script.name} {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def get_json(self, *args: str) -> dict:
        return json.loads(self.run("get", *args, "-o", "json").stdout)


def _start(tmp: Path, kubectl: str) -> Iterator[Cluster]:
    kubeconfig = tmp / "kubeconfig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.apiserver", "--require-crds", "--kubeconfig-out", str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the URL, once it listens and the kubeconfig is written
        assert line.startswith("https://"), proc.stderr.read() if proc.stderr else line
        yield Cluster(kubeconfig, tmp / "cache", kubectl)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from _start(tmp_path, KUBECTLS[0])


def rendered(kustomization: Path, cluster: Cluster) -> list[dict]:
    out = cluster.run("kustomize", str(kustomization))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_install_script_installs_everything_and_kubectl_sees_it(cluster: Cluster, tmp_path: Path) -> None:
    out = cluster.sh(DEPLOY / "install.sh")
    assert "customresourcedefinition.apiextensions.k8s.io/ippools.crd.projectcalico.org created" in out.stdout
    assert "ippool.crd.projectcalico.org/default-ipv4-ippool created" in out.stdout
    docs = rendered(DEPLOY / "crds", cluster) + rendered(DEPLOY, cluster)
    everything = tmp_path / "everything.yaml"
    everything.write_text(yaml.safe_dump_all(docs))

    def live() -> dict[tuple[str, str | None, str], dict]:
        items = cluster.get_json("-f", str(everything))["items"]
        return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in items}

    got = live()
    assert len(got) == len(docs)
    for doc in docs:
        obj = got[(doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])]
        assert (
            obj["metadata"]["uid"]
            and doc["metadata"].get("labels", {}).items() <= obj["metadata"].get("labels", {}).items()
        )

    # kubectl get prints the server's columns (a Table), not only NAME and AGE.
    deploys = cluster.run("get", "deployments", "-n", "pytypha").stdout
    assert re.search(r"^NAME\s+READY\s+UP-TO-DATE\s+AVAILABLE\s+AGE$", deploys, re.M), deploys
    assert re.search(r"^pytypha\s+0/1\s+0\s+0\s+\S+$", deploys, re.M), deploys
    pools = cluster.run("get", "ippools").stdout
    assert re.search(r"^default-ipv4-ippool\s+192\.168\.0\.0/16\s+26\s+CrossSubnet\s+Never\s+true\b", pools, re.M), (
        pools
    )
    svc = cluster.run("get", "service", "pytypha", "-n", "pytypha", "-o", "wide").stdout
    assert re.search(
        r"ClusterIP\s+10\.\d+\.\d+\.\d+\s+<none>\s+5473/TCP\s+\S+\s+app.kubernetes.io/name=pytypha", svc
    ), svc

    # The autoscaler owns typha's replicas: the install leaves them at the server's default.
    assert cluster.get_json("deployment/pytypha", "-n", "pytypha")["spec"]["replicas"] == 1

    # Re-running changes nothing (kubectl may still say "configured" where it always sends a field
    # with patchStrategy replace, as for a PDB's selector: the server's versions tell), and kubectl
    # diff agrees that nothing would change.
    again = cluster.sh(DEPLOY / "install.sh")
    assert " created" not in again.stdout, again.stdout
    versions = {k: o["metadata"]["resourceVersion"] for k, o in got.items()}
    assert {k: o["metadata"]["resourceVersion"] for k, o in live().items()} == versions
    assert cluster.run("diff", "-k", str(DEPLOY), check=False).returncode == 0


def test_plain_apply_on_a_new_cluster_fails_only_for_the_custom_resources(cluster: Cluster) -> None:
    """Why install.sh applies the CRDs first: kubectl maps every kind before creating anything."""
    out = cluster.run("apply", "-k", str(DEPLOY), check=False)
    assert out.returncode != 0 and "ensure CRDs are installed first" in out.stderr, out.stderr
    assert "deployment.apps/pytypha created" in out.stdout
    cluster.run("apply", "-k", str(DEPLOY / "crds"))
    cluster.run("wait", "--for", "condition=Established", "crd", "-l", "app.kubernetes.io/part-of=pytypha")
    assert "ippool.crd.projectcalico.org/default-ipv4-ippool created" in cluster.run("apply", "-k", str(DEPLOY)).stdout


def test_the_policy_overlay(cluster: Cluster) -> None:
    cluster.sh(DEPLOY / "install.sh", str(DEPLOY / "overlays" / "policy"))
    gnp = cluster.get_json("globalnetworkpolicy.crd.projectcalico.org/default-deny")
    assert gnp["spec"]["order"] == 2000 and gnp["spec"]["tier"] == "default"  # the CRD's default
    printed = cluster.run("get", "globalnetworkpolicies").stdout
    assert re.search(r"^default-deny\s+default\s+2000\s+all\(\)", printed, re.M), printed
    assert cluster.get_json("networkpolicy.networking.k8s.io/pytypha", "-n", "pytypha")["spec"]["policyTypes"]
    assert (
        cluster.get_json("networkpolicy.crd.projectcalico.org/pytypha-autoscaler", "-n", "pytypha")["spec"]["order"]
        == 1000
    )


def test_the_tls_overlay_with_certificates_from_the_script(cluster: Cluster, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: make-certs.sh needs it")
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("certs", "__pycache__"))
    subprocess.run(["sh", str(deploy / "components/tls/make-certs.sh")], check=True, capture_output=True, timeout=60)
    cluster.sh(deploy / "install.sh", str(deploy / "overlays" / "tls"))

    secret = cluster.get_json("secret/pytypha-typha-tls", "-n", "pytypha")
    assert secret["type"] == "kubernetes.io/tls"
    certs = deploy / "components/tls/certs"
    assert base64.b64decode(secret["data"]["tls.crt"]) == (certs / "typha.crt").read_bytes()
    ca = cluster.get_json("configmap/pytypha-ca", "-n", "pytypha")
    assert ca["data"]["ca.crt"] == (certs / "ca.crt").read_text()

    typha = cluster.get_json("deployment/pytypha", "-n", "pytypha")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in typha["containers"][0]["env"]}
    assert env["TYPHA_CAFILE"] == "/etc/pytypha/ca/ca.crt" and env["TYPHA_CLIENTCN"] == "pytypha-felix"
    assert env["TYPHA_DATASTORE"] == "kubernetes", "the overlay adds to the base's settings, it does not replace them"
    assert {v["name"] for v in typha["volumes"]} == {"tmp", "ca", "tls"}
    felix = cluster.get_json("daemonset/pyfelix", "-n", "pytypha")["spec"]["template"]["spec"]
    felix_env = {e["name"]: e.get("value") for e in felix["containers"][0]["env"]}
    assert (
        felix_env["FELIX_TYPHACN"] == "pytypha-typha" and felix_env["FELIX_TYPHAKEYFILE"] == "/etc/pyfelix/tls/tls.key"
    )

    # Rotating: new certificates, re-applied, update the Secrets in place (same names).
    subprocess.run(
        ["sh", str(deploy / "components/tls/make-certs.sh"), "--days", "30"], check=True, capture_output=True
    )
    out = cluster.run("apply", "-k", str(deploy / "overlays" / "tls")).stdout
    assert "secret/pytypha-typha-tls configured" in out and "configmap/pytypha-ca unchanged" in out


def test_strict_validation_dry_run_and_diff(cluster: Cluster, tmp_path: Path) -> None:
    cluster.sh(DEPLOY / "install.sh")
    typo = (DEPLOY / "base" / "typha.yaml").read_text().replace("maxUnavailable: 1\n", "maxUnavailabel: 1\n")
    bad = tmp_path / "typo.yaml"
    bad.write_text(typo)
    out = cluster.run("apply", "-f", str(bad), check=False)
    assert out.returncode != 0 and 'strict decoding error: unknown field "spec.maxUnavailabel"' in out.stderr, (
        out.stderr
    )

    changed = tmp_path / "changed.yaml"
    changed.write_text(
        (DEPLOY / "base" / "typha.yaml").read_text().replace("maxUnavailable: 1\n", "maxUnavailable: 2\n")
    )
    diff = cluster.run("diff", "-f", str(changed), check=False)
    assert diff.returncode == 1 and "-  maxUnavailable: 1\n+  maxUnavailable: 2" in diff.stdout, diff.stdout
    cluster.run("apply", "-f", str(changed), "--dry-run=server")
    assert cluster.get_json("pdb/pytypha", "-n", "pytypha")["spec"]["maxUnavailable"] == 1


def test_delete_removes_the_namespace_and_everything_in_it(cluster: Cluster) -> None:
    cluster.sh(DEPLOY / "install.sh")
    out = cluster.run("delete", "-k", str(DEPLOY), "--timeout", "30s")
    assert 'namespace "pytypha" deleted' in out.stdout
    assert cluster.run("get", "namespace", "pytypha", check=False).returncode != 0
    left = cluster.run("get", "deployments,daemonsets,services,configmaps,serviceaccounts", "-A", "-o", "name").stdout
    assert "pytypha" not in left, left
    assert cluster.run("get", "clusterrole", "pytypha", check=False).returncode != 0
    # The CRDs are a separate kustomization and stay (deleting them deletes every Calico object).
    assert cluster.run("get", "crd", "ippools.crd.projectcalico.org", "-o", "name").stdout.strip()


@pytest.mark.skipif(len(KUBECTLS) < 2, reason="no versioned kubectl beside PATH's: PATH's is already tested")
def test_newest_kubectl_protobuf_creates(tmp_path: Path) -> None:
    """kubectl 1.32+ sends `kubectl create <kind>` bodies as protobuf, and does not fall back."""
    for c in _start(tmp_path, KUBECTLS[-1]):
        c.run("create", "namespace", "pb")
        c.run("create", "serviceaccount", "robot", "-n", "pb")
        c.run("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "pb")
        c.run("create", "configmap", "conf", "--from-literal=k=v", "-n", "pb")
        c.run("create", "deployment", "web", "--image=registry.k8s.io/pause:3.9", "--replicas=2", "-n", "pb")
        c.run("create", "role", "r", "--verb=get", "--resource=pods", "-n", "pb")
        c.run("create", "rolebinding", "rb", "--role=r", "--serviceaccount=pb:robot", "-n", "pb")
        svc = c.get_json("service/web", "-n", "pb")
        assert svc["spec"]["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]
        assert svc["spec"]["selector"] == {"app": "web"}
        dep = c.get_json("deployment/web", "-n", "pb")
        assert dep["spec"]["replicas"] == 2
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.k8s.io/pause:3.9"
        rb = c.get_json("rolebinding/rb", "-n", "pb")
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "robot", "namespace": "pb"}]
        assert c.get_json("configmap/conf", "-n", "pb")["data"] == {"k": "v"}
