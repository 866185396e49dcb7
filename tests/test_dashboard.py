"""The web dashboard: served by the master, self-contained, and calling only routes that exist."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from master.app import create_app
from tests.conftest import admin_headers

#: Tests that start the app need the conftest's services; SQLite is enough for the dashboard.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

STATIC = Path(__file__).resolve().parent.parent / "master" / "static"
JS_FILES = sorted(STATIC.glob("*.js"))
UPLOT = STATIC / "vendor" / "uplot"
#: Absolute URLs the dashboard's own scripts may hold: none (charts are uPlot's canvas, served here).
ALLOWED_URLS: set[str] = set()


@pytest.fixture
def client(settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings), headers=admin_headers(settings)) as c:
        yield c


# Reading the JavaScript -------------------------------------------------------------------------


def _skip_string(src: str, i: int) -> int:
    """Index just past the quoted string (or template literal) that starts at src[i]."""
    quote = src[i]
    i += 1
    while i < len(src):
        c = src[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            return i + 1
        if quote == "`" and src.startswith("${", i):
            i = _skip_expression(src, i + 2)
            continue
        i += 1
    raise ValueError("unterminated string")


def _skip_expression(src: str, i: int) -> int:
    """Index just past the `}` closing a `${` whose body starts at src[i]."""
    depth = 1
    while i < len(src):
        c = src[i]
        if c in "'\"`":
            i = _skip_string(src, i)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unterminated ${")


def _template_path(body: str) -> str:
    """A string literal's text with each `${expr}` made `{x}`; `${query(...)}` (the query string) dropped."""
    out, i = [], 0
    while i < len(body):
        if body.startswith("${", i):
            end = _skip_expression(body, i + 2)
            expr = body[i + 2 : end - 1].strip()
            if not expr.startswith("query("):
                out.append("{x}")
            i = end
            continue
        out.append(body[i])
        i += 1
    return "".join(out).split("?", 1)[0]


def api_paths_in(src: str) -> set[str]:
    """Every string literal in `src` that starts with /api, as a path template."""
    found = set()
    i = 0
    while i < len(src):
        c = src[i]
        if src.startswith("//", i) and (i == 0 or src[i - 1] in " \t\n;{}"):
            i = src.find("\n", i)  # a line comment; its apostrophes are no strings
            if i < 0:
                break
            continue
        if c in "'\"`":
            end = _skip_string(src, i)
            body = src[i + 1 : end - 1]
            if body.startswith("/api"):
                found.add(_template_path(body) if c == "`" else body.split("?", 1)[0])
            i = end
            continue
        i += 1
    return found


def _route_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("^" + r"(?:\{x\}|[^/{}]+)".join(re.escape(p) for p in parts) + "$")


def test_path_reader_understands_templates() -> None:
    src = (
        'fetch(`/api/jobs/${id}/artifacts/${a.name.split("/").map(f).join("/")}`);\n'
        "// it's a comment with /api/nope in it\n"
        "api.get(`/api/jobs${query({ status, limit: 5 })}`); api.get('/api/health?x=1');"
    )
    assert api_paths_in(src) == {"/api/jobs/{x}/artifacts/{x}", "/api/jobs", "/api/health"}


# Serving ----------------------------------------------------------------------------------------


@sqlite_only
def test_dashboard_page_and_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in page.text
    assert 'href="/static/style.css"' in page.text

    js = client.get("/static/app.js")
    assert js.status_code == 200
    assert re.match(r"(text|application)/javascript", js.headers["content-type"])
    css = client.get("/static/style.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")

    # uPlot, a classic script that sets window.uPlot, runs before the modules that draw with it.
    library = '<script src="/static/vendor/uplot/uPlot.iife.min.js"></script>'
    assert library in page.text and page.text.index(library) < page.text.index("/static/app.js")
    assert 'href="/static/vendor/uplot/uPlot.min.css"' in page.text
    uplot = client.get("/static/vendor/uplot/uPlot.iife.min.js")
    assert uplot.status_code == 200 and uplot.content == (UPLOT / "uPlot.iife.min.js").read_bytes()
    assert client.get("/static/vendor/uplot/uPlot.min.css").headers["content-type"].startswith("text/css")


def test_the_charting_library_is_vendored_with_its_version_licence_and_checksums() -> None:
    """uPlot 1.6.x from npm, unchanged: its README names the version, the source and each file's
    sha256, and the licence travels with it."""
    readme = (UPLOT / "README.md").read_text()
    found = re.search(r"uPlot (1\.6\.\d+)", readme)
    assert found, "vendor/uplot/README.md names no uPlot 1.6.x version"
    version = found.group(1)
    assert f"https://registry.npmjs.org/uplot/-/uplot-{version}.tgz" in readme
    assert f"(v{version})".encode() in (UPLOT / "uPlot.iife.min.js").read_bytes()[:200]
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        assert hashlib.sha256((UPLOT / name).read_bytes()).hexdigest() in readme, (
            f"{name} differs from its sha256"
        )
    assert "MIT License" in (UPLOT / "LICENSE").read_text()


@sqlite_only
def test_every_module_import_is_served(client: TestClient) -> None:
    imported: set[str] = set()
    for path in JS_FILES:
        imported |= set(re.findall(r"""\bfrom\s+["']\./([\w.-]+\.js)["']""", path.read_text()))
    assert {"api.js", "jobs.js", "logs.js"} <= imported
    for name in sorted(imported):
        assert (STATIC / name).is_file(), name
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert re.match(r"(text|application)/javascript", response.headers["content-type"]), name


