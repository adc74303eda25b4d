"""Content-addressed artifact store: datasets, models, reference profiles.

Every artifact is stored under its sha256 (``<root>/<namespace>/sha256/ab/abcd…<suffix>``;
the namespace is the service that wrote it) and verified when read, so a model
served is byte for byte the model trained, and a corrupted or tampered file is
refused rather than loaded. Writes are atomic: bytes go to a temporary name and
are moved into place, so a reader never sees half a file. Readers go by URI, so
they read any namespace (and the files written before namespaces, under
``<root>/sha256/``). A service's artifact GC (libs/common/retention.py) lists and
collects only its own namespace. Storage goes through ``pyarrow.fs``, so the same code
writes a local directory (``file:///…``, the default) or S3-compatible storage
(``s3://bucket/prefix``, credentials from the usual AWS variables).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlparse

from pyarrow import fs

from libs.common.errors import ArtifactCorrupted, ArtifactNotFound
from libs.common.events import ArtifactRef


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_NAME = re.compile(r"(?P<digest>[0-9a-f]{64})(?P<suffix>.*?)(?P<tmp>\.tmp-[0-9a-f]{32})?")


@dataclass(frozen=True)
class StoredFile:
    """A file of the store, as the artifact GC sees it."""

    path: str
    """Relative to the store's root."""
    modified: datetime

    @property
    def name(self) -> re.Match[str] | None:
        return _NAME.fullmatch(self.path.rsplit("/", 1)[-1])

    @property
    def digest(self) -> str | None:
        """The sha256 the file is stored under (None: not a file the store wrote)."""
        match = self.name
        return match["digest"] if match else None

    @property
    def suffix(self) -> str:
        match = self.name
        return match["suffix"] if match else ""

    @property
    def temporary(self) -> bool:
        """A write that never completed (its process died between writing and moving it in place)."""
        match = self.name
        return bool(match and match["tmp"])


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass
class ArtifactStore:
    """A store rooted at a URI; see the module docstring for the layout."""

    root: str
    namespace: str = ""
    """Where this store writes, under ``root`` (a service's name); empty: ``root`` itself."""

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/")
        self._fs, self._base = fs.FileSystem.from_uri(self.root)
        if isinstance(self._fs, fs.LocalFileSystem):
            self._fs.create_dir(self._base, recursive=True)

    def put(self, data: bytes, *, suffix: str = "") -> ArtifactRef:
        """Store ``data`` (idempotent: the same bytes land at the same URI).

        Bytes already there are written again all the same: that renews the file's time, so
        the artifact GC, which spares young files, never collects a file a request is about
        to reference because an older copy of the same bytes was unreferenced."""
        digest = sha256_hex(data)
        prefix = f"{self.namespace}/" if self.namespace else ""
        relative = f"{prefix}sha256/{digest[:2]}/{digest}{suffix}"
        path = f"{self._base}/{relative}"
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self._fs.open_output_stream(tmp) as out:
            out.write(data)
        self._fs.move(tmp, path)
        return ArtifactRef(uri=f"{self.root}/{relative}", sha256=digest, size=len(data))

    def files(self) -> list[StoredFile]:
        """Every file in this store's namespace, in-flight temporary ones included."""
        base = f"{self._base}/{self.namespace}" if self.namespace else self._base
        infos = self._fs.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        return [
            StoredFile(info.path[len(self._base) + 1 :], _aware(info.mtime))
            for info in infos
            if info.type == fs.FileType.File and info.mtime is not None
        ]

    def remove_if_older(self, file: StoredFile, than: datetime) -> bool:
        """Delete ``file`` unless it was written at or after ``than`` (checked again just before)."""
        path = f"{self._base}/{file.path}"
        info = self._fs.get_file_info(path)
        if info.type != fs.FileType.File or info.mtime is None or _aware(info.mtime) >= than:
            return False
        with contextlib.suppress(FileNotFoundError):
            self._fs.delete_file(path)
        return True

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
