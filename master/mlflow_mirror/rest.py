"""A small client of MLflow's REST API (api/2.0/mlflow), the calls the mirror makes and no more.

Not the `mlflow` package: it pins its own SQLAlchemy, alembic and FastAPI, which would fight the
master's. Credentials in the tracking URI (`https://user:pass@host`) are sent as basic auth and
never appear in a URL, an error or a log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from shared.errors import FinalError, RetryableError
from shared.redaction import redact_url

#: Seconds one call may take; the mirror runs in a thread of its own, so a slow server only slows it.
REQUEST_TIMEOUT = 10.0
#: What one runs/log-batch call may carry (MLflow's documented limits).
BATCH_METRICS = 1000
BATCH_PARAMS = 100
BATCH_TAGS = 100
#: 4xx answers that a later try may not get: credentials being fixed, a proxy's rate limit.
RETRIED_CLIENT_ERRORS = frozenset({401, 403, 408, 409, 425, 429})


class MlflowUnavailable(RetryableError):
    """MLflow is down, timed out, or answered 5xx (or a 4xx in RETRIED_CLIENT_ERRORS): try again later."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        #: No answer at all (refused, reset, timed out), rather than an error answer.
        self.unreachable = unreachable


class MlflowRefused(FinalError):
    """MLflow refused the request itself (a bad parameter, a deleted run): sending it again would
    get the same answer."""

    def __init__(self, message: str, error_code: str | None) -> None:
        super().__init__(message)
        self.error_code = error_code


def split_credentials(uri: str) -> tuple[str, httpx.BasicAuth | None]:
    """The tracking URI without its user info, and that user info as basic auth."""
    parts = urlsplit(uri.rstrip("/"))
    if parts.username is None:
        return parts.geturl(), None
    host = parts.netloc.rpartition("@")[2]
    auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
    return parts._replace(netloc=host).geturl(), auth


class MlflowClient:
    """The tracking server at `tracking_uri`; `transport` lets a caller share or replace the
    connection pool."""

    def __init__(self, tracking_uri: str, transport: httpx.BaseTransport | None = None) -> None:
        base, auth = split_credentials(tracking_uri)
        self.server = redact_url(tracking_uri)
        self._http = httpx.Client(
            base_url=f"{base}/api/2.0/mlflow/",
            auth=auth,
            timeout=REQUEST_TIMEOUT,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:  # the base URL carries no password: safe to quote
            text = f"MLflow at {self.server}: {type(exc).__name__}: {exc}"
            raise MlflowUnavailable(text, unreachable=True) from None
        if response.is_success:
            try:
                body: dict[str, Any] = response.json() if response.content else {}
            except ValueError:  # a proxy's page, not MLflow
                raise MlflowUnavailable(f"MLflow {path}: {response.status_code} answer is not JSON") from None
            return body
        try:
            error = response.json()
        except ValueError:
            error = {}
        code = error.get("error_code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        text = f"MLflow {path}: {response.status_code} {code or ''} {message or response.text[:200]}".strip()
        if response.status_code >= 500 or response.status_code in RETRIED_CLIENT_ERRORS:
            raise MlflowUnavailable(text)
        raise MlflowRefused(text, code)

    def ping(self) -> None:
        """Raise MlflowUnavailable unless the server answers (an error answer counts)."""
        with contextlib.suppress(MlflowRefused):  # it answered: that is all a ping asks
            self._call("GET", "experiments/search", params={"max_results": 1})

    def experiment_id(self, name: str) -> str:
        """The id of the experiment `name`, created if missing."""
        try:
            found = self._call("GET", "experiments/get-by-name", params={"experiment_name": name})
            return str(found["experiment"]["experiment_id"])
        except MlflowRefused as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self._call("POST", "experiments/create", json={"name": name})["experiment_id"])
        except MlflowRefused as exc:  # another master created it since we looked
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = self._call("GET", "experiments/get-by-name", params={"experiment_name": name})
        return str(found["experiment"]["experiment_id"])

    def create_run(
        self, experiment_id: str, name: str, start_time: int, user: str | None, tags: dict[str, str]
    ) -> str:
        body = {
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": start_time,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if user:
            body["user_id"] = user
        return str(self._call("POST", "runs/create", json=body)["run"]["info"]["run_id"])

    def find_run(self, experiment_id: str, tag: str, value: str) -> str | None:
        """A live run of the experiment whose tag `tag` is `value`, if there is one."""
        quoted = value.replace("'", "\\'")
        body = {
            "experiment_ids": [experiment_id],
            "filter": f"tags.`{tag}` = '{quoted}'",
            "run_view_type": "ACTIVE_ONLY",
            "max_results": 1,
        }
        runs = self._call("POST", "runs/search", json=body).get("runs", [])
        return str(runs[0]["info"]["run_id"]) if runs else None

    def log_batch(
        self,
        run_id: str,
        *,
        metrics: Sequence[dict[str, Any]] = (),
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Metrics, params and tags in as few calls as MLflow's per-call limits allow."""
        param_items = [{"key": k, "value": v} for k, v in (params or {}).items()]
        tag_items = [{"key": k, "value": v} for k, v in (tags or {}).items()]
        while metrics or param_items or tag_items:
            body = {
                "run_id": run_id,
                "metrics": list(metrics[:BATCH_METRICS]),
                "params": param_items[:BATCH_PARAMS],
                "tags": tag_items[:BATCH_TAGS],
            }
            self._call("POST", "runs/log-batch", json=body)
            metrics = metrics[BATCH_METRICS:]
            param_items, tag_items = param_items[BATCH_PARAMS:], tag_items[BATCH_TAGS:]

    def end_run(self, run_id: str, status: str, end_time: int) -> None:
        self._call("POST", "runs/update", json={"run_id": run_id, "status": status, "end_time": end_time})

    def search_runs(self, experiment_ids: list[str], filter_string: str = "") -> list[dict[str, Any]]:
        """Runs of the experiments (for tests and operators: the mirror itself never reads runs back)."""
        body = {"experiment_ids": experiment_ids, "filter": filter_string, "max_results": 1000}
        runs: list[dict[str, Any]] = self._call("POST", "runs/search", json=body).get("runs", [])
        return runs

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        found = self._call("GET", "metrics/get-history", params={"run_id": run_id, "metric_key": key})
        history: list[dict[str, Any]] = found.get("metrics", [])
        return history
