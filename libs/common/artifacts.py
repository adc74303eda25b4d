"""Content-addressed artifact store: datasets, models, reference profiles.

Every artifact is stored under its sha256 (``<root>/sha256/ab/abcd…<suffix>``)
and verified when read, so a model served is byte for byte the model trained,
and a corrupted or tampered file is refused rather than loaded. Writes are
atomic: bytes go to a temporary name and are moved into place, so a reader
never sees half a file. Storage goes through ``pyarrow.fs``, so the same code
writes a local directory (``file:///…``, the default) or S3-compatible storage
(``s3://bucket/prefix``, credentials from the usual AWS variables).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

from pyarrow import fs

from libs.common.errors import ArtifactCorrupted, ArtifactNotFound
from libs.common.events import ArtifactRef


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ArtifactStore:
    """A store rooted at a URI; see the module docstring for the layout."""

    root: str

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/")
        self._fs, self._base = fs.FileSystem.from_uri(self.root)
        if isinstance(self._fs, fs.LocalFileSystem):
            self._fs.create_dir(self._base, recursive=True)

    def put(self, data: bytes, *, suffix: str = "") -> ArtifactRef:
        """Store ``data`` (idempotent: the same bytes land at the same URI)."""
        digest = sha256_hex(data)
        relative = f"sha256/{digest[:2]}/{digest}{suffix}"
        path = f"{self._base}/{relative}"
        if self._fs.get_file_info(path).type != fs.FileType.File:
            self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with self._fs.open_output_stream(tmp) as out:
                out.write(data)
            self._fs.move(tmp, path)
        return ArtifactRef(uri=f"{self.root}/{relative}", sha256=digest, size=len(data))

    def get(self, ref: ArtifactRef) -> bytes:
        """The bytes of ``ref``, after checking they hash to ``ref.sha256``."""
        path = self._path(ref.uri)
        try:
            with self._fs.open_input_stream(path) as src:
                data: bytes = src.read()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"artifact not found: {ref.uri}") from exc
        actual = sha256_hex(data)
        if actual != ref.sha256:
            raise ArtifactCorrupted(
                f"artifact {ref.uri} is corrupted: sha256 {actual} does not match the recorded {ref.sha256}",
                uri=ref.uri,
                expected=ref.sha256,
                actual=actual,
            )
        return data

    def delete(self, ref: ArtifactRef) -> None:
        """Remove ``ref`` (nothing happens if it is already gone): for bytes whose
        database row was rolled back, so no file outlives a failed request."""
        with contextlib.suppress(FileNotFoundError):
            self._fs.delete_file(self._path(ref.uri))

    def exists(self, ref: ArtifactRef) -> bool:
        return bool(self._fs.get_file_info(self._path(ref.uri)).type == fs.FileType.File)

    def _path(self, uri: str) -> str:
        if not uri.startswith(self.root + "/"):
            raise ArtifactNotFound(f"artifact {uri} is not in this store ({self.root})")
        relative = uri[len(self.root) + 1 :]
        if ".." in relative.split("/") or urlparse(uri).query:
            raise ArtifactNotFound(f"invalid artifact URI {uri}")
        return f"{self._base}/{relative}"
