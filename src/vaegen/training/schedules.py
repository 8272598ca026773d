"""Beta schedules: the KL weight as a function of the epoch (counted from 1).

  constant  beta(e) = max
  warmup    beta(e) = max * min(1, e / warmup)
  cyclic    beta(e) = max * min(1, ((e - 1) mod cycle) / warmup)   (the reference's schedule)

A schedule is a pure function of the epoch, so the epoch in a checkpoint is its whole state.
"""

from __future__ import annotations

from collections.abc import Callable

from vaegen.config import BetaConfig

BetaSchedule = Callable[[int], float]

SCHEDULES: dict[str, Callable[[BetaConfig], BetaSchedule]] = {
    "constant": lambda cfg: lambda epoch: cfg.max,
    "warmup": lambda cfg: lambda epoch: cfg.max * min(1.0, epoch / cfg.warmup),
    "cyclic": lambda cfg: lambda epoch: cfg.max * min(1.0, ((epoch - 1) % cfg.cycle) / cfg.warmup),
}


def build_beta_schedule(cfg: BetaConfig) -> BetaSchedule:
    return SCHEDULES[cfg.schedule](cfg)
