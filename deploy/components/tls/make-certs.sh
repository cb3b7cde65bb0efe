#!/bin/sh
# Creates the certificates for mutual TLS between typha and felix, in the files the tls component
# reads (deploy/components/tls/certs/ unless DIR is given):
#
#   ca.crt ca.key        a private CA, made once and reused (ca.key never goes into the cluster)
#   typha.crt typha.key  typha's server certificate: CN pytypha-typha, URI SAN .../sa/pytypha
#   felix.crt felix.key  felix's client certificate: CN pytypha-felix, URI SAN .../sa/pyfelix
#
# Usage: make-certs.sh [--days N] [--new-ca] [DIR]
#   --days N   validity of typha's and felix's certificates (default 365); the CA gets ten years
#   --new-ca   replace an existing CA (every certificate is then re-issued; roll typha and felix
#              together, since each only trusts the CA it has)
#
# Run it again before the certificates expire: it re-issues typha's and felix's certificates from the
# same CA, and re-applying the overlay updates the Secrets in place (docs/operations.md, "TLS").
# The names must match the overlay's TYPHA_CLIENTCN/TYPHA_CLIENTURISAN and FELIX_TYPHACN/
# FELIX_TYPHAURISAN; tests/test_deploy_install.py checks that they do. Needs openssl 1.1.1 or newer.
set -eu

days=365
new_ca=0
dir=$(cd "$(dirname "$0")" && pwd)/certs
while [ $# -gt 0 ]; do
    case $1 in
        --days) days=${2:?--days needs a number}; shift 2 ;;
        --new-ca) new_ca=1; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "make-certs.sh: unknown option $1 (try --help)" >&2; exit 64 ;;
        *) dir=$1; shift ;;
    esac
done
case $days in ''|*[!0-9]*) echo "make-certs.sh: --days must be a whole number, got '$days'" >&2; exit 64 ;; esac
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is not installed" >&2; exit 69; }

SPIFFE=spiffe://cluster.local/ns/pytypha/sa
mkdir -p "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ "$new_ca" = 1 ] || [ ! -s "$dir/ca.key" ] || [ ! -s "$dir/ca.crt" ]; then
    openssl req -x509 -new -nodes -sha256 -days 3650 \
        -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -subj "/CN=pytypha-ca" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    echo "make-certs.sh: new CA in $dir/ca.crt"
fi

# issue NAME CN USAGE SAN
issue() {
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
        "$3" "$4" >"$tmp/$1.ext"
    openssl req -new -nodes -sha256 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$dir/$1.key" -out "$tmp/$1.csr" -subj "/CN=$2" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    openssl x509 -req -sha256 -days "$days" -in "$tmp/$1.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/$1.ext" -out "$dir/$1.crt" 2>"$tmp/err" \
        || { cat "$tmp/err" >&2; exit 1; }
    echo "make-certs.sh: $dir/$1.crt (CN $2, valid $days days)"
}

issue typha pytypha-typha serverAuth \
    "URI:$SPIFFE/pytypha,DNS:pytypha.pytypha.svc,DNS:pytypha.pytypha.svc.cluster.local"
issue felix pytypha-felix clientAuth "URI:$SPIFFE/pyfelix"
chmod 0644 "$dir/ca.crt" "$dir/typha.crt" "$dir/felix.crt"
