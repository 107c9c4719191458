"""pages._text.md: user text renders literally (every Markdown and HTML trigger escaped, one line)."""

from __future__ import annotations

import re
import string

from pages._text import md, md_list

HOSTILE = ["![t](http://127.0.0.1:8765/p.png)", "**x**", "<img src=x onerror=alert(1)>", ":red[alarm]",
           ":material/home:", "$x^2$", "# heading", "1. list", "- item", "> quote", "`code`", "[a](javascript:x)",
           "&amp; &#60;", "a|b|c", "~~gone~~", "_under_", "line1\nline2\r\nline3", "tab\there", "back\\slash"]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def test_every_ascii_punctuation_is_escaped_and_nothing_else_changes() -> None:
    for text in HOSTILE + [string.punctuation, "Daphnia magna (juv.)", "Ärger ∑ 😀"]:
        escaped = md(text)
        assert "\n" not in escaped and "\r" not in escaped
        # Each punctuation character is preceded by a backslash, so no Markdown or HTML construct can start.
        assert re.search(r"(?<!\\)[" + re.escape(string.punctuation) + "]", re.sub(r"\\.", "", escaped)) is None
        assert _unescape(escaped) == text.replace("\n", " ").replace("\r", " ")


def test_md_of_the_image_class_name() -> None:
    assert md("![t](http://127.0.0.1:8765/p.png)") == r"\!\[t\]\(http\:\/\/127\.0\.0\.1\:8765\/p\.png\)"
    assert md(3.5) == r"3\.5" and md("plain words") == "plain words"


def test_md_list_escapes_each_item() -> None:
    assert md_list(["**x**", "a_b"], bold=True) == r"**\*\*x\*\***, **a\_b**"
    assert md_list([]) == ""
