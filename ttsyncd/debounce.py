"""Quiescence, as consul-template's `wait { min, max }`: a burst of events becomes one action,
taken once the events pause for `quiet` seconds, or `longest` seconds after the first of them
when they never pause."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Quiescence:
    quiet: float
    longest: float
    first: float | None = None
    last: float | None = None

    def touch(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def deadline(self) -> float | None:
        """When to act (monotonic seconds), None when nothing is waiting."""
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.quiet, self.first + self.longest)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def reset(self) -> None:
        self.first = self.last = None
