"""How fast the open-loop generator itself can go on this machine: it sends to a no-op
HTTP server (aiohttp, in its own process, answering a fixed OIP-like body) at rising
rates and reports whether requests still leave on schedule. A rate is sustained when the
p99 lag between schedule and send stays under ``LAG_LIMIT_MS`` and every request is
answered::

    python -m loadtest.traffic.ceiling --out loadtest/results/generator_ceiling.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.harness.machine import free_port, machine_info, wait_for
from loadtest.traffic.generator import Target, open_loop
from loadtest.traffic.profiles import constant

LAG_LIMIT_MS = 10.0

SERVER = """
import sys
from aiohttp import web
body = b'{"model_name":"noop","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[0]}]}'
async def infer(request):
    await request.read()
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.add_routes([web.post("/v2/models/noop/infer", infer), web.get("/", lambda r: web.Response())])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def measure(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Send ``rate`` req/s for ``seconds`` and summarize schedule lag and answers."""
    target = Target(url, b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[0]}]}')
    arrivals = constant(rate, seconds).arrivals("uniform")
    t0 = time.monotonic()
    out = asyncio.run(open_loop(target, arrivals))
    wall = time.monotonic() - t0
    lag_ms = (out.sent_s - out.scheduled_s) * 1e3
    ok = int((out.status == 200).sum())
    return {
        "rate": rate,
        "requests": len(arrivals),
        "ok": ok,
        "sent_per_s": round(len(arrivals) / float(out.sent_s.max() - out.sent_s.min()), 1),
        "lag_p50_ms": round(float(np.percentile(lag_ms, 50)), 2),
        "lag_p99_ms": round(float(np.percentile(lag_ms, 99)), 2),
        "latency_p99_ms": round(float(np.percentile(out.latency_s, 99) * 1e3), 2),
        "wall_s": round(wall, 2),
        "sustained": bool(ok == len(arrivals) and np.percentile(lag_ms, 99) < LAG_LIMIT_MS),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the ceiling measurement; write JSON and print a table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rates", default="250,500,1000,1500,2000,3000")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        import urllib.request

        def up() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)  # noqa: S310
                return True
            except OSError:
                return False

        wait_for(up, 20, "the no-op server")
        url = f"http://127.0.0.1:{port}/v2/models/noop/infer"
        rows = [measure(url, float(r), a.seconds) for r in a.rates.split(",")]
    finally:
        server.terminate()
        server.wait(10)
    sustained = [r["rate"] for r in rows if r["sustained"]]
    result = {
        "machine": machine_info(),
        "lag_limit_ms": LAG_LIMIT_MS,
        "ceiling_rps": max(sustained) if sustained else None,
        "levels": rows,
    }
    for r in rows:
        print(r)
    print(f"ceiling: {result['ceiling_rps']} req/s (p99 schedule lag < {LAG_LIMIT_MS} ms)")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
