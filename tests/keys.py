"""The artifact signing key pair of the test session: the trainer signs with the
private key, serving and the monitor accept the public key (tests/conftest.py
gives both to every service; tests/factories.py signs what it stores)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from libs.common.events import ArtifactRef
from libs.common.signing import Signer, SigningSettings, generate_keys

PRIVATE_KEY, PUBLIC_KEY = generate_keys(Path(tempfile.mkdtemp(prefix="driftloop-test-keys-")))
SIGNER = Signer.from_file(PRIVATE_KEY)
SIGNING = SigningSettings(private_key=str(PRIVATE_KEY), public_keys=[str(PUBLIC_KEY)])


def signed(ref: ArtifactRef) -> ArtifactRef:
    """``ref`` signed as the trainer signs it."""
    return SIGNER.sign(ref)
