"""The preview of a dead-lettered body: printable, bounded, escapes never cut in half."""

from __future__ import annotations

from libs.common.kafka.dead_letters import preview


def test_a_preview_escapes_control_characters_and_stays_within_its_limit() -> None:
    assert preview(b"\x00ab\ncd", limit=20) == "\\x00ab\\x0acd"
    cut = preview(b"\x00" + b"x" * 400, limit=10)
    assert cut == "\\x00xxxxxx…"  # 10 characters shown, then the mark
    assert preview(b"\x01\x02\x03", limit=6) == "\\x01…"  # the second escape would not fit whole
    assert preview("é€".encode(), limit=5) == "é€"
    assert preview(b"\xff<b>", limit=10) == "\ufffd<b>"  # bad UTF-8 replaced, markup left as text
    assert preview(None) == ""
    assert preview(b"y" * 1000, limit=4) == "yyyy…"
