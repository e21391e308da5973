"""Wait for eventually-consistent mesh config the way Istio's own tests do: until it holds N times in a row."""

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    holds: bool
    detail: str


def eventually(
    check: Callable[[], Check],
    *,
    timeout: float = 120.0,
    interval: float = 1.0,
    consecutive: int = 3,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Check:
    """Run check until it holds `consecutive` times in a row; raise AssertionError with the last detail at timeout."""
    deadline = clock() + timeout
    streak, attempts = 0, 0
    while True:
        result = check()
        attempts += 1
        streak = streak + 1 if result.holds else 0
        if streak >= consecutive:
            return result
        if clock() >= deadline:
            raise AssertionError(
                f"did not hold {consecutive} times in a row within {timeout:.0f}s ({attempts} attempts); "
                f"last: {result.detail}"
            )
        sleep(interval)
