"""What training code calls inside a job: `report()` metrics and a Lightning callback that does it.

Metrics travel through the events file (one JSON object a line) rather than the network, because the
training process may run in a container that reaches nothing; the worker tails the file. This module
must stay import-light: it runs in the job's process, which need not have Celery or Redis.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pydantic import ValidationError

from shared.settings import JobContext


@functools.cache
def _context() -> JobContext | None:
    try:
        return JobContext()
    except ValidationError:
        # Cached, so this warns once per process.
        warnings.warn(
            "not running under trainfarm (no TRAINFARM_* job environment): metrics are not recorded",
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
    """Append one event to the job's events file; outside trainfarm, do nothing (warn once)."""
    if not is_global_zero:
        return
    ctx = _context()
    if ctx is None:
        return
    values = {name: float(value) for name, value in metrics.items()}
    # NaN and inf have no JSON form the master can store; the printed log still shows them.
    event: dict[str, Any] = {
        "kind": kind,
        "step": step,
        "epoch": epoch,
        "metrics": {name: value for name, value in values.items() if math.isfinite(value)},
        "ts": time.time(),
    }
    if max_epochs is not None:
        event["max_epochs"] = max_epochs
    # One write of one whole line in append mode: the tailing worker never sees half an event.
    with ctx.events_file.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")


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
    """Reports progress and metrics of a Lightning fit to trainfarm, and writes `metrics.json`.

    :param every_n_steps: Report progress (`kind="progress"`) every this many training batches,
        besides once at the end of every training epoch.
    :param print_epochs: Print one line per epoch (`epoch 3/10 train_loss=… val_loss=…`) to stdout.

    Events carry `epoch` counted from 1: the epoch under way, or just finished. Only the global-zero
    process reports, so DDP runs write each event once.
    """

    def __init__(self, every_n_steps: int = 50, print_epochs: bool = True) -> None:
        self.every_n_steps = every_n_steps
        self.print_epochs = print_epochs
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

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logged = trainer.callback_metrics.get("train_loss")
        self._progress(trainer, self._last_loss if logged is None else logged)
        if self.print_epochs and trainer.is_global_zero:
            metrics = scalar_metrics(trainer.callback_metrics)
            shown = " ".join(f"{k}={metrics[k]:.4f}" for k in sorted(metrics, key=_order))
            total = f"/{trainer.max_epochs}" if _max_epochs(trainer) else ""
            print(f"epoch {trainer.current_epoch + 1}{total} {shown}".rstrip(), flush=True)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_validation = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
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
        if not trainer.is_global_zero:
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


def _max_epochs(trainer: pl.Trainer) -> int | None:
    # Lightning uses -1 or None for "bounded by max_steps instead".
    return trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
