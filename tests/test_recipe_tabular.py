"""The tabular-classifier recipe run as the worker runs it: a real child process with the job environment."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.csv
import pyarrow.parquet
import pytest
import torch

from shared.schemas import JobSpec
from worker import runtime

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "datasets" / "digits.csv"
#: Reaches val_acc ≥ 0.95 on digits by epoch 5 for every seed tried; 10 epochs give ≈ 0.97.
FAST = {"target": "digit", "lr": 0.003}


@dataclass
class Run:
    returncode: int
    log: str
    root: Path

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.root / "events.jsonl").read_text().splitlines()]

    def metrics(self) -> dict[str, float]:
        return json.loads((self.output / "metrics.json").read_text())


def job_env(root: Path, spec: JobSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFARM_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "TRAINFARM_JOB_ID": "7",
            "TRAINFARM_ATTEMPT": "1",
            "TRAINFARM_SPEC_FILE": str(root / "spec.json"),
            "TRAINFARM_DATA_DIR": str(root / "data"),
            "TRAINFARM_OUTPUT_DIR": str(root / "output"),
            "TRAINFARM_CHECKPOINT_DIR": str(root / "checkpoints"),
            "TRAINFARM_EVENTS_FILE": str(root / "events.jsonl"),
            "TRAINFARM_DEVICES": str(spec.devices),
            "TRAINFARM_HYPERPARAMETERS": json.dumps(spec.hyperparameters),
        }
    )
    return env


def run_recipe(
    root: Path, dataset: Path, hyperparameters: dict[str, Any], max_epochs: int, devices: int = 1
) -> Run:
    """Lay out the attempt directory as the worker does and run the recipe to its end."""
    for name in ("data", "output", "checkpoints"):
        (root / name).mkdir(parents=True)
    (root / "data" / dataset.name).write_bytes(dataset.read_bytes())
    spec = JobSpec(
        recipe="tabular-classifier",
        datasets=[dataset.name],
        hyperparameters=hyperparameters,
        max_epochs=max_epochs,
        devices=devices,
        queue="cpu",
    )
    (root / "spec.json").write_text(spec.model_dump_json())
    proc = subprocess.run(
        [sys.executable, "-m", "worker.recipes.tabular"],
        cwd=ROOT,
        env=job_env(root, spec),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=150,
    )
    return Run(proc.returncode, proc.stdout, root)


def test_digits_train_to_high_accuracy(tmp_path: Path) -> None:
    run = run_recipe(tmp_path, DIGITS, FAST, max_epochs=5)
    assert run.returncode == 0, run.log

    metrics = run.metrics()
    assert metrics["val_acc"] > 0.9
    assert metrics["epoch"] == 5 and metrics["step"] > 0
    assert {"train_loss", "val_loss"} <= set(metrics)
    for n in range(1, 6):
        assert f"epoch {n}/5 train_loss=" in run.log
    assert "val_acc=" in run.log

    events = run.events()
    validations = [e for e in events if e["kind"] == "metrics"]
    assert [e["epoch"] for e in validations] == [1, 2, 3, 4, 5]
    assert all(set(e["metrics"]) == {"val_loss", "val_acc"} for e in validations)
    assert validations[-1]["metrics"]["val_acc"] == metrics["val_acc"]
    progress = [e for e in events if e["kind"] == "progress"]
    assert len(progress) >= 5
    assert [e["epoch"] for e in progress] == sorted(e["epoch"] for e in progress)
    assert [e["step"] for e in progress] == sorted(e["step"] for e in progress)
    assert all(e["max_epochs"] == 5 and "train_loss" in e["metrics"] for e in progress)

    assert (run.checkpoints / "last.ckpt").is_file()
    assert any(p.name != "last.ckpt" for p in run.checkpoints.glob("*.ckpt"))
    assert_model_classifies_digits(run.output / "model.pt")


def assert_model_classifies_digits(path: Path) -> None:
    """model.pt holds all it takes to predict: weights, feature order, normalization, classes."""
    from worker.recipes.tabular import MLPClassifier

    saved = torch.load(path)
    assert saved["classes"] == list(range(10))
    assert saved["features"] == [f"p{i}" for i in range(64)]

    hp = saved["hyperparameters"]
    model = MLPClassifier(64, 10, hp["hidden"], hp["dropout"], hp["lr"], hp["weight_decay"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    table = pyarrow.csv.read_csv(DIGITS)
    x = torch.tensor([table.column(f).to_pylist() for f in saved["features"]], dtype=torch.float32).T
    with torch.no_grad():
        predicted = model((x - saved["mean"]) / saved["std"]).argmax(dim=1)
    labels = torch.tensor(table.column("digit").to_pylist())
    assert (predicted == labels).float().mean() > 0.9


def test_missing_target_column_exits_2(tmp_path: Path) -> None:
    run = run_recipe(tmp_path, DIGITS, {"target": "label"}, max_epochs=1)
    assert run.returncode == 2, run.log
    assert "target column 'label' not found" in run.log
    assert "digit" in run.log  # the available columns are listed
    assert not (run.output / "model.pt").exists()


def test_parquet_dataset(tmp_path: Path) -> None:
    parquet = tmp_path / "digits.parquet"
    pyarrow.parquet.write_table(pyarrow.csv.read_csv(DIGITS), parquet)
    run = run_recipe(tmp_path / "job", parquet, {**FAST, "hidden": 96}, max_epochs=2)
    assert run.returncode == 0, run.log
    assert "digits.parquet: 1797 rows" in run.log
    assert "model: MLP 64-96-10," in run.log
    assert run.metrics()["val_acc"] > 0.85


def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    run = run_recipe(tmp_path, DIGITS, FAST, max_epochs=2, devices=2)
    assert run.returncode == 0, run.log
    assert "world_size=2" in run.log
    # Only global zero reports: one event per epoch, one metrics.json, one model.
    assert [e["epoch"] for e in run.events() if e["kind"] == "metrics"] == [1, 2]
    assert run.log.count("wrote ") == 1 and run.log.count("saved ") == 1
    assert run.log.count("epoch 2/2 ") == 1
    assert run.metrics()["epoch"] == 2
    assert (run.output / "model.pt").is_file()


# worker.runtime.report, in process ----------------------------------------------------------------


@pytest.fixture
def fresh_runtime() -> Any:
    runtime._context.cache_clear()
    yield runtime
    runtime._context.cache_clear()


def test_report_appends_one_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_runtime: Any
) -> None:
    spec = JobSpec(command=["true"])
    for key, value in job_env(tmp_path, spec).items():
        if key.startswith("TRAINFARM_"):
            monkeypatch.setenv(key, value)
    fresh_runtime.report({"acc": torch.tensor(0.5), "loss": math.nan}, step=3, epoch=1)
    fresh_runtime.report({"acc": 0.9}, step=4, is_global_zero=False)
    (line,) = (tmp_path / "events.jsonl").read_text().splitlines()
    event = json.loads(line)
    assert event.pop("ts") > 0
    assert event == {"kind": "metrics", "step": 3, "epoch": 1, "metrics": {"acc": 0.5}}


def test_report_outside_trainfarm_warns_once(monkeypatch: pytest.MonkeyPatch, fresh_runtime: Any) -> None:
    for key in list(os.environ):
        if key.startswith("TRAINFARM_"):
            monkeypatch.delenv(key)
    with pytest.warns(RuntimeWarning, match="not running under trainfarm"):
        fresh_runtime.report({"acc": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh_runtime.report({"acc": 0.6})
