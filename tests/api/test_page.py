"""The page at / and the offline docs, over HTTP (the browser tests are in test_browser.py): CSP, no inline code,
files served from the package, open without an API key, and nothing that points off the machine."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import AppClient, app_client

from service.api.app import create_app
from service.api.page import STATIC_DIR, VENDOR_DIR
from service.api.security import DOCS_CSP, PAGE_CSP
from service.config import Settings
from service.model.store import Bundle

KEY = "page-test-key"


@pytest.fixture(scope="module")
def client(bundle: Bundle) -> Iterator[AppClient]:
    with app_client(create_app(Settings(log_level="warning"), bundle)) as c:
        yield c


class _Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def test_page_is_served_with_a_strict_csp(client: AppClient) -> None:
    """GET / is HTML under a same-origin CSP with no inline script or style and no eval."""
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert csp == PAGE_CSP
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'", name
    assert "unsafe" not in csp
    assert "http" not in csp


def test_page_has_no_inline_code(client: AppClient) -> None:
    """No inline script, no event-handler or style attribute; every asset is a local /static file that is served."""
    parsed = _parse(client.get("/").text)
    assert not parsed.inline_script
    assets = []
    for tag, attrs in parsed.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], tag
        if tag == "script":
            assets.append(attrs["src"])
        if tag == "link":
            assets.append(attrs["href"])
    assert sorted(a or "" for a in assets) == ["/static/favicon.svg", "/static/page.css", "/static/page.js"]
    for asset in assets:
        r = client.get(asset or "")
        assert r.status_code == 200, asset
        assert r.headers["cache-control"] == "no-cache"  # revalidated by ETag, not stored blindly
        assert r.headers["etag"]


def test_page_script_uses_no_eval_or_html_strings() -> None:
    """page.js builds the DOM with elements and text only: no eval, Function, innerHTML or inline styles."""
    script = (STATIC_DIR / "page.js").read_text()
    for banned in (
        "eval(",
        "new Function",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        ".style.",
    ):
        assert banned not in script, banned
    assert "http://" not in script
    assert "https://" not in script


def test_page_form_is_built_from_the_model_card(client: AppClient) -> None:
    """The page holds no feature names: its form comes from GET /model at run time (one source of truth)."""
    page = client.get("/").text + (STATIC_DIR / "page.js").read_text()
    card = client.get("/model").json()
    names = [f["name"] for f in card["features"] if len(f["name"]) > 4]  # "age", "bmi" occur in ordinary words
    assert len(names) >= 5
    for name in names:
        assert name not in page, name


def test_static_files_are_package_data() -> None:
    """Every file of service/api/static is matched by the package-data globs, so an installed wheel serves it."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["service.api"]
    files = [p.relative_to(STATIC_DIR.parent).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert len(files) >= 8
    for name in files:
        assert any(fnmatch(name, g) for g in globs), name


def test_docs_assets_come_from_the_package(client: AppClient) -> None:
    """/docs and /redoc load Swagger UI and ReDoc from /static/vendor (fastapi-offline's files), under a CSP
    that names no other host and allows no inline script."""
    assert "http" not in DOCS_CSP
    script_src = next(d for d in DOCS_CSP.split(";") if d.strip().startswith("script-src"))
    assert script_src.strip() == "script-src 'self'"
    for page, bundle_js in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        r = client.get(page)
        assert r.headers["content-security-policy"] == DOCS_CSP
        parsed = _parse(r.text)
        assert not parsed.inline_script
        sources = [attrs["src"] for tag, attrs in parsed.tags if tag == "script"]
        assert f"/static/vendor/{bundle_js}" in sources
        served = client.get(f"/static/vendor/{bundle_js}")
        assert served.status_code == 200
        assert served.content == (VENDOR_DIR / bundle_js).read_bytes()
        assert len(served.content) > 500_000
    assert "validatorUrl: null" in (STATIC_DIR / "docs" / "swagger-init.js").read_text()


def test_page_and_static_files_need_no_key_but_the_api_does(bundle: Bundle) -> None:
    """With GSHAP_API_KEYS the page and its files open without a key (no data in them); the API and docs do not."""
    with app_client(create_app(Settings(api_keys=[KEY], log_level="warning"), bundle)) as c:
        for path in ("/", "/static/page.js", "/static/page.css", "/static/vendor/swagger-ui.css"):
            assert c.get(path).status_code == 200, path
        for path in ("/model", "/docs", "/static/../model"):
            assert c.get(path).status_code == 401, path
        assert c.get("/model", headers={"X-API-Key": KEY}).status_code == 200


def test_static_paths_do_not_escape_the_folder(client: AppClient) -> None:
    """A /static path cannot reach files outside the static folders."""
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/vendor/../../page.py"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "import" not in r.text


def test_svg_in_the_page_is_inlinable() -> None:
    """The page inlines the API's SVG: it must use presentation attributes only, which the CSP allows."""
    from service.model.store import load_bundle
    from service.render.svg import chart_svg
    from service.training.figures import waterfall_of_record

    svg = chart_svg(waterfall_of_record(load_bundle(), 1)).decode()
    assert "style=" not in svg
    assert "<script" not in svg
    assert not re.search(r"\son[a-z]+=", svg)


def test_page_files_and_large_documents_are_compressed(client: AppClient) -> None:
    """The page's files, /model and /groups are gzipped for clients that ask; per-patient answers are not."""
    from helpers import record

    gzip = {"Accept-Encoding": "gzip"}
    for path in ("/", "/static/page.js", "/model", "/groups"):
        r = client.get(path, headers=gzip)
        assert r.headers.get("content-encoding") == "gzip", path
        assert "accept-encoding" in r.headers["vary"].lower(), path
        assert int(r.headers["content-length"]) < len(r.content), path  # fewer bytes on the wire than decoded
    assert "content-encoding" not in client.get("/model", headers={"Accept-Encoding": "identity"}).headers
    answer = client.post("/explain", json=record(), headers=gzip)
    assert answer.status_code == 200
    assert "content-encoding" not in answer.headers
