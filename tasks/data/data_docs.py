"""Data Docs offline: make the Great Expectations HTML work with no network.

Great Expectations writes pages that load Bootstrap, jQuery, bootstrap-table and more from
CDNs, and its logo from S3. Where there is no internet (or in MLflow's artifact preview,
which shows one HTML file on its own) the pages open unstyled and the index tables, which
bootstrap-table draws with JavaScript, stay empty.

`make_offline` rewrites the pages after `build_data_docs()`: the CSS and JavaScript vendored
in `tasks/data/assets/data_docs/` (see LICENSES.md there) are inlined where the CDN tags were, so
each page stands alone; the CDN tags for what is not vendored (the Font Awesome font, the
date picker, the dark theme, Vega, which our pages do not draw with) are dropped, with small
stand-ins for the icons and the date picker; remote images point to the local
`static/images/` copy or are removed. Nothing is fetched at run time.
Hyperlinks (`<a href="https://...">`) are left as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

ASSETS = Path(__file__).parent / "assets" / "data_docs"

# File name in the CDN address -> vendored file inlined in its place. Two are ours: Font
# Awesome's all.min.css becomes Unicode stand-ins for the icons the pages use, and the date
# picker a no-op that bootstrap-table's filter control needs to draw the index table.
VENDORED = {
    "bootstrap.min.css": "bootstrap.min.css",
    "bootstrap-table.min.css": "bootstrap-table.min.css",
    "bootstrap-table-filter-control.css": "bootstrap-table-filter-control.min.css",
    "bootstrap-table-filter-control.min.css": "bootstrap-table-filter-control.min.css",
    "all.min.css": "icons.css",
    "jquery-3.7.1.min.js": "jquery.min.js",
    "popper.min.js": "popper.min.js",
    "bootstrap.min.js": "bootstrap.min.js",
    "bootstrap-table.min.js": "bootstrap-table.min.js",
    "bootstrap-table-filter-control.min.js": "bootstrap-table-filter-control.min.js",
    "bootstrap-datepicker.min.js": "datepicker-stub.js",
}

_REMOTE = r"(?:https?:)?//[^\"']*"
_LINK = re.compile(rf"<link\b[^>]*?\shref=[\"']({_REMOTE})[\"'][^>]*>", re.IGNORECASE)
_SCRIPT = re.compile(rf"<script\b[^>]*?\ssrc=[\"']({_REMOTE})[\"'][^>]*>\s*</script\s*>", re.IGNORECASE)
_IMG = re.compile(rf"(<img\b[^>]*?\ssrc=[\"'])({_REMOTE})([\"'][^>]*>)", re.IGNORECASE)
_STYLE = re.compile(r"<style\b[^>]*>.*?</style\s*>", re.IGNORECASE | re.DOTALL)
_CSS_URL = re.compile(r"url\(\s*[\"']?((?:https?:)?//[^\"')]*)[\"']?\s*\)", re.IGNORECASE)


def make_offline(docs_dir: Path) -> None:
    """Rewrite every .html file under `docs_dir` so it needs no network (see the module doc).

    Idempotent: a page already made offline has no remote tags left and is written unchanged.
    """
    docs_dir = Path(docs_dir)
    for page in sorted(docs_dir.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        offline = _offline_page(html, page.parent, docs_dir / "static" / "images")
        if offline != html:
            page.write_text(offline, encoding="utf-8")


def _offline_page(html: str, page_dir: Path, images_dir: Path) -> str:
    """One page's HTML with local images and the vendored CSS/JS inlined, in that order.

    Images and CSS urls are rewritten first, so the inlined libraries are never rewritten;
    scripts come last, so nothing scans the inlined JavaScript.
    """
    inlined: set[str] = set()  # a library used twice on a page is inlined once

    def local_image(url: str) -> str | None:
        image = images_dir / _file_name(url)
        return Path(os.path.relpath(image, page_dir)).as_posix() if image.is_file() else None

    def image(match: re.Match[str]) -> str:
        local = local_image(match[2])
        return f"{match[1]}{local}{match[3]}" if local else ""

    def css_url(match: re.Match[str]) -> str:
        local = local_image(match[1])
        return f"url('{local}')" if local else "none"

    def vendored(match: re.Match[str]) -> str | None:
        name = VENDORED.get(_file_name(match[1]))
        if name is None or name in inlined:
            return None
        inlined.add(name)
        return (ASSETS / name).read_text(encoding="utf-8")

    def link(match: re.Match[str]) -> str:
        css = vendored(match)
        return f"<style>\n{_escape_css(css)}\n</style>" if css is not None else ""

    def script(match: re.Match[str]) -> str:
        js = vendored(match)
        return f"<script>\n{_escape_js(js)}\n</script>" if js is not None else ""

    html = _IMG.sub(image, html)
    html = _STYLE.sub(lambda style: _CSS_URL.sub(css_url, style[0]), html)
    html = _LINK.sub(link, html)
    return _SCRIPT.sub(script, html)


def _file_name(url: str) -> str:
    """The last part of a URL's path: `https://x/dist/a.min.js?v=1` -> `a.min.js`."""
    return urlsplit(url).path.rsplit("/", 1)[-1]


def _escape_js(js: str) -> str:
    """JavaScript that cannot end or confuse its inline <script> element.

    The HTML parser ends a script at `</script` and changes state at `<!--`, even inside a JS
    string. `\\x3C` is `<` both in JS strings and in regular expressions (and harmless in
    comments), the only places these can appear.
    """
    return re.sub(r"<(?=/script|!--)", r"\\x3C", js, flags=re.IGNORECASE)


def _escape_css(css: str) -> str:
    """CSS that cannot end its inline <style> element (`\\/` is `/` in CSS)."""
    return re.sub(r"</(?=style)", r"<\\/", css, flags=re.IGNORECASE)
