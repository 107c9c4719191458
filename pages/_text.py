"""User text is text: the one helper through which every class, checkpoint, sample, reviewer and note string goes
before Streamlit renders it as Markdown (titles, captions, button labels, toasts, st.markdown, alerts, expanders,
radio options, metric labels), so `![t](http://host/p.png)` shows literally and fetches nothing."""

from __future__ import annotations

import string

# Every ASCII punctuation character may be backslash-escaped in CommonMark, and an escaped one is always literal:
# no image, link, emphasis, code, HTML tag, entity, table, heading or list can start from it. Streamlit's own
# additions start from punctuation too (`:red[...]` colour directives, `:material/...:` icons, `:emoji:` short
# codes, `$...$` LaTeX), so escaping all of them is one rule with no exception list to keep up to date.
_ESCAPES = str.maketrans({ch: "\\" + ch for ch in string.punctuation})
_LINE_BREAKS = str.maketrans({"\r": " ", "\n": " ", "\u2028": " ", "\u2029": " ", "\x0b": " ", "\x0c": " "})


def md(text: object) -> str:
    """`text` (any value, shown with `str`) escaped so Markdown and HTML render it literally, on one line.

    Line breaks become spaces (a line break could start a heading, list or block in the middle of a caption) and
    leading spaces are kept from turning into a code block by the escaping of whatever follows them being literal.
    """
    return str(text).translate(_LINE_BREAKS).translate(_ESCAPES)


def md_list(items: object, *, sep: str = ", ", bold: bool = False) -> str:
    """Each item through `md`, joined by `sep` (optionally each in **bold**)."""
    wrap = "**{}**" if bold else "{}"
    return sep.join(wrap.format(md(item)) for item in items)  # type: ignore[union-attr]
