"""When a failed delivery is tried again: doubling waits from `webhook_retry_base`, capped at an
hour, each shortened by up to a quarter at random so that many deliveries failing together (a
receiver down for a while) do not all come back at the same moment."""

from __future__ import annotations

import random
from collections.abc import Callable

#: The longest wait between two tries of one delivery, in seconds.
MAX_DELAY = 3600.0
#: A wait is cut by up to this fraction, at random.
JITTER = 0.25


def retry_delay(attempts: int, base: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next try, after `attempts` tries that failed (1 after the first)."""
    # The exponent is capped too, so a huge count cannot overflow the float.
    nominal = min(base * 2.0 ** min(max(attempts - 1, 0), 64), MAX_DELAY)
    return nominal * (1 - JITTER * rand())
