"""The HTML page: one self-contained file, the template (``page.html``) with its stylesheet,
script and data written into it. Nothing is fetched when it opens: no server, no network."""

from __future__ import annotations

import html
import json
import re
from importlib.resources import files

ASSETS = ("page.html", "page.css", "page.js")


def render_page(data: dict, *, title: str, built: str) -> str:
    assets = {name: (files(__package__) / name).read_text(encoding="utf-8") for name in ASSETS}
    values = {
        "title": html.escape(title),
        "built": html.escape(built),
        "style": assets["page.css"],
        "script": assets["page.js"],
        "data": embed_json(data),
    }
    # One pass over the template: what is written in is never searched for markers itself.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], assets["page.html"])


def embed_json(data: dict) -> str:
    """``data`` as JSON that can sit inside a <script> element: every ``<`` escaped, so no text in
    it (a model's output included) can close the element."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
