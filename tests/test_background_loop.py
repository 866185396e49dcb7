"""The events-and-leases loop step survives a fault in either part (faults injected, no services)."""

from __future__ import annotations

import pytest

from master import background
from master.background import ConsumeThenReap
from master.metrics import LOOP_ERRORS


class Part:
    """A consumer or reaper whose poll raises the first `failures` times (the injected fault)."""

    batch = 500

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0

    def poll(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("injected")
        return 0


def errors(loop: str) -> float:
    return LOOP_ERRORS.labels(loop)._value.get()


@pytest.fixture(autouse=True)
def reap_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "REAP_INTERVAL", 0.0)


def test_a_failing_lease_check_does_not_stop_the_events() -> None:
    consumer, reaper = Part(), Part(failures=2)
    step = ConsumeThenReap(consumer, reaper, pause=0)  # type: ignore[arg-type]
    before = errors("leases")
    for _ in range(3):
        step()
    assert (consumer.calls, reaper.calls) == (3, 3)
    assert errors("leases") == before + 2


def test_a_failing_round_of_events_is_counted_and_skips_only_that_rounds_lease_check() -> None:
    consumer, reaper = Part(failures=1), Part()
    step = ConsumeThenReap(consumer, reaper, pause=0)  # type: ignore[arg-type]
    before = errors("events")
    step()
    assert (consumer.calls, reaper.calls) == (1, 0)  # unapplied events: no verdicts on leases
    step()
    assert (consumer.calls, reaper.calls) == (2, 1)
    assert errors("events") == before + 1