def test_page_uses_only_local_assets() -> None:
    """The farm may be offline: no CDN, no web fonts, nothing fetched from elsewhere."""
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I), (
        "index.html must not load remote assets"
    )
    for ref in re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", html):
        assert ref.startswith(("/", "#", "data:")), f"index.html references non-local {ref!r}"
    for path in [*JS_FILES, STATIC / "style.css"]:
        urls = set(re.findall(r"https?://[^\s\"'`)]+", path.read_text()))
        assert urls <= ALLOWED_URLS, f"{path.name} mentions remote URLs {urls - ALLOWED_URLS}"
        assert "@import" not in path.read_text() or path.suffix != ".css"


@sqlite_only
def test_the_page_is_public_and_the_api_is_not(settings) -> None:  # type: ignore[no-untyped-def]
    """A browser with no session gets the page (which then shows its login) but no data."""
    with TestClient(create_app(settings)) as anonymous:
        for path in ("/", "/static/app.js", "/static/login.js", "/static/favicon.svg"):
            assert anonymous.get(path).status_code == 200, path
        me = anonymous.get("/api/auth/me")
        assert me.status_code == 401 and me.json()["message"]
        assert anonymous.get("/api/jobs").status_code == 401


def test_the_page_keeps_to_its_content_security_policy() -> None:
    """CSP `default-src 'self'`: no inline script, handler or style, no data: URL; the browser test
    (tests/test_browser.py) catches what runs, this what is written."""
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script>"
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handler"
    assert not re.search(r"\sstyle\s*=", html, re.I), "style attribute"
    assert "data:" not in html
    for path in JS_FILES:
        src = path.read_text()
        for pattern in (
            r"setAttribute\(\s*[\"']style",
            r"style:\s*[`\"']",
            r"\bnew Function\(",
            r"setTimeout\(\s*[`\"']",
        ):
            assert not re.search(pattern, src), f"{path.name} uses {pattern}"


def test_the_login_posts_a_form_with_the_session_cookie() -> None:
    """/api/auth/session takes the OAuth2 form (URL-encoded), and every fetch sends the cookie."""
    api_js = (STATIC / "api.js").read_text()
    assert "new URLSearchParams(form)" in api_js
    assert 'credentials: "same-origin"' in api_js
    assert 'api.form("/api/auth/session"' in (STATIC / "session.js").read_text()


# Calling the API --------------------------------------------------------------------------------


@sqlite_only
def test_every_api_path_in_the_scripts_is_a_route(client: TestClient) -> None:
    templates = list(client.get("/openapi.json").json()["paths"])
    routes = [_route_regex(t) for t in templates]
    used: set[str] = set()
    for path in JS_FILES:
        used |= api_paths_in(path.read_text())
    missing = sorted(p for p in used if not any(r.match(p) for r in routes))
    assert not missing, f"the dashboard calls paths the API does not have: {missing}; routes: {templates}"
    # The reader found the calls the dashboard is built on (guards against it finding nothing).
    assert {
        "/api/health",
        "/api/jobs",
        "/api/jobs/{x}",
        "/api/jobs/{x}/cancel",
        "/api/jobs/{x}/metrics",
        "/api/jobs/{x}/artifacts",
        "/api/jobs/{x}/artifacts/{x}",
        "/api/jobs/{x}/logs/stream",
        "/api/datasets",
        "/api/nodes",
        "/api/auth/me",
        "/api/auth/session",
        "/api/users",
        "/api/users/{x}",
        "/api/compare",
        "/api/jobs/{x}/rerun",
        "/api/sweeps",
        "/api/sweeps/{x}",
        "/api/sweeps/{x}/cancel",
    } <= used


def test_scripts_never_parse_data_as_html() -> None:
    """Everything put on the page goes in as text: no innerHTML & co."""
    for path in JS_FILES:
        src = path.read_text()
        for pattern in (
            r"\.(?:inner|outer)HTML\s*\+?=",
            r"insertAdjacentHTML",
            r"document\.write",
            r"\beval\(",
        ):
            assert not re.search(pattern, src), f"{path.name} uses {pattern}"


@sqlite_only
def test_api_answers_the_dashboard_reads(client: TestClient) -> None:
    """The fields the dashboard renders, and the error message its forms show, are what the API sends."""
    bad = client.post("/api/jobs", json={"recipe": "tabular-classifier", "datasets": ["x"], "priority": 99})
    assert bad.status_code == 422
    assert "priority" in bad.json()["message"]
    assert bad.json()["field"] == "priority"

    job = client.post("/api/jobs", json={"command": ["python", "-c", "print(1)"], "queue": "cpu"}).json()
    page = client.get("/api/jobs", params={"limit": 1}).json()
    assert set(page) == {"items", "next_before"}
    listed = page["items"][0]
    for key in (
        "id",
        "name",
        "status",
        "queue",
        "priority",
        "spec",
        "progress",
        "metrics",
        "created_at",
        "node",
    ):
        assert key in listed
    detail = client.get(f"/api/jobs/{job['id']}").json()
    assert detail["attempt_list"][0]["number"] == 1
    assert client.get(f"/api/jobs/{job['id']}/metrics", params={"offset": 0, "limit": 10000}).json() == []
    assert client.get(f"/api/jobs/{job['id']}/artifacts").json() == []

    upload = client.post("/api/datasets", params={"name": "bad name!"}, content=b"a,b\n1,2\n")
    assert upload.status_code == 422 and upload.json()["message"]
