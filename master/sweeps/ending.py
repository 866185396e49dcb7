"""The one door for a sweep's status: every write of `Sweep.status` goes through here (the job's
and the attempt's are master/transitions.py's), so "where can a sweep end?" is answered in one file."""

from __future__ import annotations

from master.models import Sweep, utcnow

#: What a sweep ends as; it starts `running` and ends once.
ENDINGS = frozenset({"succeeded", "failed", "cancelled"})


def end_sweep(sweep: Sweep, status: str, error: str | None) -> bool:
    """End a running sweep as `status` with `error` (None: none), stamping `finished_at`; False, with
    nothing changed, when it has ended already."""
    if status not in ENDINGS:
        raise ValueError(f"a sweep ends as one of {sorted(ENDINGS)}, not {status!r}")
    if sweep.status != "running":
        return False
    sweep.status, sweep.error, sweep.finished_at = status, error, utcnow()
    return True
