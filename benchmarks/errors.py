"""The one way an error becomes the single line a user reads."""

from __future__ import annotations


def one_line(err: BaseException, *, kind: bool = False) -> str:
    """`err` on one line (whitespace folded); an OSError in its own words and file; `kind` prefixes the type name."""
    if isinstance(err, OSError) and err.strerror:
        # An OSError prints as "[Errno 28] ..."; its own words and the file it names read better.
        text = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        text = str(err)
    text = " ".join(text.split())
    return f"{type(err).__name__}: {text}" if kind else text
