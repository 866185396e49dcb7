"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against a real
master and worker: logging in with the session cookie, the live log, cancelling, ownership, the
admins' users page, and no Content-Security-Policy violation anywhere on the way."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.browser_support import OpenPage, PageWatch, browser_pages, screenshot
from tests.browser_support import log_in as _log_in
from tests.browser_support import token_for as _token_for
from tests.conftest import wait_status
from trainfarm.services.farm import MasterProcess, WorkerProcess

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: Markup in a log line must show as these characters, never become an element.
MARKUP = "<img src=x id=injected>"
#: A command job that prints a numbered line every 0.3 s for a minute (long enough to watch and
#: cancel) and reports an epoch's metrics with each, so the progress bar and chart are drawn too.
PRINTER_SOURCE = f"""
import json, os, time
for i in range(1, 201):
    print("line", i, "{MARKUP}", flush=True)
    event = {{"kind": "metrics", "epoch": i, "max_epochs": 200, "step": i,
             "metrics": {{"train_loss": 1 / i, "val_loss": 1.2 / i, "val_acc": 1 - 1 / (i + 1)}}}}
    with open(os.environ["TRAINFARM_EVENTS_FILE"], "a") as fh:
        fh.write(json.dumps(event) + "\\n")
    time.sleep(0.3)
"""
SLOW_PRINTER = json.dumps(["python", "-c", PRINTER_SOURCE])
BOBS_JOB_NAME = "bobs-job"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Visibility `own`: alice sees bob's job's status but not its log, metrics or artifacts."""
    return settings.model_copy(update={"job_visibility": "own"})


@pytest.fixture
def open_page() -> Iterator[OpenPage]:
    """A fresh browser context (its own cookies) per call, with a page at `url` being watched."""
    with browser_pages() as open_at:
        yield open_at


@sqlite_only
def test_the_dashboard_in_a_real_browser(
    master: MasterProcess,
    api: httpx.Client,
    start_worker: Callable[..., WorkerProcess],
    open_page: Callable[[str], tuple[Any, PageWatch]],
) -> None:
    """One master for every part: alice (member), then the admin's users page, then a viewer."""
    # The worker serves only cpu: bob's gpu job stays queued, so it could be cancelled by its owner.
    start_worker("node-1", queues="cpu")
    for name in ("alice", "bob"):
        made = api.post("/users", json={"name": name, "role": "member", "password": f"{name}-pw-123"})
        assert made.status_code == 201, made.text
    with master.client(token=_token_for(master, "bob", "bob-pw-123")) as bob:
        bobs = bob.post(
            "/jobs", json={"name": BOBS_JOB_NAME, "command": ["python", "-c", "1"], "queue": "gpu"}
        )
        assert bobs.status_code == 201, bobs.text
        bobs_id = bobs.json()["id"]

    _member_session(master, api, open_page, bobs_id)
    _admin_manages_users(master, api, open_page)
    _viewer_session(master, open_page, bobs_id)


