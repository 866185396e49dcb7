"""The submission and listing baseline: a bare FastAPI app served by the same uvicorn command as
the master. POST inserts one row and publishes one Celery message; GET reads one page of rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, FastAPI, Request
from sqlalchemy import JSON, Column, text
from sqlmodel import Field, Session, SQLModel

from master.db import make_engine
from shared.celery_config import celery_config
from shared.settings import get_settings


class BareJob(SQLModel, table=True):
    __tablename__ = "bare_jobs"

    id: int | None = Field(default=None, primary_key=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSON))


def _session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


def create_app() -> FastAPI:
    settings = get_settings()
    engine = make_engine(settings.database_url)
    SQLModel.metadata.create_all(engine, tables=[BareJob.__table__])  # type: ignore[list-item]
    celery = Celery("bench-bare-api")
    celery.conf.update(celery_config(settings))
    app = FastAPI()
    app.state.engine = engine

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/jobs", status_code=201)
    def submit(spec: dict[str, Any], s: SessionDep) -> dict[str, Any]:
        job = BareJob(spec=spec)
        s.add(job)
        s.commit()
        celery.send_task(
            "bench.bare", kwargs={"job_id": job.id, "spec": spec}, queue=spec.get("queue", "cpu")
        )
        return {"id": job.id, "spec": spec}

    @app.get("/jobs")
    def page(s: SessionDep, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        # The same rows the master pages through (its `jobs` table), read with plain SQL.
        query = "SELECT * FROM jobs WHERE id < :before ORDER BY id DESC LIMIT :limit"
        rows = s.execute(text(query), {"before": before or 2**62, "limit": limit + 1}).mappings().all()
        items = [dict(r) for r in rows[:limit]]
        return {"items": items, "next_before": items[-1]["id"] if len(rows) > limit else None}

    return app
