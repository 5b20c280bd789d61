"""TODO docstring (cds_service.serving.explain)."""

from __future__ import annotations

QUOTE_PIECES = 16  # note pieces per quoted passage


def snap_to_words(passage: str, text: str) -> str:
    """The passage as it stands in the note, widened to whole words, with an ellipsis where it is cut.

    Pieces decode to the model's view of the text, which can start or end inside a word."""
    flat = " ".join(text.split())
    at = flat.find(" ".join(passage.split()))
    if at < 0:
        return passage
    end = at + len(" ".join(passage.split()))
    start = flat.rfind(" ", 0, at) + 1 if at > 0 and flat[at - 1] != " " else at
    if end < len(flat) and flat[end] != " ":
        space = flat.find(" ", end)
        end = len(flat) if space < 0 else space
    return ("…" if start > 0 else "") + flat[start:end] + ("…" if end < len(flat) else "")
