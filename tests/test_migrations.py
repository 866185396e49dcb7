"""Schema migrations on SQLite and PostgreSQL: a database made at commit 8bdff0f (a real dump, see
tests/fixtures/make_schema_8bdff0f.py) and ones `create_all` made later reach head with every row
kept; an empty one upgrades from nothing; the models agree with what the migrations make; two
upgraders at once run the upgrade once; `trainfarm db` and an installed package work."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine, MetaData, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, select
from typer.testing import CliRunner

from master import migrations
from master.db import init_db, make_engine
from master.migrations import adopt
from master.migrations.compare import diff, render_item
from master.models import Job, JobAttempt, JobPublic, JobUsage, StatusColumn
from shared.status import JobStatus
from tests.conftest import wait_for
from trainfarm.cli import app
from trainfarm.services.farm import MasterProcess

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: The newest revision, and how the CLI names it.
HEAD = migrations.scripts().get_current_head()
NEWEST = migrations.describe(HEAD)
#: Each table of the 8bdff0f fixture, its key, and how many rows the fixture holds.
TABLES = {
    "jobs": ("id", 4),
    "job_attempts": ("id", 5),
    "job_metrics": ("id", 3),
    "artifacts": ("id", 2),
    "datasets": ("id", 2),
    "nodes": ("name", 2),
}
runner = CliRunner()


def engine_for(url: str) -> Engine:
    return make_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def load_8bdff0f(url: str) -> None:
    """Restore the 8bdff0f dump into the empty database at `url`, outside SQLAlchemy, as an
    operator's existing master.db or PostgreSQL database would be."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(make_url(url).database or "")
        conn.executescript((FIXTURES / "schema_8bdff0f.sqlite.sql").read_text())
        conn.close()
    else:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as pg:
            pg.execute((FIXTURES / "schema_8bdff0f.postgresql.sql").read_text().encode())


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {
            table: [dict(row._mapping) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY {key}"))]
            for table, (key, _) in TABLES.items()
        }


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value  # SQLite hands JSON back as text


# Upgrades keep every row ---------------------------------------------------------------------------


def test_8bdff0f_database_upgrades_to_head_with_every_row_kept(database_url):
    load_8bdff0f(database_url)
    engine = engine_for(database_url)
    before = snapshot(engine)
    assert {table: len(rows) for table, rows in before.items()} == {t: n for t, (_, n) in TABLES.items()}
    assert "handbacks" not in before["jobs"][0]
    assert migrations.state(engine) == migrations.DatabaseState(None, "0001", HEAD)

    init_db(engine)  # what the master runs at start

    assert migrations.state(engine) == migrations.DatabaseState(HEAD, None, HEAD)
    after = snapshot(engine)
    for table, rows in before.items():
        kept = [{column: row[column] for column in rows[0]} for row in after[table]]
        assert kept == rows, table
    assert [(row["handbacks"], as_json(row["warnings"])) for row in after["jobs"]] == [(0, [])] * 4
    with engine.connect() as conn:
        assert diff(conn) == []

    # Today's models read the old rows, values and types intact, and the ids carry on.
    with Session(engine) as session:
        jobs = session.exec(select(Job).order_by(Job.id)).all()  # type: ignore[arg-type]
        public = [JobPublic.model_validate(job) for job in jobs]
        assert [(j.id, j.name, j.status) for j in public] == [
            (1, "digits-mlp", JobStatus.SUCCEEDED),
            (2, None, JobStatus.FAILED),
            (3, "queued, \"quoted\" 'name'", JobStatus.QUEUED),
            (4, "running", JobStatus.RUNNING),
        ]
        assert public[0].spec["hyperparameters"] == {"target": "digit", "lr": 0.003}
        assert public[0].created_at == datetime(2026, 11, 23, 12, 1, 0, 250000, tzinfo=UTC)
        assert (public[1].node, public[1].error) == ("node-ä", "exited with code 3\nsee the log")
        assert public[2].cancel_requested is True
        job = Job(queue="cpu", spec={"command": ["true"]})
        session.add(job)
        session.commit()
        session.add(JobAttempt(job_id=job.id, number=1))
        session.commit()
        assert (job.id, job.handbacks, job.warnings) == (5, 0, [])
    engine.dispose()


@pytest.mark.parametrize(("era", "revision"), [("c0411ab", "0002"), ("712b682", "0003")])
def test_later_unversioned_databases_are_recognised_and_reach_head(database_url, era, revision):
    """Databases `create_all` made after 8bdff0f, before migrations: stamped where they are."""
    engine = engine_for(database_url)
    # Today's tables of that era, less what came with migrations (users, tokens, owners: 0004;
    # the attempt's worker: 0005; fair share: 0006; experiments: 0007).
    SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables[t] for t in adopt.TABLES])
    with Session(engine) as session:
        session.add(Job(queue="gpu", spec={"command": ["true"]}, handbacks=2, warnings=["log cut"]))
        session.commit()
    with engine.begin() as conn:
        for index in ("notified", "project", "rerun_of", "sweep_id", "summarized"):  # 0007
            conn.execute(text(f"DROP INDEX ix_jobs_{index}"))
        for column in (
            "project",
            "tags",
            "rerun_of",
            "sweep_id",
            "trial",
            "pruning",
            "notified",
            "summarized",
        ):
            conn.execute(text(f"ALTER TABLE jobs DROP COLUMN {column}"))
        conn.execute(text("DROP INDEX ix_jobs_owner_status_queue"))  # 0006
        conn.execute(text("DROP INDEX ix_job_attempts_status_admitted_at"))
        for column in ("devices", "preemptible", "preemptions", "preempting", "last_preempted_at"):
            conn.execute(text(f"ALTER TABLE jobs DROP COLUMN {column}"))
        conn.execute(text("ALTER TABLE job_attempts DROP COLUMN admitted_at"))
        conn.execute(text("DROP INDEX ix_jobs_owner"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN owner"))
        conn.execute(text("ALTER TABLE datasets DROP COLUMN owner"))
        conn.execute(text("ALTER TABLE job_attempts DROP COLUMN worker"))  # 0005
        if era == "c0411ab":  # its jobs table was 712b682's without `warnings`
            conn.execute(text("ALTER TABLE jobs DROP COLUMN warnings"))

    assert migrations.state(engine) == migrations.DatabaseState(None, revision, HEAD)
    init_db(engine)

    assert migrations.state(engine).at_head
    with engine.connect() as conn:
        assert diff(conn) == []
        [(handbacks, warnings)] = conn.execute(text("SELECT handbacks, warnings FROM jobs")).all()
    assert (handbacks, as_json(warnings)) == (2, [] if era == "c0411ab" else ["log cut"])
    engine.dispose()


def test_empty_database_upgrades_from_nothing_and_matches_the_models(database_url):
    engine = engine_for(database_url)
    assert migrations.state(engine) == migrations.DatabaseState(None, None, HEAD)
    before, after = migrations.upgrade(engine)
    assert (before.revision, after.revision) == (None, HEAD)
    with engine.connect() as conn:
        # The agreement check: a model column, index or type that no migration makes shows here.
        assert diff(conn) == []
    assert migrations.upgrade(engine)[0].revision == HEAD  # a second start has nothing to do
    engine.dispose()


def test_a_database_newer_than_this_trainfarm_is_refused_in_one_line(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'master.db'}")
    migrations.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(migrations.MigrationError, match="revision 0099, which this trainfarm does not know"):
        migrations.upgrade(engine)
    engine.dispose()


def test_tables_that_are_not_a_trainfarm_schema_are_refused(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'master.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE jobs (id INTEGER PRIMARY KEY)"))
    with pytest.raises(migrations.MigrationError, match="not made by trainfarm"):
        migrations.upgrade(engine)
    engine.dispose()


# The agreement check itself ------------------------------------------------------------------------


def test_agreement_check_finds_a_model_change_that_has_no_migration(tmp_path):
    """What the `diff(conn) == []` assertions above rely on: they fail when a model gains a column
    or changes a type without a migration."""
    engine = make_engine(f"sqlite:///{tmp_path / 'master.db'}")
    migrations.upgrade(engine)
    changed = MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["jobs"].append_column(sa.Column("colour", sa.String(64), nullable=True))
    changed.tables["nodes"].c["name"].type = sa.Text()
    with engine.connect() as conn:
        found = diff(conn, changed)
    assert [d[0] if isinstance(d, tuple) else d[0][0] for d in found] == ["add_column", "modify_type"]
    assert found[0][2:4] == ("jobs", changed.tables["jobs"].c["colour"])
    engine.dispose()


def test_new_migrations_are_written_with_plain_sqlalchemy_types():
    """`python -m master.migrations new` writes decorated columns as what they store as."""
    assert render_item("type", StatusColumn(), None) == "sa.String(length=16)"  # type: ignore[arg-type]
    assert render_item("type", Job.__table__.c["created_at"].type, None) == "sa.DateTime(timezone=True)"  # type: ignore[arg-type]
    assert render_item("type", sa.Integer(), None) is False  # type: ignore[arg-type]


#: Run in a child process, since it changes the models: what an engineer adding a column does.
NEW_REVISION = """
import os, sys
from pathlib import Path
import sqlalchemy as sa
from alembic import command
from sqlmodel.sql.sqltypes import AutoString
from alembic import command

from master import migrations
from master.db import make_engine
from master.migrations.__main__ import main, new
from master.migrations.compare import diff
from master.models import Job

into = Path(sys.argv[1])
assert main(["check"]) == 0
Job.__table__.append_column(sa.Column("colour", AutoString(length=64), nullable=True))
assert main(["check"]) == 1
path = new("jobs.colour", into)
engine = make_engine(f"sqlite:///{into / 'fresh.db'}")
with engine.connect() as conn:
    cfg = migrations.config(conn)
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join([str(migrations.HERE / "versions"), str(into)]))
    command.upgrade(cfg, "head")
    conn.commit()
    print(path.name, diff(conn))
"""


def test_a_new_revision_is_written_from_the_models_and_makes_what_they_have(tmp_path):
    """`python -m master.migrations check` / `new`, as the README tells an engineer to use them."""
    done = subprocess.run(
        [sys.executable, "-c", NEW_REVISION, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    following = f"{int(HEAD or 0) + 1:04d}"
    assert done.stdout.splitlines()[-1] == f"{following}_jobs_colour.py []"
    written = (tmp_path / f"{following}_jobs_colour.py").read_text()
    assert f"down_revision = '{HEAD}'" in written
    assert "batch_op.add_column(sa.Column('colour', sa.String(length=64), nullable=True))" in written
    assert "sqlmodel" not in written and "master" not in written


# One upgrade at a time -----------------------------------------------------------------------------


def test_two_masters_upgrading_at_once_run_the_upgrade_once(database_url):
    engines = [engine_for(database_url) for _ in range(2)]
    start = threading.Barrier(2)
    befores: list[str | None] = []
    errors: list[BaseException] = []

    def upgrade(engine: Engine) -> None:
        start.wait()
        try:
            befores.append(migrations.upgrade(engine)[0].revision)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(befores, key=str) == [HEAD, None]  # one made the schema, the other found it made
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_upgrade_waits_for_the_lock_before_touching_anything(database_url):
    engine = engine_for(database_url)
    holder = engine.connect()
    holder.execute(text("SELECT pg_advisory_lock(CAST(:key AS bigint))"), {"key": migrations.LOCK_KEY})
    holder.commit()
    done: list[str | None] = []
    thread = threading.Thread(target=lambda: done.append(migrations.upgrade(engine)[1].revision))
    thread.start()

    def waiting() -> bool:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return holder.execute(text(query)).scalar_one() == 1

    wait_for(waiting, timeout=30, what="the upgrade waiting on the advisory lock")
    assert "alembic_version" not in sa.inspect(holder).get_table_names()
    holder.execute(text("SELECT pg_advisory_unlock(CAST(:key AS bigint))"), {"key": migrations.LOCK_KEY})
    holder.commit()
    thread.join(60)
    assert done == [HEAD]
    holder.close()
    engine.dispose()


# The master and the CLI ----------------------------------------------------------------------------


def test_master_upgrades_an_8bdff0f_database_when_it_starts(settings, tmp_path):
    load_8bdff0f(settings.database_url)
    with MasterProcess(tmp_path / "master", settings) as master:
        api = master.client(timeout=30)
        jobs = sorted(api.get("/jobs").json()["items"], key=lambda job: job["id"])
        assert [(j["id"], j["status"], j["handbacks"], j["warnings"]) for j in jobs] == [
            (1, "succeeded", 0, []),
            (2, "failed", 0, []),
            (3, "queued", 0, []),
            (4, "running", 0, []),
        ]
        detail = api.get("/jobs/1").json()
        assert [(a["number"], a["status"], a["node"]) for a in detail["attempt_list"]] == [
            (1, "failed", "gpu-box-1"),
            (2, "succeeded", "gpu-box-1"),
        ]
        assert {n["name"] for n in api.get("/nodes").json()} == {"gpu-box-1", "node-ä"}
        assert api.post("/jobs", json={"command": ["true"], "queue": "cpu"}).json()["id"] == 5
        api.close()


def db(*args: str):
    result = runner.invoke(app, ["db", *args])
    assert "Traceback" not in result.output, result.output
    return result


def test_db_commands_show_and_upgrade(database_url):
    url = ["--database-url", database_url]
    if database_url.startswith("sqlite"):  # an empty database there is an empty file
        Path(make_url(database_url).database or "").touch()
    assert (
        db("current", *url).stdout == "empty, no schema yet: run `trainfarm db upgrade` or start the master\n"
    )
    upgraded = db("upgrade", *url)
    assert (upgraded.exit_code, upgraded.stdout) == (
        0,
        f"database upgraded from an empty database to {NEWEST}\n",
    )
    assert db("current", *url).stdout == f"{NEWEST}, the newest\n"
    assert db("upgrade", *url).stdout == f"database already at {NEWEST}, the newest\n"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_db_commands_on_an_old_database_and_bad_ones(database_url, tmp_path):
    load_8bdff0f(database_url)
    url = ["--database-url", database_url]
    current = db("current", *url)
    assert current.stdout.startswith("no revision recorded (made before migrations; its schema is at 0001 (")
    upgraded = db("upgrade", *url)
    assert upgraded.stdout.startswith("database upgraded from 0001 (schema of commit 8bdff0f), made before")
    assert db("current", *url).stdout == f"{NEWEST}, the newest\n"

    with sqlite3.connect(make_url(database_url).database or "") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    newer = db("upgrade", *url)
    assert newer.exit_code == 1 and newer.stderr.count("\n") == 1
    assert newer.stderr.startswith("error: the database is at schema revision 0099, which this trainfarm")

    unreachable = db("current", "--database-url", "postgresql://nobody@127.0.0.1:9/none")
    assert unreachable.exit_code == 1 and unreachable.stderr.count("\n") == 1
    assert unreachable.stderr.startswith("error: database postgresql+psycopg://nobody@127.0.0.1:9/none:")
    missing = db("current", "--database-url", f"sqlite:///{tmp_path / 'typo' / 'master.db'}")
    assert (missing.exit_code, missing.stderr.count("\n")) == (1, 1)
    assert missing.stderr.startswith(
        f"error: no database at {tmp_path / 'typo' / 'master.db'}: set TRAINFARM_"
    )
    assert not (tmp_path / "typo").exists()
    bad = db("current", "--database-url", "nonsense")
    assert (bad.exit_code, bad.stderr.count("\n")) == (1, 1)
    assert (
        bad.stderr.startswith("error: invalid database URL 'nonsense'")
        and "(field: database_url)" in bad.stderr
    )


def test_db_help_explains_the_commands():
    shown = db("--help").stdout
    assert "upgrade" in shown and "current" in shown and "when it starts" in shown
    assert "--database-url" in db("upgrade", "--help").stdout


# Installed, not from the checkout -------------------------------------------------------------------


def test_installed_master_migrates_from_any_directory(tmp_path):
    """No alembic.ini, no checkout: the wheel holds the revisions and finds them itself."""
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)], check=True
    )
    [wheel] = wheels.glob("trainfarm-*.whl")
    revisions = [n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("master/migrations/versions/")]
    assert len(revisions) == len(list((ROOT / "master/migrations/versions").glob("*.py")))
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import master.migrations as m; from master.db import make_engine, init_db; "
        "e = make_engine('sqlite:///master.db'); init_db(e); "
        f"print(m.__file__.startswith({str(target)!r}), m.state(e).revision)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", HEAD]


def test_queued_attempts_published_unsigned_are_sent_again_after_the_upgrade(database_url):
    # Published before messages were signed: workers now refuse those copies, so 0005 marks the
    # attempt unpublished and the master's sweep sends a signed one.
    engine = engine_for(database_url)
    with engine.begin() as conn:
        command.upgrade(migrations.config(conn), "0004")
        published = "2026-12-01 10:00:00"
        for job_id, status in ((1, "queued"), (2, "running")):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, status, queue, priority, spec, attempts, cancel_requested, "
                    "created_at, progress, metrics, handbacks, warnings) VALUES "
                    f"({job_id}, '{status}', 'cpu', 5, '{{}}', 1, false, '{published}', '{{}}', '{{}}', 0, '[]')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO job_attempts (job_id, number, status, created_at, enqueued_at, "
                    f"last_event_seq, info) VALUES ({job_id}, 1, '{status}', '{published}', '{published}', 0, '{{}}')"
                )
            )
    init_db(engine)
    with Session(engine) as session:
        attempts = {a.job_id: a for a in session.exec(select(JobAttempt))}
    assert attempts[1].enqueued_at is None
    assert attempts[2].enqueued_at is not None and attempts[2].worker is None
    engine.dispose()


