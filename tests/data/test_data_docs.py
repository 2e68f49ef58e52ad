"""Data Docs work offline: no CDN CSS/JS/images, the vendored libraries inlined, links intact."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import make_image_folder

from tasks.core.config import ValidateParams
from tasks.data import data_docs
from tasks.data.validate import validate_folder
from tasks.modality.pixels import Images

REMOTE = r"[\"'](?:https?:)?//"
REMOTE_ASSET = re.compile(
    rf"<link\b[^>]*\shref={REMOTE}|<script\b[^>]*\ssrc={REMOTE}|<img\b[^>]*\ssrc={REMOTE}|url\(\s*{REMOTE}",
    re.IGNORECASE,
)
PAGE_LINK = re.compile(r"\shref=\"([^\"#:']+\.html)\"")  # relative links to pages; skips URLs, JS
CDN_HOSTS = ("maxcdn", "bootstrapcdn", "stackpath", "unpkg", "code.jquery", "cdnjs", "jsdelivr", "amazonaws")
SCRIPTS = (  # vendored JavaScript, in the order the pages load it
    "jquery.min.js",
    "popper.min.js",
    "bootstrap.min.js",
    "bootstrap-table.min.js",
    "bootstrap-table-filter-control.min.js",
    "datepicker-stub.js",
)


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    """Real Data Docs of a tiny folder, with one failing expectation (a file that does not decode)."""
    root = tmp_path_factory.mktemp("data_docs")
    images = make_image_folder(root / "images", ["ant", "bee"], per_class=6)
    (images / "ant" / "broken.png").write_bytes(b"not a png")
    validated = validate_folder(images, ValidateParams(), root / "docs", Images())
    assert not validated.report.success
    return root / "docs"


def pages(docs: Path) -> dict[Path, str]:
    return {page: page.read_text(encoding="utf-8") for page in sorted(docs.rglob("*.html"))}


def script_bodies(html: str) -> list[str]:
    """The text of each <script> element, as an HTML parser splits the page."""

    class Scripts(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=False)
            self.bodies: list[str] = []
            self.inside = False

        def handle_starttag(self, tag, attrs):
            if tag == "script":
                self.inside = True
                self.bodies.append("")

        def handle_endtag(self, tag):
            if tag == "script":
                self.inside = False

        def handle_data(self, data):
            if self.inside:
                self.bodies[-1] += data

    parser = Scripts()
    parser.feed(html)
    parser.close()
    return parser.bodies


def test_no_page_loads_anything_remote(docs):
    found = pages(docs)
    assert len(found) == 5  # index, 2 expectation suites, 2 validation results
    for page, html in found.items():
        assert not REMOTE_ASSET.findall(html), page
        assert not [host for host in CDN_HOSTS if host in html], page
    index = found[docs / "index.html"]
    assert '<a href="https://greatexpectations.io">' in index  # hyperlinks stay


def test_vendored_css_and_js_are_inlined_once_in_order(docs):
    for page, html in pages(docs).items():
        assert ".container-fluid{" in html and ".table-bordered{" in html, page  # bootstrap.min.css
        assert html.count("@version v1.19.1") == 4, page  # bootstrap-table css, js, filter-control css, js
        assert '.fa-check-circle::before { content: "\\2714"; }' in html, page
        scripts = script_bodies(html)
        at = []
        for name in SCRIPTS:
            code = (data_docs.ASSETS / name).read_text(encoding="utf-8").strip()
            whole = [
                i
                for i, body in enumerate(scripts)
                if code[:200] in body and body.strip().endswith(code[-200:])
            ]
            assert len(whole) == 1, (page, name)  # inlined once, and not cut short by the HTML parser
            at.append(whole[0])
        assert at == sorted(at), page  # jQuery, popper, bootstrap, bootstrap-table, the datepicker stub
        own = [i for i in range(len(scripts)) if i not in at]
        assert all(i > max(at) for i in own), page  # the page's own code (tables, footer) runs after them


def test_index_lists_the_results_and_links_resolve(docs):
    index = (docs / "index.html").read_text(encoding="utf-8")
    # bootstrap-table draws the rows from this data, inlined in the page.
    rows = re.findall(r"'_table_row_link_path': '([^']+)'", index)
    assert sum(row.startswith("validations/") for row in rows) == 2
    assert {"expectations/image_files.html", "expectations/image_classes.html"} <= set(rows)
    for row in rows:
        assert (docs / row).is_file(), row
    assert "manifest-files" in index and "Failed" in index

    for page, html in pages(docs).items():
        for ref in PAGE_LINK.findall(html):
            assert (page.parent / ref).is_file(), (page, ref)
        logo = re.search(r"<img\b[^>]*\ssrc=\"([^\"]+)\"", html)
        assert logo, page
        assert (page.parent / logo[1]).resolve() == (docs / "static/images/logo-long.png").resolve()
    result = next((docs / "validations").rglob("manifest-files.html"))
    assert 'href="../../../../index.html"' in result.read_text(encoding="utf-8")


def test_make_offline_is_idempotent(docs, tmp_path):
    copy = shutil.copytree(docs, tmp_path / "docs")
    data_docs.make_offline(copy)
    for page, html in pages(docs).items():
        assert (copy / page.relative_to(docs)).read_text(encoding="utf-8") == html


def test_inlined_code_cannot_close_its_element(tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "jquery.min.js").write_text('var a = "</script><!-- x", b = /<\\/SCRIPT>/, c = "</SCRIPT >";')
    (assets / "bootstrap.min.css").write_text('.x::after{content:"</style>"}')
    monkeypatch.setattr(data_docs, "ASSETS", assets)
    page = tmp_path / "docs" / "index.html"
    page.parent.mkdir()
    page.write_text(
        '<head><link rel="stylesheet" href="https://maxcdn.example/4.3.1/css/bootstrap.min.css"/>\n'
        '<script src="https://code.example/jquery-3.7.1.min.js" crossorigin="anonymous"></script>\n'
        '<script src="https://cdn.example/npm/vega@5"></script>\n'
        '<link rel="stylesheet" href="//cdn.example/unknown.css"></head>\n'
        '<body><img class="x" src="https://s3.example/gone.png?d=1" alt="gone">'
        '<a href="https://docs.example/">docs</a></body>'
    )
    data_docs.make_offline(page.parent)
    html = page.read_text()
    assert html.count("</script>") == 1 and html.count("</style>") == 1
    assert "<!--" not in html
    assert '"\\x3C/script>\\x3C!-- x"' in html and '"\\x3C/SCRIPT >"' in html  # the same JS strings
    assert "vega" not in html and "unknown.css" not in html and "<img" not in html
    assert '<a href="https://docs.example/">docs</a>' in html


@pytest.fixture(scope="module")
def text_docs(tmp_path_factory) -> Path:
    """Real Data Docs of a tiny text folder, with one failing file (not UTF-8)."""
    from tasks.modality.tokens import Texts

    root = tmp_path_factory.mktemp("text_docs")
    for label, words in (("sport", "the match ended {} nil"), ("tech", "the new chip runs {} times faster")):
        (root / "texts" / label).mkdir(parents=True)
        for i in range(6):
            (root / "texts" / label / f"{i}.txt").write_text(words.format(i))
    (root / "texts" / "tech" / "latin1.txt").write_bytes(b"caf\xe9")
    validated = validate_folder(root / "texts", ValidateParams(), root / "docs", Texts())
    assert not validated.report.success
    return root / "docs"


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs headless Chromium (.ci/run installs it)")
@pytest.mark.parametrize("modality", ["images", "texts"])
def test_chromium_draws_the_index_tables_offline(docs, text_docs, modality):
    folder = docs if modality == "images" else text_docs
    dom = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            (folder / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = re.findall(r'<tr class="clickable-row" data-href="([^"]+)"', dom)
    assert sum(row.startswith("validations/") for row in rows) == 2, rows
    assert sum(row.startswith("expectations/") for row in rows) == 2, rows
