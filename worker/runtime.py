"""What training code calls inside a job: `report()` metrics, a Lightning logger and callbacks that
report, keep `last.ckpt` for the next attempt, stop cleanly on SIGTERM and make resumed epochs repeat
exactly.

Metrics travel through the events file (one JSON object a line) rather than the network, because the
training process may run in a container that reaches nothing; the worker tails the file. This module
must stay import-light: it runs in the job's process, which may have only the standard library, NumPy,
torch and Lightning (no pydantic, Celery or Redis).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from worker.job_contract import ContractError, JobContext

#: The checkpoint a new attempt resumes from: the worker uploads the checkpoint dir while a job runs and
#: restores this one file into the next attempt's checkpoint dir.
LAST_CHECKPOINT = "last.ckpt"
#: Where `TrainfarmLogger` writes the hyperparameters, in the output dir.
HPARAMS_FILE = "hparams.json"


@functools.cache
def _context() -> JobContext | None:
    try:
        return JobContext.from_environ()
    except ContractError as exc:
        # Cached, so this warns once per process.
        warnings.warn(
            f"not running under trainfarm ({exc}): metrics and checkpoints are not kept",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def report(
    metrics: Mapping[str, Any],
    *,
    step: int | None = None,
    epoch: int | None = None,
    kind: str = "metrics",
    max_epochs: int | None = None,
    is_global_zero: bool = True,
) -> None:
    """Append one event to the job's events file; outside trainfarm, do nothing (warn once).

    `kind` is "metrics" or "progress"; the worker ignores other lines (shared/events.py: Metrics).
    """
    if not is_global_zero:
        return
    ctx = _context()
    if ctx is None:
        return
    values = {name: float(value) for name, value in metrics.items()}
    # NaN and inf have no JSON form the master can store; the printed log still shows them.
    event: dict[str, Any] = {
        "kind": kind,
        # int(): a NumPy or tensor integer is an int to the worker, which takes no floats here.
        "step": None if step is None else int(step),
        "epoch": None if epoch is None else int(epoch),
        "metrics": {name: value for name, value in values.items() if math.isfinite(value)},
        "ts": time.time(),
    }
    if max_epochs is not None:
        event["max_epochs"] = int(max_epochs)
    # One write of one whole line in append mode: the tailing worker never sees half an event.
    with ctx.events_file.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")


def last_checkpoint() -> Path | None:
    """The `last.ckpt` an earlier attempt of this job left, for `trainer.fit(..., ckpt_path=...)`."""
    ctx = _context()
    if ctx is None:
        return None
    path = ctx.checkpoint_dir / LAST_CHECKPOINT
    return path if path.is_file() else None


def save_checkpoint(trainer: pl.Trainer, path: Path) -> None:
    """Save a checkpoint so that `path` holds the previous file or all of the new one, never a part.

    Call it on every rank: Lightning gathers the state on each and writes on global zero. Its own write is
    not enough: fsspec stages the file in $TMPDIR and *copies* it over when that is another filesystem.
    """
    # A dot-name, which the worker's checkpoint upload skips; a kill leaves it to be overwritten next time.
    partial = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(partial, weights_only=False)
    if trainer.is_global_zero:
        _fsync(partial)
        _replace(partial, path)
        _fsync(path.parent)  # the rename itself survives a crash of the machine too


def _replace(source: Path, target: Path, attempts: int = 50) -> None:
    """os.replace, waiting out Windows' refusal to replace a file another process has open (the
    worker reading the previous checkpoint to upload it); POSIX never refuses."""
    for _ in range(attempts - 1):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if os.name != "nt":
                raise
            time.sleep(0.2)
    os.replace(source, target)


def _fsync(path: Path) -> None:
    if os.name == "nt" and path.is_dir():
        return  # Windows cannot open a directory to flush it
    # Windows flushes only through a handle that may write.
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The single-number entries of Lightning's metrics dict, as floats."""
    out = {}
    for name, value in metrics.items():
        if hasattr(value, "numel") and value.numel() != 1:
            continue
        out[name] = float(value)
    return out


def _order(name: str) -> tuple[bool, bool, str]:
    # Reads like "train_loss=… val_loss=… val_acc=…": training first, losses before the rest.
    return (not name.startswith("train"), "loss" not in name, name)