def test_jobs_from_before_fair_share_keep_their_place_after_the_upgrade(database_url):
    """0006: a queued attempt already published counts as admitted (sent once, its devices in use),
    a running one too; one never published waits for admission; devices and preemptible come from
    the spec of every job not ended."""
    engine = engine_for(database_url)
    with engine.begin() as conn:
        command.upgrade(migrations.config(conn), "0005")
        at = "2026-12-01 10:00:00"
        rows = [
            (1, "queued", 3, '{"devices": 2}', at),
            (2, "queued", 5, '{"devices": 1, "preemptible": true}', None),
            (3, "running", 8, '{"devices": 4}', at),
            (4, "succeeded", 1, '{"devices": 4}', at),
        ]
        for job_id, status, priority, spec, enqueued in rows:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, status, queue, priority, spec, attempts, cancel_requested, "
                    "created_at, progress, metrics, handbacks, warnings) VALUES "
                    f"({job_id}, '{status}', 'gpu', {priority}, '{spec}', 1, false, '{at}', '{{}}', '{{}}', 0, '[]')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO job_attempts (job_id, number, status, created_at, enqueued_at, "
                    "last_event_seq, info) VALUES (:job, 1, :status, :at, :enqueued, 0, '{}')"
                ),
                {"job": job_id, "status": status, "at": at, "enqueued": enqueued},
            )
    init_db(engine)
    with Session(engine) as session:
        jobs = {j.id: j for j in session.exec(select(Job))}
        attempts = {a.job_id: a for a in session.exec(select(JobAttempt))}
    assert [(jobs[i].devices, jobs[i].preemptible, jobs[i].preemptions) for i in (1, 2, 3, 4)] == [
        (2, True, 0),  # priority 3: preemptible by default
        (1, True, 0),
        (4, False, 0),  # priority 8
        (1, False, 0),  # ended: never admitted again, left at the defaults
    ]
    assert attempts[1].admitted_at is not None and attempts[3].admitted_at is not None
    assert attempts[2].admitted_at is None and attempts[4].admitted_at is None
    engine.dispose()


