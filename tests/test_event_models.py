"""The event models and the worker's events-file tail, without services: what a job may write,
what becomes a warning instead, and that nothing a job writes raises or grows memory unbounded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.events import (
    MAX_ERROR_CHARS,
    MAX_METRICS,
    ArtifactStored,
    DatasetFetched,
    Finished,
    Metrics,
    Started,
    describe,
    envelope,
    parse_event,
)
from shared.schemas import AttemptOutcome, EventKind
from worker.progress import MAX_LINE_BYTES, MAX_WARNINGS, READ_BYTES, EventsFileTail

#: Lines a job might write that are not events, each with the field its warning must name.
BAD_LINES: list[tuple[str, str]] = [
    ('{"kind":"metrics","metrics":{"loss":"x"}}', "metrics.loss"),
    ('{"kind":"metrics","metrics":{"loss":null}}', "metrics.loss"),
    ('{"kind":"metrics","metrics":{"loss":[1,2]}}', "metrics.loss"),
    ('{"kind":"metrics","metrics":{"loss":true}}', "metrics.loss"),
    ('{"kind":"metrics","metrics":{"loss":' + "9" * 400 + "}}", "metrics.loss"),
    ('{"kind":"metrics","metrics":{"loss":1e400}}', "metrics.loss"),
    ('{"kind":"metrics","metrics":{"loss":NaN}}', "metrics.loss"),
    ('{"kind":"metrics","step":' + "1" * 400 + "}", "step"),
    ('{"kind":"metrics","epoch":-1}', "epoch"),
    ('{"kind":"metrics","metrics":[1,2]}', "metrics"),
    ('{"kind":"bogus"}', "kind"),
    ('{"kind":"metrics","surprise":1}', "surprise"),
    ("[1,2,3]", "event"),
    ("null", "event"),
    ("not json at all", "event"),
    ('{"kind":"metrics","metrics":{"' + "k" * 200 + '":1}}', "metrics"),
    ('{"kind":"metrics","metrics":{"a\\u0000b":1}}', "metrics"),
]


def test_what_runtime_report_writes_is_an_event() -> None:
    line = {"kind": "progress", "step": 3, "epoch": 1, "metrics": {"acc": 0.5, "n": 7}, "ts": 1.5}
    event = Metrics.model_validate_json(json.dumps(line))
    assert event.metrics == {"acc": 0.5, "n": 7.0}
    assert (event.kind, event.step, event.epoch, event.ts) == ("progress", 3, 1, 1.5)


@pytest.mark.parametrize(("line", "field"), BAD_LINES)
def test_a_bad_line_is_refused_naming_the_field(line: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Metrics.model_validate_json(line)
    assert describe(caught.value).startswith(field)


def test_bounded_numbers_of_metrics() -> None:
    Metrics(metrics={f"m{i}": 1.0 for i in range(MAX_METRICS)})
    with pytest.raises(ValidationError):
        Metrics(metrics={f"m{i}": 1.0 for i in range(MAX_METRICS + 1)})


def test_python_side_values_too_big_for_a_float_are_refused_not_overflowing() -> None:
    with pytest.raises(ValidationError):
        Metrics.model_validate({"metrics": {"loss": 10**400}})


def test_worker_written_text_is_cut_not_refused() -> None:
    ended = Finished(outcome=AttemptOutcome.FAILED, error="e" * 10 * MAX_ERROR_CHARS, log_tail="x\x00y")
    assert ended.error is not None and len(ended.error) == MAX_ERROR_CHARS
    assert ended.log_tail == "x\ufffdy"


@pytest.mark.parametrize(
    "data",
    [
        Started(pid=12),
        Started(datasets=[DatasetFetched(name="d.csv", cached=True, size=3)], restored_checkpoint=None),
        Metrics(kind="progress", step=1, epoch=1, max_epochs=2, metrics={"loss": 0.1}),
        ArtifactStored(name="model.pt", key="artifacts/1/model.pt", size=10, sha256="0" * 64),
        Finished(outcome=AttemptOutcome.SUCCEEDED, exit_code=0, log_tail="done"),
    ],
)
def test_every_kind_survives_the_stream(data: Started | Metrics | ArtifactStored | Finished) -> None:
    event = envelope(data, job_id=4, attempt=2, seq=7, node="node-1")
    back = parse_event(event.model_dump_json())
    assert back == event
    assert type(back.data) is type(data)


def test_the_wire_format_of_the_previous_version_still_parses() -> None:
    """Events already in a stream when the farm is upgraded are applied, not dead-lettered."""
    old = {
        "job_id": 1,
        "attempt": 1,
        "seq": 3,
        "kind": "metrics",
        "node": "n",
        "ts": 1.0,
        "data": {"kind": "metrics", "step": 1, "epoch": 1, "metrics": {"a": 1.0}, "ts": 1.0, "max_epochs": 3},
    }
    assert parse_event(json.dumps(old)).kind == EventKind.METRICS
    old.update(kind="finished", data={"outcome": "succeeded", "error": None, "retryable": False})
    assert parse_event(json.dumps(old)).kind == EventKind.FINISHED


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{}",
        b'{"job_id":1,"attempt":1,"seq":1,"node":"n","kind":"metrics","data":{"metrics":{"x":"y"}}}',
        b'{"job_id":1,"attempt":1,"seq":1,"node":"n","kind":"nope","data":{}}',
        b'{"job_id":-1,"attempt":1,"seq":1,"node":"n","kind":"started","data":{}}',
        b'{"job_id":1,"attempt":1,"seq":1,"node":"n","kind":"finished","data":{"outcome":"exploded"}}',
        b"[" * 100_000,
        b"\xff\xfe",
    ],
)
def test_anything_else_on_the_stream_is_a_validation_error(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_event(raw)


# --- the worker's tail of the events file ---------------------------------------------------


class Notes(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


def _good(step: int) -> str:
    return json.dumps({"kind": "metrics", "step": step, "metrics": {"loss": 1.0 / (step + 1)}})


def test_bad_lines_become_warnings_and_good_ones_events(tmp_path: Path) -> None:
    path, notes = tmp_path / "events.jsonl", Notes()
    lines = [_good(0), *(line for line, _ in BAD_LINES), _good(1)]
    path.write_text("\n".join(lines) + "\n")
    tail = EventsFileTail(path, notes)
    assert [e.step for e in tail.read_new()] == [0, 1]
    assert len(notes) == len(BAD_LINES)
    assert notes[0].startswith("events file line 2 ignored: metrics.loss")


def test_a_half_written_line_waits_for_its_end(tmp_path: Path) -> None:
    path, notes = tmp_path / "events.jsonl", Notes()
    path.write_text(_good(0)[:10])
    tail = EventsFileTail(path, notes)
    assert tail.read_new() == []
    with path.open("a") as fh:
        fh.write(_good(0)[10:] + "\n")
    assert [e.step for e in tail.read_new()] == [0]
    assert notes == []


def test_a_huge_line_is_skipped_as_it_streams_by(tmp_path: Path) -> None:
    path, notes = tmp_path / "events.jsonl", Notes()
    path.write_text(_good(0) + "\n")
    tail = EventsFileTail(path, notes)
    assert len(tail.read_new()) == 1
    with path.open("a") as fh:  # 2 MB with no newline yet: not kept in memory meanwhile
        fh.write('{"kind":"metrics","metrics":{"loss":' + "1" * (2 * 1024 * 1024))
    assert tail.read_new() == []
    assert len(tail._partial) == 0  # the bound is the point of the test
    with path.open("a") as fh:
        fh.write("1" * (1024 * 1024) + "}}\n" + _good(1) + "\n")
    assert [e.step for e in tail.read_new()] == [1]
    assert notes == [f"events file line 2 ignored: longer than {MAX_LINE_BYTES} bytes"]


def test_a_long_line_that_arrives_whole_is_skipped(tmp_path: Path) -> None:
    path, notes = tmp_path / "events.jsonl", Notes()
    path.write_text('{"kind":"metrics","x":"' + "y" * (2 * 1024 * 1024) + '"}\n' + _good(5) + "\n")
    tail = EventsFileTail(path, notes)
    assert [e.step for e in tail.read_new()] == [5]
    assert len(notes) == 1 and "longer than" in notes[0]


def test_reads_are_bounded_and_the_rest_follows(tmp_path: Path) -> None:
    path, notes = tmp_path / "events.jsonl", Notes()
    line = _good(1)
    count = READ_BYTES // len(line) + 100
    path.write_text((line + "\n") * count)
    tail = EventsFileTail(path, notes)
    first = tail.read_new()
    assert 0 < len(first) < count and not tail.at_end
    rest = tail.read_new()
    assert len(first) + len(rest) == count and tail.at_end


def test_warnings_are_bounded_then_counted(tmp_path: Path) -> None:
    path, notes = tmp_path / "events.jsonl", Notes()
    path.write_text("bad\n" * (MAX_WARNINGS + 30))
    tail = EventsFileTail(path, notes)
    assert tail.read_new() == []
    assert len(notes) == MAX_WARNINGS
    tail.finish()
    assert notes[-1] == f"30 more bad lines in the events file ignored ({MAX_WARNINGS + 30} in all)"


def test_a_missing_file_is_no_events(tmp_path: Path) -> None:
    tail = EventsFileTail(tmp_path / "absent.jsonl", Notes())
    assert tail.read_new() == [] and tail.at_end


@pytest.mark.skipif(os.name == "nt", reason="FIFOs and unprivileged links are POSIX")
def test_a_file_swapped_for_a_link_or_a_fifo_is_no_longer_read(tmp_path: Path) -> None:
    secret = tmp_path / "node-file"
    secret.write_text(_good(9) + "\n")
    for name, make in (("link", lambda p: p.symlink_to(secret)), ("fifo", os.mkfifo)):
        path, notes = tmp_path / f"{name}.jsonl", Notes()
        make(path)
        tail = EventsFileTail(path, notes)
        assert tail.read_new() == [] and tail.read_new() == []
        assert len(notes) == 1 and notes[0].startswith("events file no longer read"), notes
