"""The Locust file's profile logic, importable without Locust (importing ``locust``
monkey-patches the process with gevent, so nothing but the Locust run may import it)."""

from __future__ import annotations

import argparse
import math
import os

from loadtest.cli import profile_from_args
from loadtest.traffic.profiles import Profile


def profile_from_env(env: dict[str, str] | None = None) -> Profile:
    """The profile the ``LOADTEST_*`` variables describe (same flags as the CLI)."""
    env = dict(os.environ if env is None else env)

    def number(key: str, default: float | None) -> float | None:
        raw = env.get(f"LOADTEST_{key}")
        return float(raw) if raw not in (None, "") else default

    return profile_from_args(
        argparse.Namespace(
            profile=env.get("LOADTEST_PROFILE", "step"),
            rate=number("RATE", 10.0),
            low=number("LOW", 5.0),
            high=number("HIGH", 50.0),
            at_s=number("AT_S", 10.0),
            down_at_s=number("DOWN_AT_S", None),
            width_s=number("WIDTH_S", 5.0),
            duration_s=number("DURATION_S", 60.0),
        )
    )


def users_at(profile: Profile, t_s: float) -> int:
    """Users (one request/s each) that carry the profile's rate at ``t_s``."""
    return math.ceil(float(profile.rate_at(t_s)[0]))
