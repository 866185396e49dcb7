"""The tabular-classifier recipe run as the worker runs it: a real child process with the job environment."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pyarrow.csv
import pyarrow.parquet
import pytest
import torch

from shared.schemas import JobSpec, TaskMessage
from shared.settings import child_environment
from worker import runtime
from worker.jobenv import AttemptDirs, job_environment

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
        return AttemptDirs(self.root).output

    @property
    def checkpoints(self) -> Path:
        return AttemptDirs(self.root).checkpoints

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in AttemptDirs(self.root).events.read_text().splitlines()]

    def metrics(self) -> dict[str, float]:
        return json.loads((self.output / "metrics.json").read_text())


def job_env(root: Path, spec: JobSpec) -> dict[str, str]:
    """The environment a worker gives attempt 1 of job 7 in `root`: the worker's own code, so the
    contract tested here is the one jobs get."""
    return child_environment(job_environment(TaskMessage(job_id=7, attempt=1, spec=spec), AttemptDirs(root)))


def prepare_job(
    root: Path,
    dataset: Path,
    hyperparameters: dict[str, Any],
    max_epochs: int,
    devices: int = 1,
    last_ckpt: Path | None = None,
) -> dict[str, str]:
    """Lay out the attempt directory as the worker does, with an earlier attempt's `last.ckpt` if given."""
    for name in ("data", "output", "checkpoints"):
        (root / name).mkdir(parents=True)
    (root / "data" / dataset.name).write_bytes(dataset.read_bytes())
    if last_ckpt is not None:
        shutil.copyfile(last_ckpt, root / "checkpoints" / "last.ckpt")
    spec = JobSpec(
        recipe="tabular-classifier",
        datasets=[dataset.name],
        hyperparameters=hyperparameters,
        max_epochs=max_epochs,
        devices=devices,
        queue="cpu",
    )
    (root / "spec.json").write_text(spec.model_dump_json())
    return job_env(root, spec)


