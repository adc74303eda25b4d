"""Request ids that prove serving issued them, for one model.

Feedback moves the live metric, and the live metric can trigger a retrain; so a
label must answer a prediction serving really made. Storing every issued id
would put a database write on the request path; instead an id carries its own
proof: a random part and a MAC tag over ``(model, random part)`` under a
secret only serving holds (keyed BLAKE2b, a MAC by design and about four
times cheaper per id than HMAC-SHA256 on the predict path). Checking an id is one HMAC, no I/O, and an id issued
for one model is worthless for another. A forger needs the secret: the tag is
64 bits, so guessing one valid id takes on the order of 2^63 tries (rate limits
make that hopeless).

Serving mints and checks ids at ``POST /v1/feedback``; the monitor checks them
again on ``labels.arrived``, so a client that may write that topic directly (it
skips the HTTP check) still cannot feed labels for predictions serving never
made. Both hold the secret; nobody else needs it.

Serving also attests each ``labels.arrived`` it publishes: a MAC under the same
secret over the model, the sender, its trust level and the labels. The sender
and its trust decide whether a retrain may promote by itself, so a producer
writing the topic directly must not be able to name a trusted principal; without
the secret it cannot make the attestation.

Rotation: mint with the current secret, accept ids tagged with any secret in
``previous`` until the labels for them stop mattering (hours), then drop it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from libs.common.errors import InvalidEvent

RANDOM_BYTES = 8
TAG_BYTES = 8
#: Length of an issued id: hex of the random part and the tag (the length of a uuid4 hex).
ID_LENGTH = 2 * (RANDOM_BYTES + TAG_BYTES)
_HEX = frozenset("0123456789abcdef")


class RequestIds:
    """Mints and verifies request ids under a secret (and accepts previous secrets' ids)."""

    def __init__(self, secret: bytes, previous: Iterable[bytes] = ()) -> None:
        if len(secret) < 16:
            raise ValueError("the request-id secret must be at least 16 bytes")
        # Keyed once (BLAKE2b keys are at most 64 bytes: a longer secret is hashed down);
        # copying a keyed state is cheaper than keying one per id.
        self._keys = tuple(key if len(key) <= 64 else hashlib.sha256(key).digest() for key in (secret, *previous))
        self._macs = tuple(hashlib.blake2b(key=key, digest_size=TAG_BYTES) for key in self._keys)

    def attest(self, model: str, principal: str | None, trusted: bool | None, labels: Sequence[tuple[Any, ...]]) -> str:
        """A MAC over who sent which labels for ``model`` (under the current secret)."""
        return _attestation(self._keys[0], model, principal, trusted, labels)

    def attested(
        self,
        tag: str | None,
        model: str,
        principal: str | None,
        trusted: bool | None,
        labels: Sequence[tuple[Any, ...]],
    ) -> bool:
        """Whether ``tag`` is the attestation of exactly these labels under one of the secrets."""
        return tag is not None and any(
            hmac.compare_digest(tag, _attestation(key, model, principal, trusted, labels)) for key in self._keys
        )

    def mint(self, model: str) -> str:
        """A fresh id for a prediction of ``model``."""
        return self.mint_many(model, 1)[0]

    def mint_many(self, model: str, count: int) -> list[str]:
        """``count`` fresh ids for predictions of ``model`` (one read of the OS's random source)."""
        pool = os.urandom(RANDOM_BYTES * count).hex()
        raw = pool.encode()
        step = 2 * RANDOM_BYTES
        # The MAC state after the model's prefix is the same for every id: made once and copied per id.
        prefixed = _for_model(self._macs[0], model)
        return [pool[i : i + step] + _tag(prefixed, raw[i : i + step]) for i in range(0, step * count, step)]

    def issued(self, request_id: str, model: str) -> bool:
        """Whether ``request_id`` was minted by a holder of one of the secrets, for ``model``."""
        if len(request_id) != ID_LENGTH or not _HEX.issuperset(request_id):
            return False
        nonce, tag = request_id[: 2 * RANDOM_BYTES], request_id[2 * RANDOM_BYTES :]
        return any(hmac.compare_digest(tag, _tag(_for_model(mac, model), nonce.encode())) for mac in self._macs)


def _attestation(
    key: bytes, model: str, principal: str | None, trusted: bool | None, labels: Sequence[tuple[Any, ...]]
) -> str:
    # BLAKE2b's personalisation keeps these MACs apart from the request-id tags made with the same key.
    canonical = json.dumps([model, principal, trusted, [list(item) for item in labels]], sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    return hashlib.blake2b(canonical.encode(), key=key, digest_size=16, person=b"dl-labels-v1").hexdigest()


def _for_model(keyed: hashlib.blake2b, model: str) -> hashlib.blake2b:
    """The keyed MAC fed ``model`` and a NUL: ("ab", "c…") and ("a", "bc…") differ."""
    mac = keyed.copy()
    mac.update(model.encode() + b"\0")
    return mac


def _tag(prefixed: hashlib.blake2b, nonce: bytes) -> str:
    mac = prefixed.copy()
    mac.update(nonce)
    return mac.hexdigest()


def screen(ids: RequestIds, model: str, request_ids: Iterable[str]) -> tuple[list[int], list[tuple[int, str]]]:
    """Split feedback for ``model`` into the positions to accept and the refused ones with why.

    Refused: ids serving never issued for this model (made up, mistyped, or issued
    for another model) and repeats of an id earlier in the same request.
    """
    accepted: list[int] = []
    refused: list[tuple[int, str]] = []
    seen: set[str] = set()
    for index, request_id in enumerate(request_ids):
        if not ids.issued(request_id, model):
            refused.append((index, "unknown"))
        elif request_id in seen:
            refused.append((index, "duplicate"))
        else:
            seen.add(request_id)
            accepted.append(index)
    return accepted, refused


class UnissuedRequestIds(InvalidEvent):
    """A ``labels.arrived`` carrying request ids serving never issued for its model: refused whole.

    Serving publishes only ids it has checked, so such an event was written to the
    topic by someone else; none of its labels is trusted.
    """

    code = "unissued_request_ids"


#: How many refused ids an error message quotes.
QUOTED = 3


def check_issued(ids: RequestIds, model: str, request_ids: Sequence[str]) -> None:
    """Raise :class:`UnissuedRequestIds` naming the ids serving never issued for ``model`` (if any)."""
    unissued = [request_id for request_id in request_ids if not ids.issued(request_id, model)]
    if unissued:
        quoted = ", ".join(repr(r[:40]) for r in unissued[:QUOTED]) + (" …" if len(unissued) > QUOTED else "")
        raise UnissuedRequestIds(
            f"{len(unissued)} of the {len(request_ids)} request ids were never issued by serving for model "
            f"{model!r} ({quoted}): the labels are refused",
            model=model, unissued=len(unissued),
        )  # fmt: skip


class UnattestedLabels(InvalidEvent):
    """A ``labels.arrived`` serving did not attest (or whose sender, trust or labels were changed since)."""

    code = "unattested_labels"


def check_attested(ids: RequestIds, model: str, principal: str | None, trusted: bool | None,
                   labels: Sequence[tuple[Any, ...]], attestation: str | None) -> None:  # fmt: skip
    """Raise :class:`UnattestedLabels` unless serving attested exactly this sender, trust and labels."""
    if not ids.attested(attestation, model, principal, trusted, labels):
        missing = "carries no attestation" if attestation is None else "does not match its attestation"
        raise UnattestedLabels(
            f"labels.arrived for model {model!r} from {principal!r} {missing}: serving did not publish it as it is; "
            "the labels are refused",
            model=model,
            labels=len(labels),
        )
