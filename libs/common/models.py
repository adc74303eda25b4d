"""Model artifacts: fitted scikit-learn pipelines serialised with skops.

skops never unpickles arbitrary code: loading lists the types an artifact
needs, and only types from an allowlist of module prefixes (scikit-learn,
NumPy, SciPy, builtins) are trusted. An artifact that needs anything else is
refused. Together with the digest check of the artifact store, serving loads
exactly what the trainer wrote and nothing that could run code.
"""

from __future__ import annotations

from typing import Any

import skops.io as sio

from libs.common.artifacts import ArtifactStore
from libs.common.errors import ArtifactError
from libs.common.events import ArtifactRef

TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.", "_operator.", "operator.")


def dumps(model: Any) -> bytes:
    return bytes(sio.dumps(model))


def loads(data: bytes) -> Any:
    """The model in ``data``, if every type it needs is on the allowlist."""
    needed = sio.get_untrusted_types(data=data)
    refused = [t for t in needed if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise ArtifactError(f"model artifact needs untrusted types: {refused}")
    return sio.loads(data, trusted=needed)


def load(store: ArtifactStore, ref: ArtifactRef) -> Any:
    """Read (digest-verified) and load a model artifact."""
    return loads(store.get(ref))