class TrainfarmCallback(pl.Callback):
    """Reports a Lightning fit to trainfarm, keeps `last.ckpt` for the next attempt, stops on SIGTERM.

    :param every_n_steps: Report progress (`kind="progress"`) every this many training batches,
        besides once at the end of every training epoch.
    :param print_epochs: Print one line per epoch (`epoch 3/10 train_loss=… val_loss=…`) to stdout.

    Events carry `epoch` counted from 1: the epoch under way, or just finished. Only the global-zero
    process reports, so DDP runs write each event once. At the end of every training epoch `last.ckpt` in
    the job's checkpoint dir is replaced atomically; resume with `ckpt_path=last_checkpoint()`. (So no
    `ModelCheckpoint(save_last=True)` should write into that dir as well.)

    :param stop_at: What a stop request (SIGTERM) waits for. "batch" (the default): the batch under
        way. "epoch": the epoch under way, its validation and its `last.ckpt`; a resume from there repeats
        the uninterrupted run exactly (with `SeedEveryEpoch`), so pick it when an epoch ends well within
        the worker's `cancel_grace_period` (preemption and worker shutdowns send the same signal).

    The worker stops a job with SIGTERM (SIGKILL after a grace period). The callback then saves
    `last.ckpt` after the batch under way and ends the fit normally, without the validation Lightning would
    otherwise run first; `stopped` tells the training code that the fit did not finish. A run resumed from
    such a mid-epoch checkpoint restarts that epoch's data from its beginning, so unlike a resume from an
    epoch's end it does not repeat the uninterrupted run exactly. Under DDP every rank stops at the same
    batch, whichever ranks got the signal.
    """

    def __init__(
        self, every_n_steps: int = 50, print_epochs: bool = True, stop_at: Literal["batch", "epoch"] = "batch"
    ) -> None:
        if stop_at not in ("batch", "epoch"):
            raise ValueError(f"stop_at must be 'batch' or 'epoch', not {stop_at!r}")
        self.every_n_steps = every_n_steps
        self.print_epochs = print_epochs
        self.stop_at = stop_at
        #: Set when the fit ended early because the job was asked to stop.
        self.stopped = False
        self._sigterm = False
        self._batches = 0
        self._last_loss: Any = None
        self._before_validation: dict[str, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            device = trainer.strategy.root_device.type
            print(
                f"fit: world_size={trainer.world_size} devices={trainer.num_devices} accelerator={device}",
                flush=True,
            )

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.is_global_zero and trainer.ckpt_path:
            name = Path(trainer.ckpt_path).name
            epoch, step = checkpoint["epoch"] + 1, checkpoint["global_step"]
            print(f"resuming from {name} (epoch {epoch}, step {step})", flush=True)

    # Lightning installs its SIGTERM handler after `on_fit_start`; it would end the fit with SystemExit
    # and no checkpoint, so ours replaces it (and Lightning puts the original back after the fit).
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._catch_sigterm()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._catch_sigterm()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            # Kept as a tensor: float() would wait for the GPU on every batch.
            self._last_loss = loss.detach() if hasattr(loss, "detach") else loss
        self._batches += 1
        if self._batches % self.every_n_steps == 0:
            # Mid-epoch, a logged epoch-mean "train_loss" is still last epoch's; the batch loss is current.
            self._progress(trainer, self._last_loss)
        if self.stop_at == "batch" and not self.stopped and self._stop_requested(trainer):
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopped:  # a partial epoch: neither a line nor a checkpoint as if it had ended
            return
        logged = trainer.callback_metrics.get("train_loss")
        self._progress(trainer, self._last_loss if logged is None else logged)
        if self.print_epochs and trainer.is_global_zero:
            metrics = scalar_metrics(trainer.callback_metrics)
            shown = " ".join(f"{k}={metrics[k]:.4f}" for k in sorted(metrics, key=_order))
            total = f"/{trainer.max_epochs}" if _max_epochs(trainer) else ""
            print(f"epoch {trainer.current_epoch + 1}{total} {shown}".rstrip(), flush=True)
        ctx = _context()
        if ctx is not None:
            save_checkpoint(trainer, ctx.checkpoint_dir / LAST_CHECKPOINT)
            # Decided here, after the epoch's checkpoint, on every rank alike (DDP).
            # After the last epoch the fit ends anyway: it finishes as a whole run, model and all.
            last = _max_epochs(trainer) is not None and trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
            if self.stop_at == "epoch" and self._stop_requested(trainer) and not last:
                self._stop_after_epoch(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_validation = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if any(isinstance(logger, TrainfarmLogger) for logger in trainer.loggers):
            return  # it reports what validation logged already; twice would double the history
        # callback_metrics still holds the previous epoch's training values here; Lightning computes a
        # new tensor for each metric it updates, so identity tells what this validation produced.
        fresh = {
            name: value
            for name, value in trainer.callback_metrics.items()
            if self._before_validation.get(name) is not value
        }
        report(
            scalar_metrics(fresh),
            step=trainer.global_step,
            epoch=trainer.current_epoch + 1,
            max_epochs=_max_epochs(trainer),
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopped or not trainer.is_global_zero:
            return
        ctx = _context()
        if ctx is None:
            return
        output_dir = ctx.output_dir
        final = {
            **scalar_metrics(trainer.callback_metrics),
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        print(f"wrote {output_dir / 'metrics.json'}", flush=True)

    def _catch_sigterm(self) -> None:
        # Python runs handlers in the main thread and only lets it install them; outside trainfarm there is
        # no checkpoint dir to save into, so Lightning's own handling stays.
        if threading.current_thread() is threading.main_thread() and _context() is not None:
            signal.signal(signal.SIGTERM, self._on_sigterm)
            if os.name == "nt":  # the worker stops a job there with Ctrl-Break
                signal.signal(signal.SIGBREAK, self._on_sigterm)  # type: ignore[attr-defined]

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Only a flag: the handler may interrupt anything, a print or a checkpoint write included.
        self._sigterm = True

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        if trainer.world_size == 1 or _context() is None:
            return self._sigterm
        # Ranks get the signal at different batches (or only rank 0 gets it); a rank that stopped alone
        # would leave the others waiting in the next gradient all-reduce.
        return bool(trainer.strategy.reduce_boolean_decision(self._sigterm, all=False))

    def _stop(self, trainer: pl.Trainer) -> None:
        ctx = _context()
        assert ctx is not None  # no handler was installed otherwise
        save_checkpoint(trainer, ctx.checkpoint_dir / LAST_CHECKPOINT)
        if trainer.is_global_zero:
            print(
                f"trainfarm: stop requested, checkpoint saved at epoch {trainer.current_epoch + 1} "
                f"step {trainer.global_step}",
                flush=True,
            )
        self.stopped = True
        trainer.should_stop = True
        # Lightning validates before it honours should_stop (meant for early stopping); that could outlast
        # the worker's grace period.
        trainer.limit_val_batches = 0

    def _stop_after_epoch(self, trainer: pl.Trainer) -> None:
        """`stop_at="epoch"`: the epoch that was under way has ended and its `last.ckpt` is saved."""
        if trainer.is_global_zero:
            print(f"trainfarm: stop requested, stopping after epoch {trainer.current_epoch + 1}", flush=True)
        self.stopped = True
        trainer.should_stop = True

    def _progress(self, trainer: pl.Trainer, loss: Any) -> None:
        if not trainer.is_global_zero:
            return
        report(
            {} if loss is None else {"train_loss": loss},
            kind="progress",
            step=trainer.global_step,
            epoch=trainer.current_epoch + 1,
            max_epochs=_max_epochs(trainer),
        )


class TrainfarmLogger(Logger):
    """A Lightning logger: what the model records with `self.log` goes to trainfarm as metrics, and the
    hyperparameters Lightning logs (`save_hyperparameters()`) to `hparams.json` in the output dir, which
    comes back as an artifact.

    Use it next to `TrainfarmCallback` (`Trainer(logger=TrainfarmLogger(), callbacks=[TrainfarmCallback()])`):
    the callback then leaves validation metrics to the logger and keeps reporting progress and saving
    `last.ckpt`. Only global rank zero records. Events carry `epoch` counted from 1, like the callback's.
    Outside trainfarm it records nothing.
    """

    @property
    def name(self) -> str:
        return "trainfarm"

    @property
    def version(self) -> str:
        # Lightning names its default checkpoint folder after this; one per attempt never mixes runs.
        ctx = _context()
        return f"job-{ctx.job_id}-attempt-{ctx.attempt}" if ctx else "local"

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = dict(metrics)
        # Lightning adds the 0-based epoch under way to every call.
        epoch = values.pop("epoch", None)
        report(scalar_metrics(values), step=step, epoch=None if epoch is None else int(epoch) + 1)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        ctx = _context()
        if ctx is None:
            return
        values = vars(params) if isinstance(params, argparse.Namespace) else dict(params)
        path = ctx.output_dir / HPARAMS_FILE
        # Merged, so a later call (the training code's own) adds to what Lightning logged.
        merged = {**json.loads(path.read_text()), **values} if path.is_file() else values
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2, sort_keys=True, default=str) + "\n")


class SeedEveryEpoch(pl.Callback):
    """Reseeds `random`, NumPy and torch (CUDA too) at each training epoch's start from (seed, epoch, rank).

    Dropout and other draws in an epoch are then the same whether the run began at epoch 0 or resumed from
    the end of the epoch before; Lightning keeps no RNG state in its checkpoints.

    The shuffle must not come from these generators (when a DataLoader starts iterating, relative to this
    hook, differs on a resumed run); use a sampler whose order is a function of (seed, epoch), like
    `DistributedSampler`, which Lightning puts in under DDP and calls `set_epoch` on.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Mixed rather than seed + epoch, which would give seed 1's second epoch seed 2's first.
        entropy = [self.seed, trainer.current_epoch, trainer.global_rank]
        derived = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        random.seed(derived)
        np.random.seed(derived)
        torch.manual_seed(derived)


def _max_epochs(trainer: pl.Trainer) -> int | None:
    # Lightning uses -1 or None for "bounded by max_steps instead".
    return trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
