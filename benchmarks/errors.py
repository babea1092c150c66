"""The one way an error becomes the single line a user reads."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def one_line(err: BaseException, *, kind: bool = False) -> str:
    """`err` on one line (whitespace folded); an OSError in its own words and file; `kind` prefixes the type name."""
    if isinstance(err, OSError) and err.strerror:
        # An OSError prints as "[Errno 28] ..."; its own words and the file it names read better.
        text = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        text = str(err)
    text = " ".join(text.split())
    return f"{type(err).__name__}: {text}" if kind else text



def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the choice nearest to a mistyped `name`, or '' when none is near.

    Near: a slip of about one key per four letters (a swapped, missing, doubled or wrong letter: 'widht', 'fnc'), or
    most of the name in place (difflib's ratio >= 0.75: 'resnet18' for 'tv:resnet18'); not another word sharing a few
    letters ('depth' is 3 slips from 'width'). Of several, the one with most in common.
    """
    if not isinstance(name, str):
        return ""
    slips = max(1, len(name) // 4)
    near = [(difflib.SequenceMatcher(None, name, c).ratio(), c) for c in dict.fromkeys(choices) if c != name]
    near = [(ratio, c) for ratio, c in near if ratio >= 0.75 or _distance(name, c) <= slips]
    return f" (did you mean {max(near)[1]!r}?)" if near else ""


def _distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b` (optimal string alignment)."""
    rows = [list(range(len(b) + 1))]
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            cost = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (x != y))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                cost = min(cost, rows[-2][j - 2] + 1)
            row.append(cost)
        rows.append(row)
    return rows[-1][-1]
