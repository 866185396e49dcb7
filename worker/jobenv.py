"""An attempt's directories on the node and the environment its process gets (the job contract)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.schemas import TaskMessage
from shared.settings import child_environment


@dataclass(frozen=True)
class AttemptDirs:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def log(self) -> Path:
        return self.root / "job.log"

    @classmethod
    def create(cls, work_root: Path, job_id: int, attempt: int) -> AttemptDirs:
        dirs = cls(work_root / f"job-{job_id}" / f"attempt-{attempt}")
        shutil.rmtree(dirs.root, ignore_errors=True)  # leftovers of a run of this attempt that died
        for d in (dirs.data, dirs.output, dirs.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        return dirs


def job_environment(message: TaskMessage, dirs: AttemptDirs) -> dict[str, str]:
    return child_environment(
        {
            "TRAINFARM_JOB_ID": str(message.job_id),
            "TRAINFARM_ATTEMPT": str(message.attempt),
            "TRAINFARM_SPEC_FILE": str(dirs.spec),
            "TRAINFARM_DATA_DIR": str(dirs.data),
            "TRAINFARM_OUTPUT_DIR": str(dirs.output),
            "TRAINFARM_CHECKPOINT_DIR": str(dirs.checkpoints),
            "TRAINFARM_EVENTS_FILE": str(dirs.events),
            "TRAINFARM_DEVICES": str(message.spec.devices),
            "TRAINFARM_HYPERPARAMETERS": json.dumps(message.spec.hyperparameters),
        }
    )
