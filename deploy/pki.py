"""The federation's keys and certificates: its CA, the coordinator's TLS certificate and
the clinics' SuperNode authentication keys (EC P-384 throughout, via ``cryptography``).

Everything here is made in memory and returned as PEM/OpenSSH bytes; where it is written
and with which permission bits is provisioning's decision, so that no key is written twice
or by two different rules. Private keys are unencrypted because Flower reads them without a
passphrase: their file mode (0600) is what protects them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "FederationCredentials",
    "KeyAndCertificate",
    "NodeKey",
    "issue_federation_credentials",
    "new_node_key",
    "ssh_key_fingerprint",
]

CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=825)  # the limit Apple platforms enforce on TLS server certs
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class KeyAndCertificate:
    """A private key (PKCS#8 PEM) and the certificate of its public half (PEM)."""

    key_pem: bytes
    certificate_pem: bytes


@dataclass(frozen=True)
class FederationCredentials:
    """The federation's CA and the coordinator's TLS identity, which the CA signed."""

    ca: KeyAndCertificate
    server: KeyAndCertificate


@dataclass(frozen=True)
class NodeKey:
    """A clinic's SuperNode authentication key pair, in the OpenSSH encodings Flower reads."""

    private_openssh: bytes
    public_line: str  # "ecdsa-sha2-nistp384 AAAA… comment\n", as `flwr supernode register` takes

    @property
    def fingerprint(self) -> str:
        return ssh_key_fingerprint(self.public_line.encode("ascii"))


def issue_federation_credentials(
    federation: str,
    server_names: Sequence[str],
    ip_addresses: Sequence[IPv4Address | IPv6Address],
    now: datetime,
) -> FederationCredentials:
    """A new CA for ``federation`` and a server certificate it signed for the coordinator,
    valid for every DNS name and IP address given (each one a subject alternative name)."""
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _common_name(f"OralFed CA {federation}")
    ca_cert = (
        _certificate_builder(ca_name, ca_name, ca_key.public_key(), now, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(host) for host in server_names]
    alt_names += [x509.IPAddress(address) for address in ip_addresses]
    server_subject = _common_name(str((*server_names, *ip_addresses)[0]))
    server_cert = (
        _certificate_builder(server_subject, ca_name, server_key.public_key(), now, SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return FederationCredentials(
        ca=KeyAndCertificate(_pem_private(ca_key), _pem_certificate(ca_cert)),
        server=KeyAndCertificate(_pem_private(server_key), _pem_certificate(server_cert)),
    )


def new_node_key(comment: str) -> NodeKey:
    """A fresh SuperNode key pair; ``comment`` ends the public line (who the key is for)."""
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return NodeKey(private, f"{public.decode('ascii')} {comment}\n")


def ssh_key_fingerprint(public_openssh: bytes) -> str:
    """OpenSSH-style ``SHA256:…`` fingerprint of a public key, as ``ssh-keygen -l`` prints:
    an operator can compare it with the clinic's own ``node.key.pub`` by eye."""
    blob = base64.b64decode(public_openssh.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def _common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _certificate_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    validity: timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_certificate(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
