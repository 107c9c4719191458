"""The one base class of every TaxaLens error: the CLI and the pages catch it and show its message, which says what
to do. Each module's error also derives from the built-in it refines (`ValueError`, `RuntimeError`), so callers that
catch those keep working."""

from __future__ import annotations

import re

# ANSI escape sequences (colours, cursor moves) and other control characters a library may put in its messages.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class TaxaLensError(Exception):
    """An error whose message names the file, key or setting at fault and the fix; shown to users as is."""


# What the CLI and the pages catch and show as a message instead of a traceback: our own errors, and the built-in
# ones library code raises for bad input (a bad value, a missing or unreadable file) with a message that names it.
USER_ERRORS: tuple[type[Exception], ...] = (TaxaLensError, ValueError, OSError)


def user_message(exc: BaseException) -> str:
    """`exc`'s message as a user sees it: ANSI escapes and control characters removed, whitespace (newlines
    included) collapsed, so a terminal or a page shows one clean paragraph."""
    text = _CONTROL.sub(" ", _ANSI.sub("", str(exc)))
    return " ".join(text.split()) or type(exc).__name__
