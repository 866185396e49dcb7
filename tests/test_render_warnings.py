"""`trainfarm show` lists a job's warnings and hand-backs (rendering only, no services)."""

from __future__ import annotations

from rich.console import Console

from trainfarm.render import job_summary

JOB = {
    "id": 7,
    "name": None,
    "status": "running",
    "spec": {"command": ["python", "train.py"], "devices": 1},
    "queue": "cpu",
    "priority": 5,
    "created_at": "2026-12-01T21:00:00Z",
    "started_at": None,
    "finished_at": None,
    "progress": {},
    "handbacks": 0,
    "warnings": [],
}


def shown(job: dict) -> str:
    console = Console(record=True, width=200)
    console.print(job_summary(job))
    return console.export_text()


def test_warnings_and_hand_backs_are_shown() -> None:
    text = shown({**JOB, "handbacks": 3, "warnings": ["invalid event: metrics.loss", "log cut short"]})
    assert any(line.split() == ["hand-backs", "3"] for line in text.splitlines())
    lines = [line for line in text.splitlines() if "invalid event" in line or "log cut short" in line]
    assert len(lines) == 2 and lines[0].startswith("warnings")


def test_a_job_without_warnings_shows_no_such_rows() -> None:
    text = shown(JOB)
    assert "warnings" not in text and "hand-backs" not in text


def test_show_sums_up_a_jobs_resource_use_and_says_when_its_gpus_idle():
    from trainfarm.render import usage_text

    gib = 1024**3
    busy = usage_text({"gpu_util_mean": 87.4, "gpu_mem_peak": 3 * gib, "cpu_percent_mean": 150.0})
    assert busy.plain == "GPU 87% mean, GPU memory 3.0 GiB peak, CPU 150% mean"
    idle = usage_text({"gpu_util_mean": 1.0, "gpu_idle": True, "rss_peak": gib // 2})
    assert idle.plain == "GPU 1% mean, memory 0.5 GiB peak (GPUs idle)"
    assert usage_text({}).plain == "-"
