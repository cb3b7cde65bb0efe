#!/bin/sh
# Installs pytypha in one command: the CRDs first (deploy/crds), then, once the API server serves
# them, the install (deploy/base) or an overlay of it.
#
# Usage: install.sh [--skip-crds] [KUSTOMIZATION_DIR]
#   deploy/install.sh                          typha, felix, the autoscaler and the default IP pool
#   deploy/install.sh deploy/overlays/tls      the same with mutual TLS (run make-certs.sh first)
#   deploy/install.sh deploy/overlays/policy   the same with the example policy set
#   --skip-crds   leave the CRDs alone (for example where Calico's own are installed)
#
# Why two steps: kubectl resolves every object's kind before it creates anything, so one `kubectl
# apply` cannot create a CRD and objects of its kind (the IP pool). If Calico's CRDs are already
# installed (crd.projectcalico.org CRDs without our label), they are kept: they declare every field
# ours do. Re-running is safe. The cluster is kubectl's current context (KUBECONFIG, --context via
# KUBECTL="kubectl --context NAME").
set -eu

here=$(cd "$(dirname "$0")" && pwd)
kubectl=${KUBECTL:-kubectl}
skip_crds=0
target=$here
while [ $# -gt 0 ]; do
    case $1 in
        --skip-crds) skip_crds=1; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "install.sh: unknown option $1 (try --help)" >&2; exit 64 ;;
        *) target=$1; shift ;;
    esac
done
[ -f "$target/kustomization.yaml" ] || { echo "install.sh: $target has no kustomization.yaml" >&2; exit 64; }

if [ "$skip_crds" = 0 ]; then
    owner=$($kubectl get crd ippools.crd.projectcalico.org --ignore-not-found \
        -o 'jsonpath={.metadata.name}/{.metadata.labels.app\.kubernetes\.io/part-of}')
    case $owner in
        "" | */pytypha)
            $kubectl apply -k "$here/crds"
            $kubectl wait --for condition=Established --timeout 60s crd -l app.kubernetes.io/part-of=pytypha
            ;;
        *) echo "install.sh: crd.projectcalico.org CRDs from another install (Calico's) are present; keeping them" ;;
    esac
fi
$kubectl apply -k "$target"