def start_recipe(
    root: Path, dataset: Path, hyperparameters: dict[str, Any], max_epochs: int, **kw: Any
) -> Any:
    env = prepare_job(root, dataset, hyperparameters, max_epochs, **kw)
    # A session of its own, so the test can signal the group as the worker does.
    return subprocess.Popen(
        [sys.executable, "-m", "worker.recipes.tabular"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: Any, root: Path, timeout: float = 150) -> Run:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise AssertionError(f"the recipe ran past {timeout} s:\n{log}") from None
    return Run(proc.returncode, log, root)


def run_recipe(root: Path, dataset: Path, hyperparameters: dict[str, Any], max_epochs: int, **kw: Any) -> Run:
    """Run the recipe to its end in a fresh attempt directory."""
    return finish(start_recipe(root, dataset, hyperparameters, max_epochs, **kw), root)


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


#: Heavy dropout, so that random draws matter, and a learning rate at which val_loss goes up at epochs 2
#: and 4 (seed 0), so that the best checkpoint is not the latest.
JUMPY = {"target": "digit", "lr": 0.03, "dropout": 0.5}


def test_resume_from_epoch_end_repeats_the_uninterrupted_run(tmp_path: Path) -> None:
    # Both at once: each spends most of its time importing.
    procs = {
        name: start_recipe(tmp_path / name, DIGITS, JUMPY, max_epochs=epochs)
        for name, epochs in [("whole", 4), ("first", 2)]
    }
    whole, first = (finish(proc, tmp_path / name) for name, proc in procs.items())
    assert whole.returncode == 0, whole.log
    assert first.returncode == 0, first.log
    for run in (whole, first):  # the latest epoch, whichever was best
        last = torch.load(run.checkpoints / "last.ckpt", weights_only=False)
        assert last["global_step"] == run.metrics()["step"]

    # A new attempt: a fresh directory that holds only the checkpoint the worker restored.
    resumed = run_recipe(
        tmp_path / "resumed", DIGITS, JUMPY, max_epochs=4, last_ckpt=first.checkpoints / "last.ckpt"
    )
    assert resumed.returncode == 0, resumed.log
    assert f"resuming from last.ckpt (epoch 2, step {first.metrics()['step']})" in resumed.log
    assert "epoch 2/4 " not in resumed.log and "epoch 3/4 " in resumed.log
    assert [e["epoch"] for e in resumed.events() if e["kind"] == "metrics"] == [3, 4]

    expected, got = whole.metrics(), resumed.metrics()
    assert got.keys() == expected.keys()
    assert all(abs(got[name] - expected[name]) < 1e-6 for name in expected), (got, expected)
    expected_weights = torch.load(whole.output / "model.pt")["state_dict"]
    got_weights = torch.load(resumed.output / "model.pt")["state_dict"]
    assert got_weights.keys() == expected_weights.keys()
    assert all(torch.allclose(got_weights[name], expected_weights[name]) for name in expected_weights)


def test_sigterm_saves_last_ckpt_exits_0_and_the_next_attempt_resumes(tmp_path: Path) -> None:
    root = tmp_path / "stopped"
    proc = start_recipe(root, DIGITS, FAST, max_epochs=500)
    events = root / "events.jsonl"
    while not (events.is_file() and '"kind": "metrics"' in events.read_text()):  # an epoch is done
        if proc.poll() is not None:
            raise AssertionError(finish(proc, root).log)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # as the worker stops a job
    signalled = time.monotonic()
    stopped = finish(proc, root, timeout=10)
    assert stopped.returncode == 0, stopped.log
    assert time.monotonic() - signalled < 10

    line = re.search(
        r"^trainfarm: stop requested, checkpoint saved at epoch (\d+) step (\d+)$", stopped.log, re.M
    )
    assert line is not None, stopped.log
    epoch, step = int(line[1]), int(line[2])
    saved = torch.load(stopped.checkpoints / "last.ckpt", weights_only=False)
    assert (saved["epoch"] + 1, saved["global_step"]) == (epoch, step)
    assert step > 0
    assert not list(stopped.checkpoints.glob(".*"))  # no partial save left behind
    # The job is not done: no model and no final metrics from this attempt.
    assert not (stopped.output / "model.pt").exists()
    assert not (stopped.output / "metrics.json").exists()

    resumed = run_recipe(
        tmp_path / "resumed", DIGITS, FAST, max_epochs=epoch + 1, last_ckpt=stopped.checkpoints / "last.ckpt"
    )
    assert resumed.returncode == 0, resumed.log
    assert f"resuming from last.ckpt (epoch {epoch}, step {step})" in resumed.log
    assert resumed.metrics()["epoch"] == epoch + 1
    assert (resumed.output / "model.pt").is_file()


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


class _FakeTrainer:
    """The part of a Trainer that `save_checkpoint` uses; `fail` breaks the write off halfway."""

    is_global_zero = True

    def __init__(self, content: bytes, fail: bool = False) -> None:
        self.content = content
        self.fail = fail

    def save_checkpoint(self, path: Path, weights_only: bool | None = None) -> None:
        Path(path).write_bytes(self.content[: len(self.content) // 2] if self.fail else self.content)
        if self.fail:
            raise OSError("No space left on device")


def test_save_checkpoint_replaces_the_file_whole_or_not_at_all(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    runtime.save_checkpoint(cast(Any, _FakeTrainer(b"epoch 1")), last)
    with pytest.raises(OSError):
        runtime.save_checkpoint(cast(Any, _FakeTrainer(b"epoch 2", fail=True)), last)
    assert last.read_bytes() == b"epoch 1"
    # What a broken save leaves has a dot-name, which the worker does not upload, and the next save reuses.
    assert [p.name for p in tmp_path.iterdir() if p != last] == [".last.ckpt.tmp"]
    runtime.save_checkpoint(cast(Any, _FakeTrainer(b"epoch 3")), last)
    assert last.read_bytes() == b"epoch 3"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