def _member_session(
    master: MasterProcess, api: httpx.Client, open_page: Callable[[str], tuple[Any, PageWatch]], bobs_id: int
) -> None:
    from playwright.sync_api import expect

    page, watch = open_page(master.url)
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()

    # A wrong password: the master's own message, and still the login page.
    _log_in(page, "alice", "not-her-password")
    expect(page.locator("#login-form .result")).to_have_text("wrong user name or password")
    expect(page.locator("#app")).to_be_hidden()

    _log_in(page, "alice", "alice-pw-123")
    expect(page.locator("#whoami")).to_have_text("alice member")
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#nav-users")).to_be_hidden()  # members have no users page
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["tf_session"]["httpOnly"] and cookies["tf_session"]["sameSite"] == "Strict"

    # Bob's job: listed with its owner, its name as text, and no cancel button for alice.
    bobs_row = page.locator(f"#jobs-body tr[data-id='{bobs_id}']")
    expect(bobs_row.locator("td.owner")).to_have_text("bob")
    expect(bobs_row.locator("td.name")).to_have_text(BOBS_JOB_NAME)
    expect(bobs_row.locator("button.cancel")).to_have_count(0)

    # Its details are not alice's to read (visibility own): status and owner, no log pane.
    bobs_row.click()
    expect(page.locator("#detail .summary")).to_contain_text("owner bob")
    expect(page.locator("#detail .hidden-note")).to_be_visible()
    expect(page.locator("#detail .log")).to_have_count(0)
    expect(page.locator("#detail .artifacts")).to_have_count(0)
    expect(page.locator("#detail button.danger")).to_be_hidden()

    # Alice submits a slow printer through the form; it opens and its live log fills in.
    form = page.locator("#submit-form")
    form.locator("input[name=name]").fill("alice-printer")
    form.locator("input[name=kind][value=command]").check()
    form.locator("input[name=command]").fill(SLOW_PRINTER)
    form.locator("select[name=queue]").select_option("cpu")
    form.locator("button[type=submit]").click()
    expect(form.locator(".result")).to_contain_text("Submitted job #")
    alices_id = int(form.locator(".result").inner_text().split("#")[1].rstrip("."))
    expect(page.locator("#detail h2")).to_have_text(f"Job #{alices_id} · alice-printer")
    expect(page.locator("#detail .log-line", has_text="line 3 ")).to_have_text(
        f"line 3 {MARKUP}", timeout=90_000
    )
    assert page.locator("#injected").count() == 0
    expect(page.locator("#detail .log-head")).to_contain_text("live")
    alices_row = page.locator(f"#jobs-body tr[data-id='{alices_id}']")
    expect(alices_row.locator("td.owner")).to_have_text("alice")
    expect(alices_row.locator(".badge")).to_have_text("running")
    # Drawn by uPlot on canvas, three series (train_loss, val_loss, val_acc) in its legend.
    chart = page.locator("#detail .chart-wrap[data-chart=uplot]")
    expect(chart).to_have_attribute("data-series", "3")
    expect(chart.locator(".uplot canvas")).to_have_count(1)
    expect(chart.locator(".u-legend .u-series")).to_have_count(4)  # the x (epoch) row and the three
    fill = alices_row.locator(".progress-fill")
    expect(fill).to_have_count(1)
    assert float(fill.evaluate("(node) => parseFloat(node.style.width)")) > 0

    # "mine": only alice's jobs.
    page.locator("#filter-mine").check()
    expect(bobs_row).to_have_count(0)
    expect(alices_row).to_have_count(1)
    page.locator("#filter-mine").uncheck()
    expect(bobs_row).to_have_count(1)
    screenshot(page, "dashboard-member")

    # Cancelled from its row (a cookie-authenticated POST the browser gives our Origin).
    alices_row.locator("button.cancel").click()
    expect(alices_row.locator(".badge")).to_have_text("cancelled", timeout=60_000)
    expect(alices_row.locator("button.cancel")).to_have_count(0)
    expect(page.locator("#detail .summary .badge")).to_have_text("cancelled")
    assert wait_status(api, alices_id, {"cancelled"})["owner"] == "alice"
    assert api.get(f"/jobs/{bobs_id}").json()["status"] == "queued"
    watch.check(page)

    # Logging out ends the session on the master too, and shows the login page again.
    page.locator("#logout").click()
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("fetch('/api/auth/me').then((r) => r.status)") == 401
    page.reload()
    expect(page.locator("#login")).to_be_visible()
    watch.check(page)


