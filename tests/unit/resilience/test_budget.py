from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.resilience.budget import RetryBudget
from tests.unit.resilience.fakes import FakeClock


def test_reserve_allows_min_retries_without_traffic() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.2, min_retries_per_s=1.0, clock=clock, window=10.0)
    granted = sum(budget.try_withdraw() for _ in range(100))
    assert granted == 10  # 1/s * 10 s


def test_ratio_of_recent_requests() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.2, min_retries_per_s=0.0, clock=clock)
    for _ in range(100):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(100)) == 20


def test_window_slides() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.5, min_retries_per_s=0.0, clock=clock, window=10.0)
    for _ in range(10):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(10)) == 5
    clock.advance(10.5)  # the requests (and retries) left the window
    assert budget.try_withdraw() is False
    budget.deposit()
    budget.deposit()
    assert budget.try_withdraw() is True
    assert budget.try_withdraw() is False


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.floats(0.0, 1.0),
    min_per_s=st.floats(0.0, 5.0),
    ops=st.lists(
        st.tuples(st.sampled_from(["req", "retry", "tick"]), st.floats(0.0, 3.0)), max_size=300
    ),
)
def test_retries_never_exceed_budget(ratio: float, min_per_s: float, ops: list) -> None:  # type: ignore[type-arg]
    """Against a reference model with the same buckets: at every grant, the granted retries
    still in the window never exceed ratio * requests in the window + reserve."""
    window, buckets = 10.0, 10
    width = window / buckets
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio, min_per_s, clock, window=window, buckets=buckets)
    requests: list[int] = []
    retries: list[int] = []
    for op, dt in ops:
        if op == "tick":
            clock.advance(dt)
            continue
        idx = int(clock.now // width)
        if op == "req":
            budget.deposit()
            requests.append(idx)
        elif budget.try_withdraw():
            retries.append(idx)
            live_req = sum(1 for i in requests if i > idx - buckets)
            live_ret = sum(1 for i in retries if i > idx - buckets)
            assert live_ret <= ratio * live_req + min_per_s * window + 1e-9
