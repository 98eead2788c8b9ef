"""The same load profiles for Locust users::

    LOADTEST_MODEL=minilm LOADTEST_PROFILE=step LOADTEST_LOW=5 LOADTEST_HIGH=50 \\
        locust -f loadtest/traffic/locustfile.py --headless --host http://127.0.0.1:8000

Locust is closed loop per user, so the rate is made of users: each user sends one
request per second (``constant_throughput(1)``) and ``ProfileShape`` sets the number of
users to the profile's rate every second. Payloads are generated from the target's OIP
metadata, or read from ``LOADTEST_PAYLOAD`` (a JSON OIP request). Settings (env):
``LOADTEST_PROFILE`` constant|step|ramp|spike|diurnal, ``LOADTEST_RATE``,
``LOADTEST_LOW``, ``LOADTEST_HIGH``, ``LOADTEST_AT_S``, ``LOADTEST_DOWN_AT_S``,
``LOADTEST_WIDTH_S``, ``LOADTEST_DURATION_S``, ``LOADTEST_ROWS``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from locust import HttpUser, LoadTestShape, constant_throughput, events, task

from loadtest.traffic.locust_profile import profile_from_env, users_at

_BODY: dict[str, bytes] = {}


@events.test_start.add_listener
def _load_payload(environment: Any, **_: Any) -> None:
    from loadtest.traffic.payloads import body_from_file, generated_body, model_metadata

    path = os.environ.get("LOADTEST_PAYLOAD")
    model = os.environ.get("LOADTEST_MODEL", "minilm")
    rows = int(os.environ.get("LOADTEST_ROWS", "1"))
    host = environment.host or "http://127.0.0.1:8000"
    _BODY["body"] = (
        body_from_file(Path(path)) if path else generated_body(model_metadata(host, model), rows)
    )


class OIPUser(HttpUser):
    """Posts the payload to ``/v2/models/<LOADTEST_MODEL>/infer`` once a second."""

    wait_time = constant_throughput(1)

    @task
    def infer(self) -> None:
        model = os.environ.get("LOADTEST_MODEL", "minilm")
        self.client.post(
            f"/v2/models/{model}/infer",
            data=_BODY["body"],
            headers={"content-type": "application/json"},
            name=f"infer {model}",
        )


class ProfileShape(LoadTestShape):
    """Users follow the profile's rate; the test stops at the profile's end."""

    def __init__(self) -> None:
        super().__init__()
        self.profile = profile_from_env()

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= self.profile.duration_s:
            return None
        users = users_at(self.profile, t)
        return users, max(1.0, float(users))