def _admin_manages_users(
    master: MasterProcess, api: httpx.Client, open_page: Callable[[str], tuple[Any, PageWatch]]
) -> None:
    from playwright.sync_api import expect

    admin = master.credentials.user
    page, watch = open_page(master.url)
    _log_in(page, admin, master.credentials.password)
    expect(page.locator("#whoami")).to_have_text(f"{admin} admin")
    page.locator("#nav-users").click()
    expect(page.locator("#users-view")).to_be_visible()
    expect(page.locator("#dashboard-view")).to_be_hidden()

    bob_row = page.locator("#users-body tr[data-user='bob']")
    expect(bob_row.locator("td.state")).to_have_text("active")
    bob_row.locator("select.role").select_option("viewer")
    bob_row.locator("button.toggle").click()
    expect(bob_row.locator("td.state")).to_have_text("disabled")
    expect(bob_row.locator("select.role")).to_have_value("viewer")
    bob = api.get("/users/bob").json()
    assert (bob["role"], bob["disabled"]) == ("viewer", True)

    form = page.locator("#user-form")
    form.locator("input[name=name]").fill("carol")
    form.locator("select[name=role]").select_option("viewer")
    form.locator("input[name=password]").fill("carol-pw-123")
    form.locator("button[type=submit]").click()
    expect(form.locator(".result")).to_have_text("Added carol (viewer).")
    expect(page.locator("#users-body tr[data-user='carol'] td.state")).to_have_text("active")
    assert api.get("/users/carol").json()["role"] == "viewer"

    # The last active admin cannot demote themself: the master's 409 says so and the role stays.
    me_row = page.locator(f"#users-body tr[data-user='{admin}']")
    me_row.locator("select.role").select_option("member")
    expect(page.locator("#users-message")).to_contain_text("last active admin")
    expect(me_row.locator("select.role")).to_have_value("admin")
    assert api.get(f"/users/{admin}").json()["role"] == "admin"
    watch.check(page)


def _viewer_session(
    master: MasterProcess, open_page: Callable[[str], tuple[Any, PageWatch]], bobs_id: int
) -> None:
    from playwright.sync_api import expect

    page, watch = open_page(master.url)
    _log_in(page, "carol", "carol-pw-123")
    expect(page.locator("#whoami")).to_have_text("carol viewer")
    expect(page.locator(f"#jobs-body tr[data-id='{bobs_id}'] td.owner")).to_have_text("bob")
    expect(page.locator("#submit")).to_be_hidden()  # viewers submit nothing
    expect(page.locator("#upload-form")).to_be_hidden()
    expect(page.locator("#jobs-body button.cancel")).to_have_count(0)
    watch.check(page)


@sqlite_only
def test_a_queued_job_says_why_it_waits_and_the_fair_share_panel_shows_its_owner(
    master: MasterProcess, api: httpx.Client, open_page: Callable[[str], tuple[Any, PageWatch]]
) -> None:
    """No worker online: the job waits for one, and the page says so in the list, the detail and the panel."""
    from playwright.sync_api import expect

    made = api.post("/users", json={"name": "dora", "role": "member", "password": "dora-pw-123"})
    assert made.status_code == 201, made.text
    with master.client(token=_token_for(master, "dora", "dora-pw-123")) as dora:
        submitted = dora.post("/jobs", json={"command": ["python", "-c", "1"], "queue": "cpu"})
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
    reason = "waiting: no worker online takes jobs from queue cpu"

    page, watch = open_page(master.url)
    _log_in(page, "dora", "dora-pw-123")
    expect(page.locator("#whoami")).to_have_text("dora member")
    row = page.locator(f"#jobs-body tr[data-id='{job_id}']")
    # The list drops the "waiting: " its queued badge already says; the title keeps the sentence.
    expect(row.locator(".wait-reason")).to_have_text("no worker online takes jobs from queue cpu")
    expect(row.locator(".wait-reason")).to_have_attribute("title", reason)

    row.click()
    expect(page.locator("#detail .wait-reason-detail")).to_have_text(reason)
    expect(page.locator("#detail .preemptions")).to_have_count(0)

    expect(page.locator("#fairshare .fairshare-queue[data-queue=cpu]")).to_have_text(
        "cpu 0 slots (0 in use), 1 waiting, 0 workers"
    )
    cells = page.locator("#fairshare-body tr[data-user=dora][data-queue=cpu] td")
    expect(cells).to_have_text(["dora", "cpu", "0/no cap", "1/2000", "0.00", "0"])
    watch.check(page)
