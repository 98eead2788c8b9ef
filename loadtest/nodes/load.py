"""The experiment's closed-loop HTTP load: every served request keeps its
``x-request-id``, which the replicas' access logs map to the replica that served it."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

from loadtest.nodes.settings import Settings


@dataclass
class LoadStats:
    """What the load generator saw; ``records`` are (t_done, latency_s, x-request-id)."""

    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    records: list[tuple[float, float, str]] = field(default_factory=list)
    started: float | None = None
    started_wall: float | None = None
    stopped: float | None = None
    stop_at: float | None = None


def request_body(rows: int = 1) -> bytes:
    """An OIP request for mlp-head: FP32 ``input`` of shape [rows, 384]."""
    data = [round((i % 97) / 97.0, 4) for i in range(rows * 384)]
    tensor = {"name": "input", "shape": [rows, 384], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


async def run_load(url: str, s: Settings, stats: LoadStats) -> None:
    """Closed loop: ``s.concurrency`` clients post until ``s.load_s`` (or ``stats.stop_at``)
    or ``s.max_requests``. Anything but a 200 with outputs is a failure."""
    import httpx

    body, sent = request_body(), 0
    stats.started, stats.started_wall = time.monotonic(), time.time()
    deadline = stats.started + s.load_s

    def more() -> bool:
        nonlocal sent
        now, sent = time.monotonic(), sent + 1
        return now < deadline and now < (stats.stop_at or deadline) and sent <= s.max_requests

    async def client_loop(client: httpx.AsyncClient) -> None:
        while more():
            t_send = time.monotonic()
            stats.in_flight += 1
            try:
                r = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as e:
                stats.failed += 1
                stats.failures[type(e).__name__] += 1
                continue
            finally:
                stats.in_flight -= 1
            if r.status_code == 200 and b'"outputs"' in r.content:
                done = time.monotonic()
                stats.ok += 1
                stats.records.append((done, done - t_send, r.headers.get("x-request-id", "")))
            else:
                stats.failed += 1
                stats.failures[f"HTTP {r.status_code}"] += 1

    limits = httpx.Limits(max_connections=s.concurrency)
    async with httpx.AsyncClient(timeout=s.request_timeout_s, trust_env=False, limits=limits) as c:
        await asyncio.gather(*(client_loop(c) for _ in range(s.concurrency)))
    stats.stopped = time.monotonic()
