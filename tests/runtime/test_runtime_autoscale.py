"""The autoscaling decision alone: load samples in, a replica count out."""

from __future__ import annotations

import pytest

from greenroom.runtime.autoscale import AutoscalePolicy, LoadHistory, Sample, decide

POLICY = AutoscalePolicy(
    min_replicas=1,
    max_replicas=4,
    target_ongoing_requests=2.0,
    upscale_delay_s=30.0,
    downscale_delay_s=600.0,
)


def steady(ongoing: float, start: float, end: float, step: float = 10.0) -> list[Sample]:
    count = int((end - start) / step) + 1
    return [Sample(at=start + i * step, ongoing=ongoing) for i in range(count)]


@pytest.mark.parametrize(
    ("ongoing", "wanted"),
    [(0, 1), (0.5, 1), (2, 1), (2.1, 2), (4, 2), (5, 3), (8, 4), (100, 4)],
)
def test_one_sample_asks_for_ceil_of_ongoing_over_target_within_the_range(
    ongoing: float, wanted: int
) -> None:
    assert POLICY.wanted_for(ongoing) == wanted


def test_the_count_goes_up_only_after_the_load_has_been_above_for_the_upscale_delay() -> None:
    samples = steady(6.0, start=0.0, end=20.0)  # 3 wanted, for 20 s so far
    assert decide(samples, current=1, policy=POLICY, now=20.0) == 1
    samples = steady(6.0, start=0.0, end=30.0)
    assert decide(samples, current=1, policy=POLICY, now=30.0) == 3


def test_a_burst_shorter_than_the_delay_changes_nothing() -> None:
    samples = [*steady(1.0, 0.0, 20.0), *steady(8.0, 30.0, 50.0), Sample(60.0, 1.0)]
    assert decide(samples, current=1, policy=POLICY, now=60.0) == 1


def test_going_up_takes_the_count_the_whole_window_sustained() -> None:
    # 4 wanted at first, then 3, then 4 again: 3 was asked for throughout
    samples = [Sample(0.0, 8.0), Sample(10.0, 6.0), Sample(20.0, 8.0), Sample(30.0, 8.0)]
    assert decide(samples, current=1, policy=POLICY, now=30.0) == 3


def test_the_count_goes_down_only_after_the_load_has_been_below_for_the_downscale_delay() -> None:
    samples = steady(1.0, start=0.0, end=590.0)
    assert decide(samples, current=3, policy=POLICY, now=590.0) == 3
    samples = steady(1.0, start=0.0, end=600.0)
    assert decide(samples, current=3, policy=POLICY, now=600.0) == 1


def test_going_down_takes_the_largest_count_the_window_asked_for() -> None:
    samples = [Sample(0.0, 0.0), Sample(300.0, 4.0), Sample(600.0, 0.0)]  # 1, 2, 1 wanted
    assert decide(samples, current=4, policy=POLICY, now=600.0) == 2


def test_one_sample_at_the_current_count_in_the_window_holds_it() -> None:
    samples = [*steady(8.0, 0.0, 20.0), Sample(25.0, 4.0), Sample(30.0, 8.0)]  # 2 wanted once
    assert decide(samples, current=2, policy=POLICY, now=30.0) == 2


def test_a_sample_holds_until_the_next_one() -> None:
    # one sample 40 s ago covers the whole 30-s window
    assert decide([Sample(0.0, 6.0)], current=1, policy=POLICY, now=40.0) == 3
    # history that starts inside the window does not reach back far enough
    assert decide([Sample(15.0, 6.0)], current=1, policy=POLICY, now=40.0) == 1


def test_never_beyond_the_range_and_a_count_outside_it_is_clamped_at_once() -> None:
    samples = steady(100.0, start=0.0, end=30.0)
    assert decide(samples, current=2, policy=POLICY, now=30.0) == 4
    assert decide(samples, current=4, policy=POLICY, now=30.0) == 4
    assert decide([], current=0, policy=POLICY, now=0.0) == 1
    assert decide([], current=9, policy=POLICY, now=0.0) == 4
    assert decide([], current=2, policy=POLICY, now=0.0) == 2


def test_zero_delays_follow_the_latest_sample() -> None:
    policy = AutoscalePolicy(
        min_replicas=1, max_replicas=2, upscale_delay_s=0.0, downscale_delay_s=0.0
    )
    assert decide([Sample(0.0, 0.0), Sample(1.0, 3.0)], current=1, policy=policy, now=1.0) == 2
    assert decide([Sample(0.0, 3.0), Sample(1.0, 0.0)], current=2, policy=policy, now=1.0) == 1


def test_the_policy_comes_from_the_stored_config() -> None:
    assert AutoscalePolicy.from_config({"replicas": 2}) is None
    assert AutoscalePolicy.from_config({"min_replicas": 1, "max_replicas": 3}) == AutoscalePolicy(
        min_replicas=1, max_replicas=3
    )
    config = {
        "min_replicas": 2,
        "max_replicas": 5,
        "target_ongoing_requests": 4.0,
        "upscale_delay_s": 1.0,
        "downscale_delay_s": 2.0,
    }
    assert AutoscalePolicy.from_config(config) == AutoscalePolicy(2, 5, 4.0, 1.0, 2.0)


def test_the_history_keeps_what_the_longest_window_needs() -> None:
    history = LoadHistory()
    for at in range(0, 100, 10):
        history.add(Sample(float(at), 1.0), keep_s=30.0)
    # the window [60, 90] is in force from the sample at 60
    assert [s.at for s in history.samples] == [60.0, 70.0, 80.0, 90.0]
    history.reset()
    assert history.samples == []
