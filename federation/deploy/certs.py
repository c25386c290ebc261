"""TLS certificates for the SuperLink and authentication keys for SuperNodes.

Everything is made with the ``cryptography`` library: a private CA (the file every site needs
to trust the SuperLink), a server certificate whose subjectAltNames are the names and addresses
the SuperLink is reached at (TLS checks them), and per-site EC key pairs in OpenSSH format, the
form ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read.
Private keys are written owner-only (0600) and never overwritten unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.errors import AllfedError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
NODE_KEY = "node.key"  # the public key is NODE_KEY + ".pub"

PRIVATE, PUBLIC = 0o600, 0o644


@dataclass(frozen=True)
class CertificateFiles:
    """Where ``make_certificates`` put the CA and the server's certificate and key."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def make_certificates(
    out: Path, hosts: Iterable[str], days: int = 825, force: bool = False
) -> CertificateFiles:
    """A CA and a server certificate valid for ``hosts`` (DNS names or IP addresses)."""
    names = _subject_alt_names(hosts)
    files = CertificateFiles(out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY)
    _refuse_overwrite([files.ca_cert, files.ca_key, files.server_cert, files.server_key], force)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "allfed federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    first = names[0].value
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write(files.ca_key, _pem_key(ca_key), PRIVATE)
    _write(files.server_key, _pem_key(server_key), PRIVATE)
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), PUBLIC)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), PUBLIC)
    return files


def make_node_key(out: Path, name: str = NODE_KEY, force: bool = False) -> tuple[Path, Path]:
    """A SuperNode's EC P-384 key pair in OpenSSH format: (private key, public key)."""
    private_path, public_path = out / name, out / f"{name}.pub"
    _refuse_overwrite([private_path, public_path], force)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    out.mkdir(parents=True, exist_ok=True)
    _write(private_path, private, PRIVATE)
    _write(public_path, public + b" allfed-node\n", PUBLIC)
    return private_path, public_path


def _subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if any(c in host for c in " /:@") or host.startswith("."):
                raise AllfedError(f"--host {host!r}: not a DNS name or an IP address") from None
            names.append(x509.DNSName(host))
    if not names:
        raise AllfedError("give at least one --host (the SuperLink's DNS name or IP address)")
    return names


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise AllfedError(f"{', '.join(existing)} already exist; pass --force to replace them")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create the file with its final mode, so a private key is never readable by others."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have narrowed the mode
