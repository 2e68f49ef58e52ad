"""Text files are untrusted bytes: each defect gets its own reason, naming where it is."""

import re

import pytest

from tasks.modality.texts import MAX_TEXT_BYTES, TextError, fold, inspect, text_of


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"caf\xe9 au lait", "not UTF-8 at byte 3"),  # Latin-1, as old Windows tools save it
        (b"", "empty text (0 bytes)"),
        (b" \n\t \r\n", "nothing but whitespace"),
        (b"one\x00two", "NUL at character 3"),
        (b"bell \x07 here", "control character U+0007 at character 5"),
        (b"x" * (MAX_TEXT_BYTES + 1), "over the limit"),
    ],
)
def test_each_defect_is_named_with_where_it_is(data, reason):
    with pytest.raises(TextError, match=re.escape(reason)):
        text_of(data)
    row = inspect(data)
    assert reason.split(" at ")[0] in row["error"] and not row.get("decodable")


def test_a_good_text_keeps_tabs_and_newlines_and_loses_its_byte_order_mark():
    text = text_of("\ufeffTitle\n\n\tBody, naïve café.\r\n".encode())
    assert text == "Title\n\n\tBody, naïve café.\r\n"
    row = inspect(text.encode(), count_tokens=lambda t: len(t.split()))
    assert row["decodable"] and row["characters"] == len(text) and row["tokens"] == 4


def test_near_duplicates_share_a_fold():
    assert fold("  The  Cat\nsat. ") == fold("the cat sat.") == "the cat sat."
    assert inspect(b"The  Cat sat.")["fold_sha256"] == inspect(b"the cat\nsat.")["fold_sha256"]
    assert inspect(b"the cat sat.")["fold_sha256"] != inspect(b"the dog sat.")["fold_sha256"]