def test_jobs_from_before_experiments_are_in_the_default_project_and_their_ends_not_announced(database_url):
    """0007: every job gets the `default` project and no tags; jobs that had ended count as notified
    (nobody asked to hear of them), those still queued or running will be announced when they end;
    no job counts as summarized, so the series loop summarizes the ended ones after the upgrade."""
    engine = engine_for(database_url)
    with engine.begin() as conn:
        command.upgrade(migrations.config(conn), "0006")
        at = "2026-12-01 10:00:00"
        for job_id, status in [
            (1, "succeeded"),
            (2, "failed"),
            (3, "cancelled"),
            (4, "running"),
            (5, "queued"),
        ]:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, status, queue, priority, spec, attempts, cancel_requested, "
                    "created_at, progress, metrics, handbacks, warnings, devices, preemptible, preemptions) "
                    f"VALUES ({job_id}, '{status}', 'gpu', 5, '{{}}', 1, false, '{at}', '{{}}', '{{}}', 0, '[]', "
                    "1, false, 0)"
                )
            )
    init_db(engine)
    with Session(engine) as session:
        jobs = sorted(session.exec(select(Job)), key=lambda j: j.id or 0)
    assert [(j.project, j.tags, j.rerun_of, j.sweep_id, j.pruning) for j in jobs] == [
        ("default", [], None, None, False)
    ] * 5
    assert [j.notified for j in jobs] == [True, True, True, False, False]
    assert [j.summarized for j in jobs] == [False] * 5
    engine.dispose()


