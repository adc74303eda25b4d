"""The content-addressed artifact store on a real directory."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from libs.common.artifacts import ArtifactStore, sha256_hex
from libs.common.errors import ArtifactCorrupted, ArtifactNotFound
from libs.common.events import ArtifactRef


def test_put_is_content_addressed_and_idempotent(artifact_root: str) -> None:
    store = ArtifactStore(artifact_root)
    first = store.put(b"model bytes", suffix=".skops")
    again = store.put(b"model bytes", suffix=".skops")
    assert first == again
    assert first.sha256 == sha256_hex(b"model bytes")
    assert first.uri.endswith(f"/sha256/{first.sha256[:2]}/{first.sha256}.skops")
    assert store.get(first) == b"model bytes"
    assert not list(Path(urlparse(artifact_root).path).rglob("*.tmp-*"))  # no temporary left behind


def test_bytes_that_do_not_match_the_digest_are_refused(artifact_root: str) -> None:
    store = ArtifactStore(artifact_root)
    ref = store.put(b"the real model")
    Path(urlparse(ref.uri).path).write_bytes(b"a tampered model")
    with pytest.raises(ArtifactCorrupted, match="does not match"):
        store.get(ref)


def test_a_reference_with_the_wrong_digest_is_refused(artifact_root: str) -> None:
    store = ArtifactStore(artifact_root)
    ref = store.put(b"abc")
    forged = ArtifactRef(uri=ref.uri, sha256=sha256_hex(b"xyz"), size=3)
    with pytest.raises(ArtifactCorrupted):
        store.get(forged)


def test_missing_or_foreign_artifacts_are_not_found(artifact_root: str, tmp_path: Path) -> None:
    store = ArtifactStore(artifact_root)
    digest = sha256_hex(b"never stored")
    with pytest.raises(ArtifactNotFound):
        store.get(ArtifactRef(uri=f"{artifact_root}/sha256/{digest[:2]}/{digest}", sha256=digest, size=1))
    with pytest.raises(ArtifactNotFound, match="not in this store"):
        store.get(ArtifactRef(uri=(tmp_path / "elsewhere").as_uri(), sha256=digest, size=1))
    with pytest.raises(ArtifactNotFound, match="invalid"):
        store.get(ArtifactRef(uri=f"{artifact_root}/../etc/passwd", sha256=digest, size=1))
