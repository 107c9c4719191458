"""The one base class of every TaxaLens error: the CLI and the pages catch it and show its message, which says what
to do. Each module's error also derives from the built-in it refines (`ValueError`, `RuntimeError`), so callers that
catch those keep working."""

from __future__ import annotations


class TaxaLensError(Exception):
    """An error whose message names the file, key or setting at fault and the fix; shown to users as is."""


# What the CLI and the pages catch and show as a message instead of a traceback: our own errors, and the built-in
# ones library code raises for bad input (a bad value, a missing file) with a message that names it.
USER_ERRORS: tuple[type[Exception], ...] = (TaxaLensError, ValueError, FileNotFoundError)
