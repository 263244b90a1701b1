"""The refusal log (§3): at most one line per reason every few seconds, with a count, and the
count of a flood's end told even when no later refusal comes."""

from __future__ import annotations

import logging

import pytest

from log_setup import RefusalLog

LOGGER = "test.refusals"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def refusals(clock: Clock) -> RefusalLog:
    return RefusalLog(logging.getLogger(LOGGER), interval=5.0, clock=clock)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def flood(refusals: RefusalLog, clock: Clock, reason: str, count: int) -> None:
    for n in range(count):
        refusals.warning(reason, "upgrade refused: %s from 10.0.0.%d", reason, n)
        clock.now += 0.5


def test_a_later_refusal_after_the_interval_carries_the_count(refusals, clock, caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        flood(refusals, clock, "wrong_api_key", 4)
        clock.now = 5.0
        refusals.warning("wrong_api_key", "upgrade refused: %s from 10.0.0.%d", "wrong_api_key", 9)
    assert messages(caplog) == [
        "upgrade refused: wrong_api_key from 10.0.0.0",
        "upgrade refused: wrong_api_key from 10.0.0.9 (and 3 more in the last 5 s)",
    ]


def test_flush_tells_the_count_a_flood_left_behind_once_its_interval_is_over(refusals, clock, caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        flood(refusals, clock, "wrong_api_key", 4)
        refusals.flush()  # the interval is not over: nothing yet
        assert len(messages(caplog)) == 1
        clock.now = 5.0
        refusals.flush()
        refusals.flush()  # told once
    assert messages(caplog) == [
        "upgrade refused: wrong_api_key from 10.0.0.0",
        "upgrade refused: wrong_api_key from 10.0.0.3 (and 2 more in the last 5 s)",
    ]


def test_after_a_flush_the_reason_is_held_back_for_another_interval(refusals, clock, caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        flood(refusals, clock, "draining", 2)
        clock.now = 5.0
        refusals.flush()
        clock.now = 6.0
        refusals.warning("draining", "upgrade refused: %s from 10.0.0.%d", "draining", 7)
        refusals.flush()
        clock.now = 10.0
        refusals.flush()
    assert messages(caplog) == [
        "upgrade refused: draining from 10.0.0.0",
        "upgrade refused: draining from 10.0.0.1",  # the one held back, alone
        "upgrade refused: draining from 10.0.0.7",
    ]


def test_flush_keeps_reasons_apart_and_logs_nothing_without_refusals_held(refusals, clock, caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        refusals.flush()
        flood(refusals, clock, "wrong_path", 3)
        flood(refusals, clock, "capacity", 1)
        clock.now = 20.0
        refusals.flush()
    assert messages(caplog) == [
        "upgrade refused: wrong_path from 10.0.0.0",
        "upgrade refused: capacity from 10.0.0.0",
        "upgrade refused: wrong_path from 10.0.0.2 (and 1 more in the last 20 s)",
    ]