def test_jobs_from_before_usage_sampling_keep_their_progress_and_take_samples(database_url):
    """0008: the `job_usage` table is new and empty; a job from before keeps its progress (the usage
    summary will live beside its epoch and step) and takes samples, GPU and CPU, after the upgrade."""
    engine = engine_for(database_url)
    with engine.begin() as conn:
        command.upgrade(migrations.config(conn), "0007")
        conn.execute(
            text(
                "INSERT INTO jobs (id, status, queue, priority, spec, attempts, cancel_requested, created_at, "
                "progress, metrics, handbacks, warnings, devices, preemptible, preemptions, project, tags, "
                "pruning, notified, summarized) VALUES (1, 'running', 'gpu', 5, '{}', 1, false, "
                "'2026-12-01 10:00:00', '{\"epoch\": 2}', '{}', 0, '[]', 1, false, 0, 'default', '[]', "
                "false, false, false)"
            )
        )
    init_db(engine)
    at = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    gpu = [{"index": 0, "util": 97.0, "mem_used": 2**36, "mem_total": 2**37}]
    with Session(engine) as session:
        assert session.exec(select(JobUsage)).all() == []
        session.add(JobUsage(job_id=1, attempt=1, ts=at, gpus=gpu))
        session.add(JobUsage(job_id=1, attempt=1, ts=at, cpu_percent=250.5, rss=2**40))
        session.commit()
        job = session.get(Job, 1)
        rows = session.exec(select(JobUsage).order_by(JobUsage.id)).all()  # type: ignore[arg-type]
    assert job is not None and job.progress == {"epoch": 2}
    assert [(r.gpus, r.cpu_percent, r.rss) for r in rows] == [(gpu, None, None), (None, 250.5, 2**40)]
    engine.dispose()
