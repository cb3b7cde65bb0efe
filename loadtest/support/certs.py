"""Certificates for typha and its agents: a CA and leaf certificates named by CN and/or URI SAN.

Design note
-----------
Tests, benchmarks and the demo need real certificates in every shape the TLS checks distinguish: the
right CA or another, a Common Name or a URI SAN, valid, expired or not yet valid. trustme makes
hostname certificates but no URI SANs or chosen Common Names, so this uses `cryptography` (which
trustme is built on) directly. Keys are ECDSA P-256: a handshake signs with the server's key once,
and P-256 signs in tens of microseconds where RSA-2048 takes about a millisecond, which matters when
thousands of agents reconnect at once. `write_cluster` writes the files a cluster needs, in the
layout docs/security.md describes.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Leaf:
    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        """Write both files, the key readable by its owner only; each replaced atomically."""
        _write(cert_path, self.cert_pem, 0o644)
        _write(key_path, self.key_pem, 0o600)


def _write(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, p)


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates for typha and its agents."""

    def __init__(self, name: str = "pytypha CA", days: int = 3650) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + days * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: str | os.PathLike[str]) -> None:
        _write(path, self.cert_pem, 0o644)

    def issue(
        self,
        cn: str = "",
        uri_san: str = "",
        *,
        dns: tuple[str, ...] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Leaf:
        """A certificate (for client and server use) with Common Name `cn` and/or URI SAN `uri_san`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 365 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        if uri_san:
            names.append(x509.UniformResourceIdentifier(uri_san))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=not cn)
        cert = builder.sign(self._key, hashes.SHA256())
        return Leaf(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class ClusterCerts:
    """Paths of a cluster's TLS files (see `write_cluster`) and the identities in them."""

    ca: str
    typha_cert: str
    typha_key: str
    felix_cert: str
    felix_key: str
    typha_cn: str
    felix_cn: str

    def typha_env(self) -> dict[str, str]:
        return {
            "TYPHA_CAFILE": self.ca,
            "TYPHA_SERVERCERTFILE": self.typha_cert,
            "TYPHA_SERVERKEYFILE": self.typha_key,
            "TYPHA_CLIENTCN": self.felix_cn,
        }

    def felix_env(self) -> dict[str, str]:
        return {
            "FELIX_TYPHACAFILE": self.ca,
            "FELIX_TYPHACERTFILE": self.felix_cert,
            "FELIX_TYPHAKEYFILE": self.felix_key,
            "FELIX_TYPHACN": self.typha_cn,
        }


def write_cluster(
    directory: str | os.PathLike[str], typha_cn: str = "typha-server", felix_cn: str = "typha-client"
) -> ClusterCerts:
    """A CA, typha's certificate and the agents' certificate (Calico's default names), written to `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority()
    ca.write(d / "ca.crt")
    ca.issue(typha_cn).write(d / "typha.crt", d / "typha.key")
    ca.issue(felix_cn).write(d / "felix.crt", d / "felix.key")
    return ClusterCerts(
        str(d / "ca.crt"),
        str(d / "typha.crt"),
        str(d / "typha.key"),
        str(d / "felix.crt"),
        str(d / "felix.key"),
        typha_cn,
        felix_cn,
    )
