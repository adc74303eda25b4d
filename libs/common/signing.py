"""Artifact signatures: the trainer signs each artifact's digest, loaders verify it.

The sha256 in an :class:`ArtifactRef` proves only that the bytes are the ones
the reference names; whoever can write the store and produce an event can name
any bytes. So the trainer signs ``sha256`` with an Ed25519 private key that
only it holds, and serving and the monitor refuse any artifact (skops model,
ONNX graph, reference profile) whose reference carries no valid signature by a
key they accept, before reading a byte of it.

Ed25519 rather than an HMAC: with an HMAC every verifier holds the secret that
signs, so a compromised serving replica could mint artifacts; with Ed25519 the
verifiers hold public keys only.

Keys are identified by the first 16 hex digits of the SHA-256 of the raw public
key. Verifiers accept a *set* of public keys, which is how keys rotate: add the
new public key to every verifier, switch the trainer to the new private key,
and drop the old public key once no served version is signed with it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.artifacts import ArtifactStore
from libs.common.errors import ArtifactCorrupted, ArtifactError
from libs.common.events import ArtifactRef, ArtifactSignature

log = logging.getLogger(__name__)

_CONTEXT = b"driftloop-artifact-v1:"


class SigningSettings(BaseSettings):
    """Artifact signing keys (``DRIFTLOOP_SIGNING_*``)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_SIGNING_", extra="ignore")

    private_key: str | None = None
    """Path of the trainer's Ed25519 private key (PEM, PKCS#8); only the trainer sets it."""
    public_keys: list[str] = Field(default_factory=list)
    """Paths of the accepted public keys (PEM); several during a key rotation."""
    generate: bool = False
    """Create the key pair (``signing.key`` and ``signing.pub`` in ``private_key``'s directory) if it is missing."""


class ArtifactUnverified(ArtifactError):
    """An artifact reference with no signature, or one no accepted key made."""

    status_code = 422
    code = "artifact_unverified"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(directory: Path) -> tuple[Path, Path]:
    """A new key pair in ``directory``: ``signing.key`` (0600) and ``signing.pub``; kept if present."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / "signing.key", directory / "signing.pub"
    if private_path.exists() and public_path.exists():
        return private_path, public_path
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.touch(mode=0o600)
    private_path.write_bytes(pem)
    private_path.chmod(0o600)
    public_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def _read_public_keys(paths: Iterable[str]) -> list[Ed25519PublicKey]:
    keys = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("public key %s not readable (%s); artifacts signed with it are refused", path, exc)
            continue
        if not isinstance(key, Ed25519PublicKey):
            raise ArtifactError(f"{path} is not an Ed25519 public key")
        keys.append(key)
    return keys


class Signer:
    """Signs artifact digests with the trainer's private key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.key_id = key_id(private.public_key())

    @classmethod
    def from_settings(cls, settings: SigningSettings) -> Signer | None:
        if not settings.private_key:
            return None
        path = Path(settings.private_key)
        if settings.generate and not path.exists():
            path = generate_keys(path.parent)[0]
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ArtifactError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def sign(self, ref: ArtifactRef) -> ArtifactRef:
        """``ref`` carrying a signature of its digest."""
        value = self.private.sign(_CONTEXT + ref.sha256.encode())
        signature = ArtifactSignature(key_id=self.key_id, value=base64.b64encode(value).decode())
        return ref.model_copy(update={"signature": signature})


class Verifier:
    """Checks artifact signatures against the accepted public keys, counting refusals.

    Key files are re-read when a signature names a key not loaded yet (at most every
    few seconds), so a verifier started before the trainer generated its key, or a
    public key added for a rotation, is picked up without a restart.
    """

    def __init__(
        self, keys: Iterable[Ed25519PublicKey], registry: CollectorRegistry | None = None, paths: Iterable[str] = ()
    ) -> None:
        self.keys = {key_id(k): k for k in keys}
        self.paths = list(paths)
        self._loaded_at = time.monotonic()
        self.failures = Counter(
            "driftloop_artifact_verification_failures_total",
            "Artifacts refused because their signature is missing or invalid, or their bytes were replaced.",
            ["reason"],
            registry=registry,
        )

    @classmethod
    def from_settings(cls, settings: SigningSettings, registry: CollectorRegistry | None = None) -> Verifier:
        return cls(_read_public_keys(settings.public_keys), registry, settings.public_keys)

    def _known_keys(self, wanted: str) -> dict[str, Ed25519PublicKey]:
        """The accepted keys, re-read from their files (at most every 2 s) when ``wanted`` is not among them."""
        if wanted not in self.keys and self.paths and time.monotonic() - self._loaded_at > 2.0:
            self._loaded_at = time.monotonic()
            self.keys.update({key_id(k): k for k in _read_public_keys(self.paths)})
        return self.keys

    def verify(self, ref: ArtifactRef, what: str = "artifact") -> None:
        """Return if ``ref`` is signed by an accepted key; otherwise log, count and raise."""
        signature = ref.signature
        if signature is None:
            self._refuse("unsigned", f"{what} {ref.uri} carries no signature")
        elif signature.key_id not in self._known_keys(signature.key_id):
            self._refuse("unknown_key", f"{what} {ref.uri} is signed by key {signature.key_id}, not an accepted one")
        else:
            try:
                self.keys[signature.key_id].verify(base64.b64decode(signature.value), _CONTEXT + ref.sha256.encode())
            except (InvalidSignature, ValueError):
                self._refuse("bad_signature", f"{what} {ref.uri}: the signature does not match its sha256")

    def _refuse(self, reason: str, message: str) -> None:
        self.failures.labels(reason).inc()
        log.error("artifact refused: %s", message, extra={"reason": reason})
        raise ArtifactUnverified(f"artifact refused: {message}", reason=reason)


@dataclass
class VerifyingStore(ArtifactStore):
    """The artifact store of a service that loads what the trainer made (serving, the monitor):
    every read checks the reference's signature first, then the bytes' digest; a refusal is
    logged and counted in ``driftloop_artifact_verification_failures_total``."""

    verifier: Verifier | None = None

    def get(self, ref: ArtifactRef) -> bytes:
        if self.verifier is None:
            raise ArtifactUnverified("artifact refused: no accepted public keys are configured", reason="no_keys")
        self.verifier.verify(ref)
        try:
            return super().get(ref)
        except ArtifactCorrupted:
            self.verifier.failures.labels("digest_mismatch").inc()
            log.error("artifact refused: %s does not hash to its signed sha256 (replaced?)", ref.uri)
            raise
