"""/metrics behind auth: Prometheus scrapes with the farm's scrape token (or an admin's), nobody
else reads it, and the scrape itself never shows a token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from shared.settings import Settings
from trainfarm.services.farm import MasterProcess

SCRAPE_TOKEN = "scrape-token-for-prometheus-0123456789"
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_token": SecretStr(SCRAPE_TOKEN)})


@pytest.fixture
def member_token(master: MasterProcess, api: httpx.Client) -> Iterator[str]:
    api.post("/users", json={"name": "mia", "role": "member", "password": "mia-password"}).raise_for_status()
    login = httpx.post(
        f"{master.url}/api/auth/login", data={"username": "mia", "password": "mia-password"}, timeout=30
    )
    login.raise_for_status()
    yield login.json()["access_token"]


def scrape(master: MasterProcess, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{master.url}/metrics", headers=headers, timeout=30)


def test_metrics_answer_the_scrape_token_and_admins_only(master: MasterProcess, member_token: str):
    anonymous = scrape(master, None)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"].lower().startswith("bearer")
    assert scrape(master, "tf_not-a-real-token").status_code == 401
    assert scrape(master, member_token).status_code == 401

    by_scraper = scrape(master, SCRAPE_TOKEN)
    by_admin = scrape(master, master.token)
    for answer in (by_scraper, by_admin):
        assert answer.status_code == 200, answer.text
        # A real scrape: the request counters the master keeps are in it.
        assert "trainfarm_" in answer.text
        for secret in (SCRAPE_TOKEN, master.token, member_token, member_token[:16]):
            assert secret not in answer.text
