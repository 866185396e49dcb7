"""The job contract as the training process reads it: the `TRAINFARM_*` variables the worker sets.

Standard library only, unlike `shared.settings`: this runs in the job's process, which may be a container
with nothing but the user's own packages (torch, Lightning) and no network. It is the one place besides
`Settings` that reads the environment; the worker writes these variables in `worker.jobenv`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "TRAINFARM_"


class ContractError(ValueError):
    """The environment is not (or not wholly) a trainfarm job's: a variable is missing or malformed."""


@dataclass(frozen=True)
class JobContext:
    """What a training process learns about its job from the environment the worker gives it."""

    job_id: int
    spec_file: Path
    data_dir: Path
    output_dir: Path
    checkpoint_dir: Path
    #: JSON-lines file the worker tails for metrics and progress; a file so it works without network.
    events_file: Path
    attempt: int = 1
    devices: int = 1
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> JobContext:
        """Read the contract from `environ` (default: this process's environment)."""
        env = os.environ if environ is None else environ

        def get(name: str, default: str | None = None) -> str:
            value = env.get(PREFIX + name.upper(), default)
            if value is None:
                raise ContractError(f"{PREFIX}{name.upper()} is not set")
            return value

        def integer(name: str, default: str | None = None) -> int:
            raw = get(name, default)
            try:
                return int(raw)
            except ValueError:
                raise ContractError(f"{PREFIX}{name.upper()}={raw!r} is not an integer") from None

        raw_hp = get("hyperparameters", "{}")
        try:
            hyperparameters = json.loads(raw_hp)
        except ValueError as exc:
            raise ContractError(f"{PREFIX}HYPERPARAMETERS is not JSON: {exc}") from None
        if not isinstance(hyperparameters, dict):
            raise ContractError(f"{PREFIX}HYPERPARAMETERS must be a JSON object, not {raw_hp[:40]!r}")
        return cls(
            job_id=integer("job_id"),
            spec_file=Path(get("spec_file")),
            data_dir=Path(get("data_dir")),
            output_dir=Path(get("output_dir")),
            checkpoint_dir=Path(get("checkpoint_dir")),
            events_file=Path(get("events_file")),
            attempt=integer("attempt", "1"),
            devices=integer("devices", "1"),
            hyperparameters=hyperparameters,
        )
