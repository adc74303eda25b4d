"""The secrets of the compose deployment, made on first start so that none is in the repository.

``docker compose up`` runs this once (the ``secrets`` service) before anything else. It
writes into one directory per volume, and each container mounts only its own:

- ``broker/``: the bundled Kafka broker's TLS key and certificate (a PKCS#12 keystore and
  its password), the CA certificate, and the SCRAM-SHA-512 users with their passwords;
- ``postgres/``: the database password (PostgreSQL's ``POSTGRES_PASSWORD_FILE``);
- ``<service>/`` (and ``admin/`` for the topic set-up): the CA certificate, the service's
  Kafka password, the database URL, and what only that service may hold: the trainer the
  artifact signing key, serving and the monitor its public key and the request-id secret.

A file named after a setting (``DRIFTLOOP_KAFKA_SASL_PASSWORD``) holds that setting's
value; compose's entrypoint exports it unless the environment already sets it.

Running it again keeps every secret that exists and makes only what is missing. The CA's
private key is never stored: it signs the broker's certificate and is dropped, so nobody
can mint another certificate the services would trust. Losing the broker's files makes a
new CA, and the CA certificate is then copied to every service again.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from libs.common.signing import generate_keys

SERVICES = ("ingest", "trainer", "registry", "serving", "monitor")
#: The topic set-up (``kafka-init``) logs in as this user; the services never do.
ADMIN = "admin"
#: Kafka user of each service (and of the set-up): ``driftloop-<name>``.
USER_PREFIX = "driftloop-"
#: Names the broker's certificate is valid for: the compose service name, and localhost for checks inside it.
BROKER_NAMES = ("kafka", "localhost")
CERTIFICATE_DAYS = 3 * 365
PASSWORD = "DRIFTLOOP_KAFKA_SASL_PASSWORD"
DATABASE_URL = "DRIFTLOOP_DATABASE_URL"
#: The database compose's PostgreSQL creates (user and database name) and where it answers.
DATABASE = "driftloop"
DATABASE_HOST = "postgres:5432"
REQUEST_ID_SECRETS = {
    "serving": "DRIFTLOOP_SERVING_REQUEST_ID_SECRET",
    "monitor": "DRIFTLOOP_MONITOR_REQUEST_ID_SECRET",
}
#: Who verifies artifact signatures (gets the public key); only the trainer gets the private key.
VERIFIERS = ("serving", "monitor")


def ensure(root: Path) -> dict[str, list[str]]:
    """Make every missing secret under ``root``; return the files of each directory (for the log)."""
    clients = (*SERVICES, ADMIN)
    for name in (*clients, "broker", "postgres"):
        (root / name).mkdir(parents=True, exist_ok=True)
    broker = root / "broker"
    ca_pem = _ensure_tls(broker)
    users = []
    for name in clients:
        directory = root / name
        _write(directory / "ca.crt", ca_pem, 0o644)
        password = _keep_or_make(directory / PASSWORD, lambda: secrets.token_urlsafe(32))
        users.append(f"{USER_PREFIX}{name} {password}")
    # Readable by PostgreSQL's own user; only the postgres container mounts this volume.
    database = _keep_or_make(root / "postgres" / "password", lambda: secrets.token_urlsafe(32), mode=0o644)
    for name in SERVICES:
        url = f"postgresql://{DATABASE}:{database}@{DATABASE_HOST}/{DATABASE}"
        _write(root / name / DATABASE_URL, url.encode(), 0o600)
    # The broker registers these at start; one "user password" per line (passwords are URL-safe: no spaces).
    _write(broker / "scram-users", ("\n".join(users) + "\n").encode(), 0o644)
    request_id = _keep_or_make(root / "serving" / REQUEST_ID_SECRETS["serving"], lambda: secrets.token_hex(32))
    _write(root / "monitor" / REQUEST_ID_SECRETS["monitor"], request_id.encode(), 0o600)
    public = _signing_public_key(root / "trainer")
    for name in VERIFIERS:
        _write(root / name / "signing.pub", public, 0o644)
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()}


def _ensure_tls(broker: Path) -> bytes:
    """The broker's keystore and the CA certificate, made together when either is missing; the CA's PEM."""
    keystore, password_file, ca_file = broker / "keystore.p12", broker / "keystore.password", broker / "ca.crt"
    if keystore.exists() and password_file.exists() and ca_file.exists():
        return ca_file.read_bytes()
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "driftloop compose Kafka CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in BROKER_NAMES]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    certificate = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_NAMES[0])]), ca_name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    password = secrets.token_urlsafe(24)
    encryption = serialization.BestAvailableEncryption(password.encode())
    stored = pkcs12.serialize_key_and_certificates(b"kafka", key, certificate, [ca], encryption)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    # Readable by the broker's own user (another uid than this one's); only the broker mounts this volume.
    _write(keystore, stored, 0o644)
    _write(password_file, password.encode(), 0o644)
    _write(ca_file, ca_pem, 0o644)
    return ca_pem


def _signing_public_key(trainer: Path) -> bytes:
    """The artifact signing key in the trainer's directory (made if missing); its public key, PEM."""
    private_path = trainer / "signing.key"
    if not private_path.exists():
        _, public_path = generate_keys(trainer)
        public = public_path.read_bytes()
        public_path.unlink()  # the trainer signs; the verifiers get the public key in their own volumes
        return public
    private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of containers differ a little
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _keep_or_make(path: Path, make: Callable[[], str], mode: int = 0o600) -> str:
    """The secret in ``path``, or a new one from ``make()`` written there (owner-only by default)."""
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    value = make()
    _write(path, value.encode(), mode)
    return value


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` so that it is never readable by more than ``mode`` allows, even for a moment."""
    path.touch(mode=mode)
    path.chmod(mode)
    path.write_bytes(data)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="directory holding one sub-directory per volume")
    made = ensure(parser.parse_args(argv).root)
    for directory, files in made.items():
        print(f"{directory}: {', '.join(files)}")  # names only, never a value


if __name__ == "__main__":
    main()
