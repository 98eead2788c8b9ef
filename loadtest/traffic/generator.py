"""HTTP load: open loop (requests leave on a schedule) and closed loop (N clients).

One asyncio loop with aiohttp keep-alive connections. Every request is recorded: when it
was scheduled, when it actually left (the generator's own lag), its latency, status and
error. A 200 counts as served; anything else, including a connection error (status 0) or
a client timeout (status 0, error ``timeout``), is a failure. An HTTP error keeps why, as
the server said it (``overloaded, retry later``), so a test can name each failure it
allows by its response body.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

STATUS_CLIENT_ERROR = 0
"""Status recorded when no HTTP answer came back (connection error, client timeout)."""
REASON_CHARS = 120
"""Most characters of an error body kept as the request's ``error``."""


def error_reason(body: bytes) -> str:
    """Why an HTTP error happened, from its body: an OIP error's ``error`` field, else the
    first line of text (HTML tags dropped), at most ``REASON_CHARS`` characters."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return parsed["error"][:REASON_CHARS]
    lines = [ln.strip() for ln in re.sub(r"<[^>]*>", "\n", text).splitlines()]
    return next((ln for ln in lines if ln), "")[:REASON_CHARS]


@dataclass
class Target:
    """Where requests go and what they carry."""

    url: str
    """Full URL, e.g. ``http://127.0.0.1:8000/v2/models/minilm/infer``."""
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    name: str = ""
    """Model or pipeline name (recorded with each request)."""


@dataclass
class Requests:
    """Columns of one run's requests (seconds from the run's start)."""

    scheduled_s: np.ndarray
    sent_s: np.ndarray
    latency_s: np.ndarray
    status: np.ndarray
    error: list[str]
    phase: list[str]
    target: str

    @classmethod
    def empty(cls, n: int, target: str) -> Requests:
        nan = np.full(n, np.nan)
        return cls(
            nan.copy(), nan.copy(), nan.copy(), np.zeros(n, np.int16), [""] * n, [""] * n, target
        )

    def table(self, wall_start_s: float) -> pa.Table:
        """As a pyarrow table; ``wall_start_s`` (Unix time of t=0) in the schema metadata."""
        return pa.table(
            {
                "scheduled_s": self.scheduled_s,
                "sent_s": self.sent_s,
                "latency_s": self.latency_s,
                "status": self.status,
                "error": self.error,
                "phase": self.phase,
                "target": [self.target] * len(self.status),
            },
            metadata={"wall_start_s": str(wall_start_s)},
        )


async def post(session: Any, target: Target, timeout_s: float) -> tuple[int, str]:
    """One request: (200, ""), (HTTP status, why from the body) or
    (``STATUS_CLIENT_ERROR``, what went wrong)."""
    import aiohttp

    try:
        async with session.post(
            target.url,
            data=target.body,
            headers=target.headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as r:
            body = await r.read()
            return r.status, "" if r.status == 200 else error_reason(body)
    except TimeoutError:
        return STATUS_CLIENT_ERROR, "timeout"
    except aiohttp.ClientError as e:
        return STATUS_CLIENT_ERROR, type(e).__name__


async def _send(
    session: Any, target: Target, out: Requests, i: int, t0: float, timeout_s: float
) -> None:
    sent = time.monotonic()
    out.sent_s[i] = sent - t0
    out.status[i], out.error[i] = await post(session, target, timeout_s)
    out.latency_s[i] = time.monotonic() - sent


def _connector(max_connections: int) -> Any:
    import aiohttp

    # No DNS cache games, no per-host limit below the total: one target, many sockets.
    return aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, use_dns_cache=True)


async def open_loop(
    target: Target,
    arrivals_s: np.ndarray,
    phases: list[str] | None = None,
    timeout_s: float = 30.0,
    max_connections: int = 1024,
    t0: float | None = None,
) -> Requests:
    """Send one request per arrival time (seconds from ``t0``, default now), without
    waiting for answers; returns when every request has finished or timed out.

    ``max_connections`` bounds open sockets; once that many requests are in flight, a
    request waits for a socket and its ``sent_s`` (and latency, which counts from
    ``sent_s``) shows it: ``sent_s - scheduled_s`` is the generator's lag.
    """
    import aiohttp

    n = len(arrivals_s)
    out = Requests.empty(n, target.name)
    out.scheduled_s[:] = arrivals_s
    if phases is not None:
        out.phase = list(phases)
    start = time.monotonic() if t0 is None else t0
    tasks = []
    async with aiohttp.ClientSession(connector=_connector(max_connections)) as session:
        for i, at in enumerate(arrivals_s):
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(session, target, out, i, start, timeout_s)))
        if tasks:
            await asyncio.gather(*tasks)
    return out


async def closed_loop(
    target: Target, concurrency: int, duration_s: float, timeout_s: float = 30.0, phase: str = ""
) -> Requests:
    """``concurrency`` clients, each sending its next request when the last one is
    answered, for ``duration_s``."""
    start = time.monotonic()
    deadline = start + duration_s
    rows: list[tuple[float, float, int, str]] = []
    async with aiohttp_session(concurrency) as session:

        async def client() -> None:
            while (sent := time.monotonic()) < deadline:
                status, error = await post(session, target, timeout_s)
                rows.append((sent - start, time.monotonic() - sent, status, error))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    out = Requests.empty(len(rows), target.name)
    for i, (sent, latency, status, error) in enumerate(rows):
        out.scheduled_s[i] = out.sent_s[i] = sent
        out.latency_s[i], out.status[i], out.error[i], out.phase[i] = latency, status, error, phase
    return out


def aiohttp_session(max_connections: int) -> Any:
    """A client session with ``max_connections`` keep-alive sockets."""
    import aiohttp

    return aiohttp.ClientSession(connector=_connector(max_connections))
