"""Request ids prove serving issued them for one model; feedback for any other id is refused."""

from __future__ import annotations

import uuid

import pytest

from libs.common.events import Label, LabelsArrived
from libs.common.request_ids import (
    ID_LENGTH,
    RequestIds,
    UnattestedLabels,
    UnissuedRequestIds,
    check_attested,
    check_issued,
    screen,
)

SECRET = b"k" * 32


def test_a_minted_id_is_issued_for_its_model_only() -> None:
    ids = RequestIds(SECRET)
    rid = ids.mint("churn")
    assert len(rid) == ID_LENGTH == len(uuid.uuid4().hex)
    assert ids.issued(rid, "churn")
    assert not ids.issued(rid, "fraud")
    assert not RequestIds(b"x" * 32).issued(rid, "churn")  # another secret


def test_ids_minted_in_a_batch_are_issued_like_single_ones() -> None:
    ids = RequestIds(SECRET)
    batch = ids.mint_many("churn", 50)
    assert len(set(batch)) == 50
    assert all(len(rid) == ID_LENGTH and ids.issued(rid, "churn") for rid in batch)
    assert not any(ids.issued(rid, "churnx") or ids.issued(rid, "chur") for rid in batch)


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "x",
        "6b1f0c9e2d7a4e8f9a3c5b7d1e2f4a6c",
        "0" * ID_LENGTH,
        "g" * ID_LENGTH,
        "A" * ID_LENGTH,
        "0" * (ID_LENGTH + 1),
    ],
)
def test_made_up_ids_are_not_issued(forged: str) -> None:
    assert not RequestIds(SECRET).issued(forged, "churn")


def test_a_changed_character_breaks_the_tag() -> None:
    ids = RequestIds(SECRET)
    rid = ids.mint("churn")
    for position in (0, ID_LENGTH // 2, ID_LENGTH - 1):
        flipped = "1" if rid[position] != "1" else "2"
        assert not ids.issued(rid[:position] + flipped + rid[position + 1 :], "churn")


def test_ids_of_a_rotated_out_secret_stay_valid_until_it_is_dropped() -> None:
    old = RequestIds(b"o" * 32)
    rid = old.mint("churn")
    assert RequestIds(SECRET, previous=[b"o" * 32]).issued(rid, "churn")
    assert not RequestIds(SECRET).issued(rid, "churn")


def test_model_and_nonce_cannot_be_shifted_into_each_other() -> None:
    ids = RequestIds(SECRET)
    rid = ids.mint("ab")
    assert not ids.issued(rid, "a")
    assert not ids.issued(rid, "ab\0")


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        RequestIds(b"short")


def test_screen_keeps_issued_ids_once_and_says_why_the_others_are_refused() -> None:
    ids = RequestIds(SECRET)
    good, other = ids.mint("churn"), ids.mint("churn")
    accepted, refused = screen(ids, "churn", [good, "made-up", good, other, ids.mint("fraud")])
    assert accepted == [0, 3]
    assert refused == [(1, "unknown"), (2, "duplicate"), (4, "unknown")]


def test_verification_is_fast() -> None:
    import time

    ids = RequestIds(SECRET)
    batch = [ids.mint("churn") for _ in range(10_000)]
    started = time.perf_counter()
    accepted, _ = screen(ids, "churn", batch)
    elapsed = time.perf_counter() - started
    assert len(accepted) == 10_000
    assert elapsed < 1.0, f"10,000 ids took {elapsed:.3f}s"


def test_check_issued_refuses_a_batch_with_any_unissued_id_and_names_it() -> None:
    ids = RequestIds(b"k" * 32)
    good = ids.mint_many("churn", 3)
    check_issued(ids, "churn", good)  # nothing raised
    with pytest.raises(UnissuedRequestIds) as refused:
        check_issued(ids, "churn", [*good, "f" * 32, ids.mint("fraud")])
    assert refused.value.details["unissued"] == 2
    assert str(refused.value).startswith(
        f"2 of the 5 request ids were never issued by serving for model 'churn' ('{'f' * 32}', "
    )
    assert refused.value.retryable is False  # dead-lettered at once, never retried


def test_an_attestation_binds_the_sender_its_trust_and_every_label() -> None:
    ids = RequestIds(b"k" * 32, previous=[b"o" * 32])
    labels = [(ids.mint("churn"), "yes"), (ids.mint("churn"), 1.5)]
    tag = ids.attest("churn", "crm", True, labels)
    assert ids.attested(tag, "churn", "crm", True, labels)
    assert not ids.attested(tag, "churn", "mallory", True, labels)
    assert not ids.attested(tag, "churn", "crm", False, labels)
    assert not ids.attested(tag, "fraud", "crm", True, labels)
    assert not ids.attested(tag, "churn", "crm", True, [labels[0], (labels[1][0], 2.5)])
    assert not ids.attested(tag, "churn", "crm", True, labels[:1])
    assert not ids.attested(None, "churn", "crm", True, labels)
    assert not RequestIds(b"x" * 32).attested(tag, "churn", "crm", True, labels)  # another key
    rotated = RequestIds(b"n" * 32, previous=[b"k" * 32])
    assert rotated.attested(tag, "churn", "crm", True, labels)  # the old key still attests during a rotation
    with pytest.raises(UnattestedLabels, match="does not match its attestation"):
        check_attested(ids, "churn", "crm", False, labels, tag)
    with pytest.raises(UnattestedLabels, match="carries no attestation"):
        check_attested(ids, "churn", "crm", True, labels, None)


def test_an_attestation_binds_the_sensitive_attributes_sent_with_a_label() -> None:
    ids = RequestIds(b"k" * 32)
    rid = ids.mint("churn")
    event = LabelsArrived(producer="serving", model="churn", labels=[
        Label(request_id=rid, label="yes", attributes={"sex": "f"}), Label(request_id=rid, label="no")])  # fmt: skip
    tag = ids.attest("churn", "crm", True, event.attested_labels())
    moved = event.model_copy(update={"labels": [Label(request_id=rid, label="yes", attributes={"sex": "m"}),
                                                event.labels[1]]})  # fmt: skip
    assert ids.attested(tag, "churn", "crm", True, event.attested_labels())
    assert not ids.attested(tag, "churn", "crm", True, moved.attested_labels())  # another group: refused
    # a label without attributes is attested as before they existed: (request id, label)
    assert event.attested_labels()[1] == (rid, "no")
