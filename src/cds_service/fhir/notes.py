"""Clinical note text from DocumentReference attachments and Composition section narratives."""

from __future__ import annotations

import base64
import binascii
import html
import re
from typing import Any

Resource = dict[str, Any]

_BLANKS = re.compile(r"[ \t]+")
MAX_NOTE_CHARS = 20_000  # bound the cost of one hostile attachment
MAX_MARKUP_CHARS = 4 * MAX_NOTE_CHARS  # markup read per narrative, before its tags are removed
_BREAKS = frozenset({"br", "/p", "/div", "/li", "/tr", "/h1", "/h2", "/h3", "/h4", "/h5", "/h6"})


def xhtml_to_text(div: str) -> str:
    """Text of a narrative: tags become spaces (line breaks for block ends), entities are decoded.

    One left-to-right pass with `str.find` (linear in the input): a tag pattern such as `<[^>]+>` rescans the
    rest of the text from every `<`, so 100 kB of `<` took 11 s and blocked the event loop."""
    div = div[:MAX_MARKUP_CHARS]
    out: list[str] = []
    at = 0
    while at < len(div):
        lt = div.find("<", at)
        gt = div.find(">", lt + 1) if lt >= 0 else -1
        if lt < 0 or gt < 0:  # no further tag: the rest is text
            out.append(div[at:])
            break
        out.append(div[at:lt])
        words = div[lt + 1 : gt].split(None, 1)
        name = words[0].lower().rstrip("/") if words else ""
        out.append("\n" if name in _BREAKS else " ")
        at = gt + 1
    return _BLANKS.sub(" ", html.unescape("".join(out))).strip()


def _attachment_text(attachment: Any) -> str | None:
    if not isinstance(attachment, dict):
        return None
    content_type = str(attachment.get("contentType") or "text/plain").lower()
    if not content_type.startswith(("text/plain", "text/markdown", "text/html", "application/xhtml")):
        return None
    data = attachment.get("data")
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(data[: MAX_NOTE_CHARS * 2], validate=False)
    except (binascii.Error, ValueError):
        return None
    text = raw.decode("utf-8", errors="replace")
    return xhtml_to_text(text) if "html" in content_type else text


def note_text(resource: Resource) -> str | None:
    """Plain text of a note resource, or None when it carries no readable text."""
    parts: list[str] = []
    if resource.get("resourceType") == "DocumentReference":
        for content in resource.get("content") or []:
            text = _attachment_text(content.get("attachment") if isinstance(content, dict) else None)
            if text:
                parts.append(text)
    elif resource.get("resourceType") == "Composition":
        for section in resource.get("section") or []:
            if not isinstance(section, dict):
                continue
            narrative = section.get("text")
            div = narrative.get("div") if isinstance(narrative, dict) else None
            if isinstance(div, str):
                title = section.get("title")
                body = xhtml_to_text(div)
                parts.append(f"{title}: {body}" if isinstance(title, str) else body)
    text = "\n".join(p.strip() for p in parts if p.strip())
    return text[:MAX_NOTE_CHARS] or None
