"""Gated training schedules: the learning rate stays at its peak until a validation gate is
passed, then decays over a fixed tail; step counts follow the gate, not a budget.

Small transformers learn lookups abruptly after a plateau, so a cosine schedule sized in advance
can decay the learning rate before the jump happens. ``max_steps`` is only a safety cap; a run
that reaches it has *not* passed its gate, and says so (its last ``decay_steps`` still decay the
learning rate, so even a capped run ends on a settled model).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class GatedSchedule:
    peak: float
    warmup: int
    decay_steps: int
    max_steps: int
    floor: float = 0.05
    passed_at: int | None = None  # the step at which the gate was passed

    def decay_start(self) -> int:
        """Where the tail begins: at the gate, or, if the gate is never passed, early enough that
        a run stopped by the cap still ends on a decayed learning rate."""
        cap_tail = max(0, self.max_steps - self.decay_steps)
        return cap_tail if self.passed_at is None else min(self.passed_at, cap_tail + self.decay_steps)

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        start = self.decay_start()
        if step < start:
            return self.peak
        t = min(1.0, (step - start) / max(1, self.decay_steps))
        return self.peak * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t)))

    def pass_gate(self, step: int) -> None:
        if self.passed_at is None:
            self.passed_at = step

    def done(self, step: int) -> bool:
        if self.passed_at is not None and step >= self.passed_at + self.decay_steps:
            return True
        return step >= self.max_steps

    def state(self) -> dict:
        return dataclasses.asdict(self)


def gate_passed(metrics: dict, thresholds: dict[str, float]) -> bool:
    """True when every named metric reaches its threshold."""
    return all(metrics.get(k, float("-inf")) >= v for k, v in thresholds.items())


@dataclasses.dataclass
class Plateau:
    """A validation gate for metrics without a known ceiling: passed when the metric reaches
    ``target`` or has not improved by ``min_delta`` for ``patience`` evaluations in a row.
    A metric that has never risen above ``floor`` has not started to learn, so it cannot
    plateau (a lookup sits at its trivial level for a long time before it jumps)."""

    target: float = float("inf")
    patience: int = 4
    min_delta: float = 0.005
    best: float = float("-inf")
    since_best: int = 0
    floor: float = float("-inf")

    def update(self, value: float) -> bool:
        if value >= self.best + self.min_delta:
            self.best, self.since_best = value, 0
        elif self.best > self.floor:
            self.since_best += 1
        return value >= self.target or self.since_best >= self.patience

    def state(self) -> dict:
        return dataclasses.asdict(self)
