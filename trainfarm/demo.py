"""The demo job: a real dataset, a real Lightning training run, live logs, the model in S3."""

from __future__ import annotations

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


def run_demo(api_url: str, token: str, dataset: Path, epochs: int, console: Console) -> int:
    """Returns the process exit code: 0 when the job succeeded."""
    client = ApiClient(api_url, token=token)
    if not dataset.is_file():
        console.print(f"[red]error:[/red] demo dataset not found at {dataset} (run from a checkout)")
        return 1
    try:
        client.upload_dataset(dataset, "digits.csv", overwrite=False)
        console.print(f"uploaded dataset digits.csv ({dataset.stat().st_size} bytes)")
    except ApiError as exc:
        if exc.status != 409:
            raise
        console.print("dataset digits.csv already uploaded; reusing it")
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
