"""Open-loop load profiles: a request rate over time, and the arrival times it implies.

A profile is a piecewise-linear rate (``knots`` of (t_s, req/s); two knots at one time
make a step) with named phases for reporting. ``arrivals`` turns it into send times,
evenly spaced or Poisson, fixed before the run: requests leave on schedule whatever the
responses, so queueing delay shows up in latency instead of silently lowering the rate
(what a closed loop does).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from serve_app.schema_base import StrictModel

ProfileKind = Literal["constant", "step", "ramp", "spike", "diurnal"]

# An online shop's day, rate relative to its evening peak, one value per hour 0..24 (the
# last closes the loop): quiet nights, a morning rise, a lunch bump, the evening peak.
SHOP_DAY = [
    0.05, 0.03, 0.02, 0.02, 0.02, 0.03, 0.06, 0.12, 0.22, 0.32, 0.40, 0.46,
    0.52, 0.48, 0.42, 0.40, 0.42, 0.50, 0.65, 0.85, 1.00, 0.92, 0.60, 0.25, 0.05,
]  # fmt: skip
SHOP_PHASES = [(0, "night"), (7, "morning"), (12, "midday"), (17, "evening"), (23, "late")]
"""(hour, phase name): each phase runs until the next one starts."""


class Profile(StrictModel):
    """A request rate over time."""

    kind: ProfileKind = Field(description="Which shape built it (for the report).")
    knots: list[tuple[float, float]] = Field(
        min_length=2, description="(t_s, req/s), t non-decreasing; linear between knots."
    )
    phases: list[tuple[float, str]] = Field(
        description="(start_s, name), in order; the first starts at 0."
    )

    @model_validator(mode="after")
    def _check(self) -> Profile:
        times = [t for t, _ in self.knots]
        if times[0] != 0 or any(b < a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError("knots must start at t=0 and never go back in time")
        if any(r < 0 for _, r in self.knots):
            raise ValueError("rates must be >= 0")
        if not self.phases or self.phases[0][0] != 0:
            raise ValueError("the first phase must start at 0")
        return self

    @property
    def duration_s(self) -> float:
        """When the last knot is."""
        return self.knots[-1][0]

    @property
    def peak_rate(self) -> float:
        """Highest rate of the profile."""
        return max(r for _, r in self.knots)

    def rate_at(self, t_s: np.ndarray | float) -> np.ndarray:
        """Rate (req/s) at ``t_s``; at a step, the rate after it."""
        times = np.array([t for t, _ in self.knots])
        rates = np.array([r for _, r in self.knots])
        t = np.atleast_1d(np.asarray(t_s, dtype=float))
        out = np.interp(t, times, rates)
        # np.interp takes the first of two knots at one time; a step means the second.
        for i in range(len(times) - 1):
            if times[i] == times[i + 1]:
                out[t == times[i]] = rates[i + 1]
        return out

    def phase_at(self, t_s: np.ndarray) -> np.ndarray:
        """Phase name of each time in ``t_s``."""
        starts = np.array([s for s, _ in self.phases])
        names = np.array([n for _, n in self.phases], dtype=object)
        return names[np.searchsorted(starts, np.asarray(t_s), side="right") - 1]

    def expected_requests(self) -> float:
        """The integral of the rate: how many requests the profile sends on average."""
        total = 0.0
        for (t0, r0), (t1, r1) in zip(self.knots, self.knots[1:], strict=False):
            total += (t1 - t0) * (r0 + r1) / 2
        return total

    def arrivals(
        self, mode: Literal["uniform", "poisson"] = "poisson", seed: int = 0
    ) -> np.ndarray:
        """Send times (seconds from the start), sorted.

        ``uniform``: the k-th request leaves when the integrated rate reaches k.
        ``poisson``: a Poisson process of that rate (exponential gaps in integrated time).
        """
        step_s = 0.001
        grid = np.arange(0.0, self.duration_s + step_s, step_s)
        rate = self.rate_at(grid)
        cumulative = np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2 * step_s)])
        total = cumulative[-1]
        if total <= 0:
            return np.zeros(0)
        if mode == "uniform":
            marks = np.arange(0.5, total, 1.0)
        else:
            rng = np.random.default_rng(seed)
            gaps = rng.exponential(1.0, size=int(total + 10 * np.sqrt(total) + 10))
            marks = np.cumsum(gaps)
            marks = marks[marks < total]
        # Invert the integrated rate; flat stretches (rate 0) never get an arrival.
        keep = np.concatenate([[True], np.diff(cumulative) > 0])
        return np.interp(marks, cumulative[keep], grid[keep])


def constant(rate: float, duration_s: float) -> Profile:
    """``rate`` req/s for ``duration_s``."""
    return Profile(kind="constant", knots=[(0, rate), (duration_s, rate)], phases=[(0, "steady")])


def step(
    low: float, high: float, at_s: float, duration_s: float, down_at_s: float | None = None
) -> Profile:
    """``low`` until ``at_s``, then ``high`` (until ``down_at_s``, then ``low`` again)."""
    knots = [(0.0, low), (at_s, low), (at_s, high)]
    phases = [(0.0, "before"), (at_s, "after-step")]
    if down_at_s is not None:
        knots += [(down_at_s, high), (down_at_s, low)]
        phases.append((down_at_s, "after-drop"))
    knots.append((duration_s, knots[-1][1]))
    return Profile(kind="step", knots=knots, phases=phases)


def ramp(start_rate: float, end_rate: float, duration_s: float) -> Profile:
    """Linear from ``start_rate`` to ``end_rate``."""
    return Profile(
        kind="ramp", knots=[(0, start_rate), (duration_s, end_rate)], phases=[(0, "ramp")]
    )


def spike(base: float, peak: float, at_s: float, width_s: float, duration_s: float) -> Profile:
    """``base``, with a jump to ``peak`` for ``width_s`` from ``at_s``."""
    end = at_s + width_s
    return Profile(
        kind="spike",
        knots=[(0, base), (at_s, base), (at_s, peak), (end, peak), (end, base), (duration_s, base)],
        phases=[(0, "before"), (at_s, "spike"), (end, "after")],
    )


def diurnal(night_rate: float, peak_rate: float, day_s: float) -> Profile:
    """An online shop's day compressed into ``day_s`` seconds: ``night_rate`` at the
    quietest hour, ``peak_rate`` in the evening."""
    low = min(SHOP_DAY)
    hour_s = day_s / 24
    knots = [
        (h * hour_s, night_rate + (peak_rate - night_rate) * (v - low) / (1 - low))
        for h, v in enumerate(SHOP_DAY)
    ]
    return Profile(
        kind="diurnal", knots=knots, phases=[(h * hour_s, name) for h, name in SHOP_PHASES]
    )
