"""A small certificate authority for one cluster (`orch up`, `orch pki`).

<dir>/ca.crt, ca.key           the cluster's CA (EC P-256, 10 years): the gRPC hops
<dir>/<name>.crt, <name>.key   one per component, signed by the CA, common name
                               and server name as orch/identity.py defines them
<dir>/etcd/ca.crt, ca.key      etcd's own CA: only what it signs may talk to etcd
<dir>/etcd/<name>.crt, .key    etcd members (server and peer), and each
                               scheduler's client certificate

etcd has its own CA because etcd trusts every certificate of the CA it is
given, with no roles: on the cluster's CA, every node's and viewer's
certificate would open etcd, and so all of the cluster.

The directories are 0700 and keys 0600, written atomically and synced; a
directory owned by another user is refused (it could read the keys). Issuing
again keeps a certificate that is still what was asked for (same CA, names
and usage, valid for another 30 days) and replaces any other: a new CA
reissues every leaf.

For a cluster of several machines, one directory on a trusted machine holds
both CAs, and `bundle` copies to a directory for each machine only what that
machine needs: both CA certificates and its own certificates and keys, never
a CA key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orch.files import write_atomic
from orch.identity import IdentityError, Role, identity_for, server_name

__all__ = [
    "ETCD_DIR",
    "Leaf",
    "PkiError",
    "bundle",
    "ensure_ca",
    "etcd_leaf",
    "existing_identity",
    "issue",
    "role_leaf",
]

ETCD_DIR = "etcd"
_CA_DAYS = 3650
_CERT_DAYS = 825  # what browsers and most CAs accept for a leaf
_RENEW_DAYS = 30  # a leaf closer than this to its end is reissued
_PUBLIC = 0o644
_PRIVATE = 0o600


class PkiError(Exception):
    """The PKI directory cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Leaf:
    """What a certificate must say: its subject, its names, and what it may be used for."""

    common_name: str
    hosts: tuple[str, ...] = ()  # subjectAltNames: IP addresses or DNS names
    server: bool = False  # serverAuth as well as clientAuth


def role_leaf(role: Role, name: str, hosts: Sequence[str] = ()) -> Leaf:
    """A certificate of the cluster's CA: schedulers and nodes serve and carry their server name."""
    try:
        identity = identity_for(role, name)
    except IdentityError as e:
        raise PkiError(str(e)) from None
    if role in (Role.SCHEDULER, Role.NODE):
        return Leaf(identity, (server_name(identity), *hosts), server=True)
    return Leaf(identity)  # people and tools are only clients


def etcd_leaf(name: str, hosts: Sequence[str] = (), member: bool = False) -> Leaf:
    """A certificate of etcd's CA: a member (serves clients and peers) or a client (a scheduler)."""
    return Leaf(f"etcd:{name}" if member else name, tuple(hosts), server=member)


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise PkiError(f"{directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise PkiError(f"{directory} belongs to uid {st.st_uid}, not to us: it could read the keys; remove it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orch"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def ensure_ca(directory: Path, name: str = "orch CA") -> bool:
    """Create ca.crt/ca.key in directory unless they exist; True if a new CA was made."""
    _private_dir(directory)
    if (directory / "ca.crt").exists() and (directory / "ca.key").exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(key, hashes.SHA256())
    )
    # The key first: a crash in between leaves no certificate without its key.
    write_atomic(directory / "ca.key", _key_pem(key), mode=_PRIVATE)
    write_atomic(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), mode=_PUBLIC)
    return True


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _usages(leaf: Leaf) -> list[x509.ObjectIdentifier]:
    return [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH][0 if leaf.server else 1 :]


def _still_good(crt: Path, key: Path, ca: x509.Certificate, leaf: Leaf, now: datetime.datetime) -> bool:
    """The certificate is the CA's, matches the key, says what leaf says, and stays valid a while."""
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        cert.verify_directly_issued_by(ca)
        if serialization.load_pem_private_key(key.read_bytes(), password=None).public_key() != cert.public_key():
            return False
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value if leaf.hosts else None
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        cert.subject == _name(leaf.common_name)
        and (sans is None or set(sans) == set(_general_names(leaf.hosts)))
        and set(usage) == set(_usages(leaf))
        and cert.not_valid_after_utc - now > datetime.timedelta(days=_RENEW_DAYS)
    )


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    except (OSError, ValueError) as e:
        raise PkiError(f"the CA in {directory}: {e}; run `orch pki init {directory}`") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory / 'ca.key'}: not an EC key")
    return ca_key, ca_cert


