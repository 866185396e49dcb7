"""A table (CSV or Parquet) as standardized feature tensors and class indices, split for validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet
import torch

from shared.errors import FinalError

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class TabularData:
    features: list[str]
    #: Original target values; a class's index here is its label index.
    classes: list[Any]
    #: Train-split statistics, applied to both splits and saved with the model.
    mean: torch.Tensor
    std: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise FinalError(f"dataset file {path.name} not found in {path.parent}")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return pyarrow.parquet.read_table(path)
        return pyarrow.csv.read_csv(path)
    except pa.ArrowInvalid as exc:
        raise FinalError(f"cannot read {path.name} as a table: {exc}") from exc


def _is_numeric(dtype: pa.DataType) -> bool:
    return (
        pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_decimal(dtype)
    )


def features_and_labels(table: pa.Table, target: str) -> tuple[list[str], list[Any], np.ndarray, np.ndarray]:
    """Feature names, classes, a float32 feature matrix and int64 label indices."""
    if target not in table.column_names:
        available = ", ".join(table.column_names)
        raise FinalError(f"target column {target!r} not found; available columns: {available}")
    features = [name for name in table.column_names if name != target]
    if not features:
        raise FinalError(f"the table has no columns besides the target {target!r}")
    non_numeric = [
        f"{name} ({table.schema.field(name).type})"
        for name in features
        if not _is_numeric(table.schema.field(name).type)
    ]
    if non_numeric:
        raise FinalError(
            "feature columns must be numeric; encode or drop these first: " + ", ".join(non_numeric)
        )
    with_nulls = [name for name in [*features, target] if table.column(name).null_count]
    if with_nulls:
        raise FinalError("columns with missing values (fill or drop them first): " + ", ".join(with_nulls))
    labels = table.column(target)
    classes = sorted(pc.unique(labels).to_pylist())
    if len(classes) < 2:
        raise FinalError(f"target column {target!r} has {len(classes)} distinct value(s); need at least 2")
    y = pc.index_in(labels, value_set=pa.array(classes, type=labels.type)).to_numpy().astype(np.int64)
    x = np.stack([pc.cast(table.column(name), pa.float32()).to_numpy() for name in features], axis=1)
    return features, classes, x, y


def load(path: Path, target: str, val_fraction: float, seed: int) -> TabularData:
    """Read, encode and split the table; the same seed gives the same split on every rank."""
    features, classes, x, y = features_and_labels(read_table(path), target)
    n = len(y)
    n_val = round(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        raise FinalError(f"{n} rows cannot be split with val_fraction={val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y)
    x_train = x_all[train_idx]
    mean = x_train.mean(dim=0)
    # Constant columns (e.g. border pixels) would divide by zero; leave them centred at 0.
    std = x_train.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return TabularData(
        features=features,
        classes=classes,
        mean=mean,
        std=std,
        x_train=(x_train - mean) / std,
        y_train=y_all[train_idx],
        x_val=(x_all[val_idx] - mean) / std,
        y_val=y_all[val_idx],
    )
