"""A typed wrapper over the master's REST API, one method per route; the CLI's only way in."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from shared.errors import TrainfarmError

#: Called with (bytes done, bytes in all or None when unknown) as a transfer moves on.
Progress = Callable[[int, int | None], None]

CHUNK = 1024 * 1024
#: The master sends a keepalive every 15 s, so a silent minute means the stream is dead.
STREAM_READ_TIMEOUT = 60.0


class ApiError(TrainfarmError):
    """The master answered with an error body: `{"error", "message", "field"}`."""

    def __init__(self, status: int, message: str, field: str | None = None, error: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.error = error


class ApiUnreachable(TrainfarmError):
    """No answer from the master at all: refused, timed out, or cut off."""

    def __init__(self, url: str, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"cannot reach the trainfarm master at {url}{detail}: is the master running? "
            "set TRAINFARM_API_URL or --api-url"
        )
        self.url = url


class ApiRateLimited(ApiError):
    """A 429: `retry_after` (the Retry-After header, seconds) says when to try again, if it was sent."""

    def __init__(self, error: ApiError, retry_after: int | None) -> None:
        super().__init__(error.status, error.message, error.field, error.error)
        self.retry_after = retry_after


class ChecksumMismatch(TrainfarmError):
    """A download's bytes do not hash to what the master recorded."""


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """Server-Sent Events from text lines: (event name, data, id); comments are skipped."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        raise ApiError(response.status_code, str(body["message"]), body.get("field"), body.get("error"))
    # Not the master's error shape: a proxy, or something else listening at that address.
    text = response.text.strip()
    detail = f": {text}" if text and "\n" not in text and len(text) < 200 else ""
    raise ApiError(
        response.status_code,
        f"HTTP {response.status_code} {response.reason_phrase} from {response.url}{detail}",
    )


def _file_chunks(path: Path, progress: Progress | None, total: int) -> Iterator[bytes]:
    # A generator, so httpx sends the file piece by piece and memory stays at one chunk.
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            done += len(chunk)
            yield chunk
            if progress:
                progress(done, total)


class ApiClient:
    """Talks to one master.

    :param base_url: The master's address, e.g. ``http://127.0.0.1:8000`` (a trailing ``/api`` is
        accepted too); routes are requested under ``<base_url>/api``.
    :param timeout: Seconds to wait for a connection and for each read.
    :param token: An API token, sent as ``Authorization: Bearer``; None sends none.
    :param transport: An httpx transport to use instead of the network (tests).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 30,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/api")
        #: Where the token came from, for messages (`trainfarm whoami`); "" without one.
        self.token_source = ""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api", timeout=timeout, transport=transport, headers=headers
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Plumbing -------------------------------------------------------------------------------------

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(method, path, **kwargs) as response:
                _raise_for_error(response)
                yield response
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._stream(method, path, **kwargs) as response:
            response.read()
        try:
            return response.json()
        except ValueError:
            # Something answers at that address, but not a trainfarm master.
            raise ApiError(response.status_code, f"{response.url} did not answer with JSON") from None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request to the API (`path` under /api), its JSON answer; errors as ApiError. The
        commands of one feature (sweeps, webhooks) keep their calls beside them with this."""
        return self._call(method, path, **kwargs)

    # Jobs -----------------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/jobs", json=spec)

    def submit_batch(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._call("POST", "/jobs/batch", json={"jobs": specs})

    def list_jobs(
        self,
        status: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        before: int | None = None,
        owner: str | None = None,
        project: str | None = None,
        tags: list[str] | None = None,
        sweep: int | None = None,
    ) -> dict[str, Any]:
        """One page of jobs; `owner` is a user's name, or `me` for the caller's own; a job must carry
        every one of `tags`; `sweep` keeps that sweep's trials."""
        params: dict[str, Any] = {
            "status": status,
            "queue": queue,
            "limit": limit,
            "before": before,
            "owner": owner,
            "project": project,
            "tag": tags or None,
            "sweep": sweep,
        }
        return self._call("GET", "/jobs", params={k: v for k, v in params.items() if v is not None})

    def iter_jobs(
        self,
        status: str | None = None,
        queue: str | None = None,
        page_size: int = 100,
        owner: str | None = None,
        project: str | None = None,
        tags: list[str] | None = None,
        sweep: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every matching job, newest first, following `next_before` from page to page."""
        before = None
        while True:
            page = self.list_jobs(status, queue, page_size, before, owner, project, tags, sweep)
            yield from page["items"]
            before = page["next_before"]
            if before is None:
                return

    def get_job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def metrics(self, job_id: int, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        return self._call("GET", f"/jobs/{job_id}/metrics", params={"limit": limit, "offset": offset})

    def rerun(self, job_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Submit the job again with `changes` to its spec; the new job records where it came from."""
        return self._call("POST", f"/jobs/{job_id}/rerun", json={"changes": changes})

    def compare(
        self, job_ids: list[int], x: str = "step", points: int = 500, metrics: list[str] | None = None
    ) -> dict[str, Any]:
        """Several jobs side by side: series per metric, spec fields, final metrics (GET /api/compare)."""
        params: dict[str, Any] = {"jobs": ",".join(str(i) for i in job_ids), "x": x, "points": points}
        if metrics:
            params["metric"] = metrics
        return self._call("GET", "/compare", params=params)

    # Logs -----------------------------------------------------------------------------------------

    def logs(self, job_id: int, after: str | None = None, limit: int = 1000) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return self._call("GET", f"/jobs/{job_id}/logs", params=params)

    def stream_logs(
        self, job_id: int, after: str | None = None, reconnect_for: float = 60.0
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """SSE events (`log`, then `end`) until the `end` event.

        A connection that drops before `end` is reopened after the last event id seen, so no line
        is lost or repeated; after `reconnect_for` seconds without getting through, ApiUnreachable.
        """
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        connected = False
        failing_since: float | None = None
        while True:
            params = {"after": after} if after else {}
            try:
                with self._stream("GET", f"/jobs/{job_id}/logs/stream", params=params, timeout=timeout) as r:
                    connected = True
                    for event, data, event_id in parse_sse(r.iter_lines()):
                        failing_since = None
                        after = event_id or after
                        yield event, json.loads(data)
                        if event == "end":
                            return
                error = ApiUnreachable(self.base_url, "the log stream closed before the job's end")
            except ApiUnreachable as exc:
                if not connected:  # never got through: say so now rather than retry for a minute
                    raise
                error = exc
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > reconnect_for:
                raise error
            time.sleep(0.5)

    # Artifacts ------------------------------------------------------------------------------------

    def list_artifacts(self, job_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/jobs/{job_id}/artifacts")

    def download_artifact(self, job_id: int, name: str, dest: Path, progress: Progress | None = None) -> Path:
        """Save one artifact at `dest`; a partial or corrupt download never appears there."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        url = f"/jobs/{job_id}/artifacts/{quote(name, safe='/')}"
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest, done = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as fh, self._stream("GET", url) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length else None
                for chunk in response.iter_bytes(CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                expected = response.headers.get("X-Checksum-SHA256")
            if expected and digest.hexdigest() != expected.lower():
                raise ChecksumMismatch(
                    f"artifact '{name}' of job {job_id}: sha256 {digest.hexdigest()} != {expected}"
                )
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    # Datasets, nodes, health ----------------------------------------------------------------------

    def upload_dataset(
        self, path: Path, name: str | None = None, overwrite: bool = False, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Stream a file to the master as a dataset named `name` (default: the file's name)."""
        size = path.stat().st_size
        params = {"name": name or path.name, "overwrite": str(overwrite).lower()}
        # Content-Length instead of chunked encoding: the server and any proxy know the size up front.
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        timeout = httpx.Timeout(self._http.timeout.connect, read=300.0, write=300.0)
        return self._call(
            "POST",
            "/datasets",
            params=params,
            headers=headers,
            content=_file_chunks(path, progress, size),
            timeout=timeout,
        )

    # Code bundles ---------------------------------------------------------------------------------

    def code_bundle(self, digest: str) -> dict[str, Any] | None:
        """The stored bundle with this SHA-256 (`digest`, `size`), or None when the master has none."""
        try:
            return self._call("GET", f"/code/{digest}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def upload_code_bundle(self, path: Path, digest: str, progress: Progress | None = None) -> dict[str, Any]:
        """Send a packed bundle; the master stores it only if its bytes hash to `digest`."""
        size = path.stat().st_size
        headers = {"Content-Length": str(size), "Content-Type": "application/gzip"}
        timeout = httpx.Timeout(self._http.timeout.connect, read=300.0, write=300.0)
        return self._call(
            "PUT",
            f"/code/{digest}",
            headers=headers,
            content=_file_chunks(path, progress, size),
            timeout=timeout,
        )

    def list_datasets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/datasets")

    def get_dataset(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/datasets/{quote(name, safe='')}")

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._call("GET", "/nodes")

    def health(self) -> dict[str, Any]:
        """The master's checks; a degraded farm answers 503 with the same body, which is no error here."""
        try:
            response = self._http.get("/health")
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, type(exc).__name__) from exc
        if response.status_code != 503:
            _raise_for_error(response)
        return response.json()

    # Login, users, tokens, audit ------------------------------------------------------------------

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Trade a user name and password for a login token: `{access_token, expires_at}`.

        A 429 (too many failed logins from this address) is ApiRateLimited, carrying Retry-After.
        """
        form = {"username": username, "password": password}
        try:
            response = self._http.post("/auth/login", data=form)
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        try:
            _raise_for_error(response)
        except ApiError as exc:
            if exc.status != 429:
                raise
            retry = response.headers.get("Retry-After", "")
            raise ApiRateLimited(exc, int(retry) if retry.isdigit() else None) from None
        return response.json()

    def me(self) -> dict[str, Any]:
        """Who the token belongs to: `{name, role, auth_enabled, job_visibility}`."""
        return self._call("GET", "/auth/me")

    def list_tokens(
        self, user: str | None = None, every_user: bool = False, revoked: bool = False
    ) -> list[dict[str, Any]]:
        """The caller's tokens, or (admins) `user`'s, or everyone's with `every_user`; newest first."""
        params: dict[str, Any] = {"revoked": "true"} if revoked else {}
        if every_user:
            return self._call("GET", "/tokens/all", params=params)
        if user is not None:
            params["user"] = user
        return self._call("GET", "/tokens", params=params)

    def create_token(self, name: str, expires_in_days: int | None = None) -> dict[str, Any]:
        """A new API token of the caller's; its value (`token`) is in this answer only."""
        body: dict[str, Any] = {"name": name}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return self._call("POST", "/tokens", json=body)

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        return self._call("DELETE", f"/tokens/{token_id}")

    def list_users(self) -> list[dict[str, Any]]:
        return self._call("GET", "/users")

    def create_user(self, name: str, role: str, password: str) -> dict[str, Any]:
        return self._call("POST", "/users", json={"name": name, "role": role, "password": password})

    def get_user(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/users/{quote(name, safe='')}")

    def update_user(
        self,
        name: str,
        *,
        role: str | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> dict[str, Any]:
        """Change what is given, leave the rest."""
        changes = {"role": role, "disabled": disabled, "password": password}
        body = {k: v for k, v in changes.items() if v is not None}
        return self._call("PATCH", f"/users/{quote(name, safe='')}", json=body)

    def audit(
        self,
        limit: int = 50,
        before: int | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> dict[str, Any]:
        """One page of the audit trail, newest first: `{items, next_before}`."""
        params = {"limit": limit, "before": before, "actor": actor, "action": action}
        return self._call("GET", "/audit", params={k: v for k, v in params.items() if v is not None})

    def iter_audit(
        self, actor: str | None = None, action: str | None = None, page_size: int = 200
    ) -> Iterator[dict[str, Any]]:
        """Every matching audit entry, newest first, page after page."""
        before = None
        while True:
            page = self.audit(page_size, before, actor, action)
            yield from page["items"]
            before = page["next_before"]
            if before is None:
                return

    def fairshare(self) -> dict[str, Any]:
        """Each queue's capacity and each user's share, as admission last decided them."""
        return self._call("GET", "/fairshare")

    def user_limits(self, name: str) -> list[dict[str, Any]]:
        """The user's caps on every queue, and where each comes from (`limits_from`)."""
        return self._call("GET", f"/users/{quote(name, safe='')}/limits")

    def set_user_limits(
        self, name: str, queue: str, max_devices: int | None, max_queued: int | None
    ) -> list[dict[str, Any]]:
        """Set both caps of one queue (None: the farm's default); answers the caps on every queue."""
        body = {"max_devices": max_devices, "max_queued": max_queued}
        return self._call("PUT", f"/users/{quote(name, safe='')}/limits/{queue}", json=body)
