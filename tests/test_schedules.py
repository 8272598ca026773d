"""Beta schedules: exact KL weights per epoch (epochs counted from 1)."""

from __future__ import annotations

import pytest

from vaegen.config import BetaConfig
from vaegen.training.schedules import SCHEDULES, build_beta_schedule


def test_registered_schedules():
    assert set(SCHEDULES) == {"constant", "warmup", "cyclic"}


@pytest.mark.parametrize("epoch", [1, 2, 50, 1000])
def test_constant(epoch):
    schedule = build_beta_schedule(BetaConfig(schedule="constant", max=4.0))
    assert schedule(epoch) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("epoch", "beta"),
    [(1, 0.4), (2, 0.8), (5, 2.0), (9, 3.6), (10, 4.0), (11, 4.0), (100, 4.0)],
)
def test_warmup(epoch, beta):
    schedule = build_beta_schedule(BetaConfig(schedule="warmup", max=4.0, warmup=10))
    assert schedule(epoch) == pytest.approx(beta)


@pytest.mark.parametrize(
    ("epoch", "beta"),
    [
        (1, 0.0), (2, 0.4), (6, 2.0), (10, 3.6), (11, 4.0), (20, 4.0),
        (21, 0.0), (22, 0.4), (30, 3.6), (31, 4.0), (40, 4.0), (41, 0.0),
    ],
)
def test_cyclic(epoch, beta):
    schedule = build_beta_schedule(BetaConfig(schedule="cyclic", max=4.0, warmup=10, cycle=20))
    assert schedule(epoch) == pytest.approx(beta)


def test_cyclic_with_warmup_equal_to_cycle_ramps_over_whole_cycle():
    # warmup == cycle is allowed: the ramp spans the whole cycle and restarts at 0
    schedule = build_beta_schedule(BetaConfig(schedule="cyclic", max=2.0, warmup=4, cycle=4))
    assert [schedule(e) for e in range(1, 10)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 0.0, 0.5, 1.0, 1.5, 0.0])


def test_schedule_is_pure_function_of_epoch():
    schedule = build_beta_schedule(BetaConfig(schedule="cyclic", max=4.0, warmup=10, cycle=20))
    first = [schedule(e) for e in range(1, 45)]
    assert [schedule(e) for e in reversed(range(1, 45))] == list(reversed(first))
