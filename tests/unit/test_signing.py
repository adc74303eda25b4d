"""Artifact signatures: signed digests verify; unsigned, forged, re-signed by
another key, or replaced bytes are refused, logged and counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from libs.common.artifacts import ArtifactStore, sha256_hex
from libs.common.errors import ArtifactCorrupted
from libs.common.events import ArtifactRef, ArtifactSignature
from libs.common.signing import ArtifactUnverified, Signer, SigningSettings, Verifier, VerifyingStore, generate_keys


def _keys(directory: Path) -> tuple[Signer, SigningSettings]:
    private, public = generate_keys(directory)
    assert private.stat().st_mode & 0o777 == 0o600
    return Signer.from_file(private), SigningSettings(public_keys=[str(public)])


def _failures(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("driftloop_artifact_verification_failures_total", {"reason": reason}) or 0.0


def test_signed_artifacts_load_and_everything_else_is_refused_and_counted(tmp_path: Path) -> None:
    signer, settings = _keys(tmp_path / "keys")
    attacker, _ = _keys(tmp_path / "attacker")
    registry = CollectorRegistry()
    store = VerifyingStore(str((tmp_path / "artifacts").as_uri()), verifier=Verifier.from_settings(settings, registry))
    writer = ArtifactStore(store.root)
    ref = signer.sign(writer.put(b"model bytes", suffix=".skops"))
    assert store.get(ref) == b"model bytes"

    unsigned = writer.put(b"model bytes", suffix=".skops")
    with pytest.raises(ArtifactUnverified, match="carries no signature"):
        store.get(unsigned)
    with pytest.raises(ArtifactUnverified, match="not an accepted one"):
        store.get(attacker.sign(unsigned))
    evil = writer.put(b"evil bytes", suffix=".skops")
    assert ref.signature is not None
    borrowed = evil.model_copy(update={"signature": ref.signature})  # a valid signature, of other bytes
    with pytest.raises(ArtifactUnverified, match="does not match"):
        store.get(borrowed)
    garbage = ref.model_copy(update={"signature": ArtifactSignature(key_id=signer.key_id, value="!!!")})
    with pytest.raises(ArtifactUnverified):
        store.get(garbage)
    Path(ref.uri.removeprefix("file://")).write_bytes(b"replaced")  # the file itself swapped in the store
    with pytest.raises(ArtifactCorrupted):
        store.get(ref)
    assert [_failures(registry, r) for r in ("unsigned", "unknown_key", "bad_signature", "digest_mismatch")] == [
        1, 1, 2, 1,
    ]  # fmt: skip


def test_rotation_accepts_every_listed_key_and_picks_up_new_files(tmp_path: Path) -> None:
    old, old_settings = _keys(tmp_path / "old")
    new, new_settings = _keys(tmp_path / "new")
    ref = ArtifactRef(uri="file:///x", sha256=sha256_hex(b"x"), size=1)
    both = Verifier.from_settings(SigningSettings(public_keys=old_settings.public_keys + new_settings.public_keys))
    both.verify(old.sign(ref))
    both.verify(new.sign(ref))
    only_new = Verifier.from_settings(new_settings)
    with pytest.raises(ArtifactUnverified):
        only_new.verify(old.sign(ref))

    later = tmp_path / "later"
    waiting = Verifier.from_settings(SigningSettings(public_keys=[str(later / "signing.pub")]))  # not there yet
    with pytest.raises(ArtifactUnverified):
        waiting.verify(old.sign(ref))
    signer, _ = _keys(later)
    waiting._loaded_at -= 10  # the re-read interval has passed
    waiting.verify(signer.sign(ref))
