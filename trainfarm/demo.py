"""The demo job: a real dataset, a real Lightning training run, live logs, the model in S3; or, with
`--sweep`, a real hyperparameter sweep (examples/sweep.yaml) to its best trial."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from trainfarm.client import ApiClient, ApiError

DEMO_SPEC = {
    "name": "digits-demo",
    "recipe": "tabular-classifier",
    "datasets": ["digits.csv"],
    "hyperparameters": {"target": "digit", "lr": 0.003, "hidden": [128, 64], "batch_size": 64},
    "queue": "gpu",
    "seed": 7,
}


def upload_digits(client: ApiClient, dataset: Path, console: Console) -> bool:
    """The bundled dataset in the farm (kept when already there); False when it is not on disk."""
    if not dataset.is_file():
        console.print(f"[red]error:[/red] demo dataset not found at {dataset} (run from a checkout)")
        return False
    try:
        client.upload_dataset(dataset, "digits.csv", overwrite=False)
        console.print(f"uploaded dataset digits.csv ({dataset.stat().st_size} bytes)")
    except ApiError as exc:
        if exc.status != 409:
            raise
        console.print("dataset digits.csv already uploaded; reusing it")
    return True


def run_sweep_demo(api_url: str, token: str, dataset: Path, sweep_file: Path, console: Console) -> int:
    """The sweep in `sweep_file` to its end, its trials shown as they change; exit code 0 when it
    found a best trial."""
    from trainfarm.cli_sweeps import follow_sweep, read_spec

    client = ApiClient(api_url, token=token)
    spec = read_spec(sweep_file)
    if not upload_digits(client, dataset, console):
        return 1
    started = time.monotonic()
    created = client.call("POST", "/sweeps", json=spec)
    console.print(f"started sweep {created['id']} ({created['name']}) from {sweep_file}; following it:\n")
    follow_sweep(client, created["id"])
    detail = client.call("GET", f"/sweeps/{created['id']}")
    pruned = detail["counts"].get("pruned", 0)
    console.print(
        f"sweep {detail['id']} {detail['status']} in {time.monotonic() - started:.0f} s: "
        f"{len(detail['trials'])} trials, {pruned} pruned"
        + (
            f"; best: trial {detail['best_trial']}, job {detail['best_job_id']}, "
            f"{detail['spec']['objective']['metric']} {detail['best_value']:.4f}"
            if detail["best_value"] is not None
            else ""
        )
    )
    return 0 if detail["status"] == "succeeded" else 1


def run_demo(api_url: str, token: str, dataset: Path, epochs: int, console: Console) -> int:
    """Returns the process exit code: 0 when the job succeeded."""
    client = ApiClient(api_url, token=token)
    if not upload_digits(client, dataset, console):
        return 1
    job = client.submit({**DEMO_SPEC, "max_epochs": epochs})
    job_id = job["id"]
    console.print(f"submitted job {job_id}; streaming its log:\n")
    status = "unknown"
    for event, data in client.stream_logs(job_id):
        if event == "log":
            for line in data["lines"]:
                print(line, flush=True)
        elif event == "end":
            status = data["status"]
    detail = client.get_job(job_id)
    metrics = Table(title=f"job {job_id}: {status}")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key, value in sorted(detail["metrics"].items()):
        metrics.add_row(key, f"{value:.4f}")
    console.print(metrics)
    artifacts = Table(title=f"artifacts in s3://…/artifacts/{job_id}/")
    for column in ("name", "bytes", "sha256"):
        artifacts.add_column(column)
    for item in client.list_artifacts(job_id):
        artifacts.add_row(item["name"], str(item["size"]), (item["sha256"] or "")[:16])
    console.print(artifacts)
    return 0 if status == "succeeded" else 1
