"""The error budget's rules, with a clock the test moves (no servers)."""

from __future__ import annotations

import pytest

from esindexer.errors import ErrorBudgetExhausted
from esindexer.pipeline.budget import ErrorBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_letters_within_the_budget_pass_and_one_more_stops():
    clock = Clock()
    budget = ErrorBudget(5, window=60.0, client_id="c", clock=clock)
    budget.spend(3)
    budget.spend(2)  # exactly the budget: still fine
    with pytest.raises(ErrorBudgetExhausted, match=r"6 dead letters within 60s \(budget 5\).*client_id='c'"):
        budget.spend(1)


def test_letters_older_than_the_window_no_longer_count():
    clock = Clock()
    budget = ErrorBudget(5, window=60.0, client_id="c", clock=clock)
    budget.spend(5)
    clock.now += 61
    budget.spend(5)  # the first five left the window
    clock.now += 30
    with pytest.raises(ErrorBudgetExhausted):
        budget.spend(1)  # the second five are still in it


@pytest.mark.parametrize("size", [0, -1])
def test_a_budget_of_zero_or_less_is_unlimited(size):
    budget = ErrorBudget(size, window=60.0, client_id="c", clock=Clock())
    budget.spend(10**6)


def test_spending_nothing_records_nothing():
    clock = Clock()
    budget = ErrorBudget(1, window=60.0, client_id="c", clock=clock)
    for _ in range(100):
        budget.spend(0)
    budget.spend(1)
