"""Replicas that follow the load: how many a revision wants, from its recent load alone.

Ray Serve's semantics: the load is the revision's ongoing requests (what its routers have queued
plus the batches they have sent, summed over every fresh router); the count it asks for is
`ceil(ongoing / target_ongoing_requests)`, clamped to `[min_replicas, max_replicas]`. The count
goes up only once every sample of the last `upscale_delay_s` asked for more than the current
count, down only once every sample of the last `downscale_delay_s` asked for fewer; it then
moves to the count that the whole window sustained (the smallest asked for when going up, the
largest when going down), so a burst shorter than the delay changes nothing. A count outside
the range is clamped at once. After a change the history starts afresh (`LoadHistory.reset`),
as Ray's decision counters do, so every step waits its delay.

`decide` is a pure function; the supervisor (`greenroom.runtime.reconcile`) keeps one
`LoadHistory` per revision, samples the load every pass and writes the count it returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AutoscalePolicy:
    """A revision's autoscaling knobs (its config's `min_replicas` … `downscale_delay_s`)."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AutoscalePolicy | None:
        """The policy of a revision's stored config; None when it gives no range (a fixed
        `replicas` count)."""
        low, high = config.get("min_replicas"), config.get("max_replicas")
        if low is None or high is None:
            return None
        return cls(
            min_replicas=int(low),
            max_replicas=int(high),
            target_ongoing_requests=float(config.get("target_ongoing_requests") or 2.0),
            upscale_delay_s=float(config.get("upscale_delay_s", 30.0)),
            downscale_delay_s=float(config.get("downscale_delay_s", 600.0)),
        )

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))

    def wanted_for(self, ongoing: float) -> int:
        """The count one load sample asks for: ceil(ongoing / target), within the range."""
        return self.clamp(math.ceil(max(ongoing, 0.0) / self.target_ongoing_requests))


@dataclass(frozen=True)
class Sample:
    """The revision's ongoing requests (all routers together) at monotonic time `at`; it holds
    until the next sample."""

    at: float
    ongoing: float


def decide(samples: Sequence[Sample], *, current: int, policy: AutoscalePolicy, now: float) -> int:
    """The replica count the revision should run, from its load samples (oldest first)."""
    clamped = policy.clamp(current)
    if clamped != current or not samples:
        return clamped
    up = _window(samples, now, policy.upscale_delay_s)
    if up is not None:
        wanted = [policy.wanted_for(s.ongoing) for s in up]
        if all(w > current for w in wanted):
            return min(wanted)
    down = _window(samples, now, policy.downscale_delay_s)
    if down is not None:
        wanted = [policy.wanted_for(s.ongoing) for s in down]
        if all(w < current for w in wanted):
            return max(wanted)
    return current


def _window(samples: Sequence[Sample], now: float, delay_s: float) -> Sequence[Sample] | None:
    """The samples in force over `[now - delay_s, now]`: the last one taken at or before its
    start and every later one; None when the history does not reach back that far."""
    start = now - delay_s
    first = None
    for index, sample in enumerate(samples):
        if sample.at <= start:
            first = index
    return None if first is None else samples[first:]


@dataclass
class LoadHistory:
    """One revision's samples, kept for as long as the longer delay needs."""

    samples: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample, *, keep_s: float) -> None:
        self.samples.append(sample)
        start = sample.at - keep_s
        # drop what no window needs any more: every sample before the last one at or before
        # the oldest window's start
        while len(self.samples) > 1 and self.samples[1].at <= start:
            del self.samples[0]

    def reset(self) -> None:
        self.samples.clear()