def existing_identity(directory: Path, file_name: str) -> str | None:
    """The common name of <file_name>.crt, if there is one."""
    try:
        cert = x509.load_pem_x509_certificate((directory / f"{file_name}.crt").read_bytes())
    except (OSError, ValueError):
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def issue(directory: Path, file_name: str, leaf: Leaf) -> bool:
    """<file_name>.crt/.key signed by the CA in directory; True if (re)issued, False if kept."""
    _private_dir(directory)
    ca_key, ca_cert = _load_ca(directory)
    now = datetime.datetime.now(datetime.UTC)
    crt, key_path = directory / f"{file_name}.crt", directory / f"{file_name}.key"
    if _still_good(crt, key_path, ca_cert, leaf, now):
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(leaf.common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(_usages(leaf)), critical=False)
    )
    if leaf.hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_general_names(leaf.hosts)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_atomic(key_path, _key_pem(key), mode=_PRIVATE)
    write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM), mode=_PUBLIC)
    return True


# -- `orch pki init|issue`, and what `orch up` issues ------------------------------------------


def init(directory: Path) -> list[Path]:
    """Both CAs; the CA files made now (none if they existed)."""
    made = []
    for where, name in ((directory, "orch CA"), (directory / ETCD_DIR, "orch etcd CA")):
        if ensure_ca(where, name):
            made.append(where / "ca.crt")
    return made


def issue_for(directory: Path, role: str, name: str, hosts: Sequence[str], replace: bool = False) -> list[Path]:
    """`orch pki issue DIR ROLE NAME --host H...`: the certificates ROLE needs; those (re)issued.

    A scheduler gets one of the cluster's CA (it serves agents and the CLI) and an etcd client
    certificate; an etcd member one of etcd's CA. <NAME>.crt already holding another identity
    is refused rather than replaced (`viewer node-0` must not overwrite node node-0's), unless
    `replace` (`orch up`, which owns its directory)."""
    if role == "etcd":
        wanted = [(directory / ETCD_DIR, etcd_leaf(name, hosts, member=True))]
    else:
        wanted = [(directory, role_leaf(Role(role), name, hosts))]
        if role == "scheduler":
            wanted.append((directory / ETCD_DIR, etcd_leaf(name)))
    issued = []
    for where, leaf in wanted:
        held = existing_identity(where, name)
        if held is not None and held != leaf.common_name and not replace:
            raise PkiError(f'{where / name}.crt is "{held}", not "{leaf.common_name}": choose another NAME')
        if not (where / "ca.crt").exists():
            raise PkiError(f"no CA in {where}: run `orch pki init {directory}` first")
        if issue(where, name, leaf):
            issued.append(where / f"{name}.crt")
    return issued


def bundle(directory: Path, out: Path, names: Sequence[str]) -> list[Path]:
    """`orch pki bundle DIR OUT NAME...`: a machine's own files, in DIR's layout: ca.crt,
    etcd/ca.crt, and <NAME>.crt/.key from DIR and DIR/etcd for each NAME (a node, its
    scheduler, its etcd member). CA keys never leave DIR. Returns the files written."""
    wanted: list[tuple[Path, Path, int]] = []
    for where, to in ((directory, out), (directory / ETCD_DIR, out / ETCD_DIR)):
        if not (where / "ca.crt").exists():
            raise PkiError(f"no CA in {where}: run `orch pki init {directory}` first")
        wanted.append((where / "ca.crt", to / "ca.crt", _PUBLIC))
    for name in names:
        if name == "ca":
            raise PkiError("the CA keys stay in the PKI directory: bundle the certificates' names only")
        found = [(where, to) for where, to in ((directory, out), (directory / ETCD_DIR, out / ETCD_DIR))
                 if (where / f"{name}.crt").exists()]  # fmt: skip
        if not found:
            raise PkiError(f"no certificate {name}.crt in {directory} or {directory / ETCD_DIR}: issue it first")
        for where, to in found:
            wanted += [(where / f"{name}.crt", to / f"{name}.crt", _PUBLIC),
                       (where / f"{name}.key", to / f"{name}.key", _PRIVATE)]  # fmt: skip
    for source, target, mode in wanted:
        _private_dir(target.parent)
        write_atomic(target, source.read_bytes(), mode=mode)
    return [target for _, target, _ in wanted]
