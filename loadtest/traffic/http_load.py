"""Closed-loop HTTP load from Python threads for the benchmarks: OIP request bodies,
keep-alive connections to 127.0.0.1, waiting for a route to answer, latency summaries."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from loadtest.traffic.wrk import PORT


def infer_path(name: str) -> str:
    """OIP infer route of a model or pipeline."""
    return f"/v2/models/{name}/infer"


def fp32_body(data: list[float], shape: list[int]) -> bytes:
    """OIP JSON request with one FP32 tensor ``input``."""
    tensor = {"name": "input", "shape": shape, "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


# --- serving -----------------------------------------------------------------------


def wait_ok(path: str, payload: bytes, timeout_s: float = 60) -> bytes:
    """POST until the route answers 200 (HAProxy picks routes up after RUNNING)."""
    deadline = time.monotonic() + timeout_s
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        try:
            data = post(conn, path, payload)
            if data is not None:
                return data
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no 200 from {path} in {timeout_s:.0f} s")
        time.sleep(0.2)


# --- closed-loop client ------------------------------------------------------------


def post(conn: http.client.HTTPConnection, path: str, payload: bytes) -> bytes | None:
    """One POST on a keep-alive connection; the body on 200, else None."""
    conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    return data if resp.status == 200 else None


Call = Callable[[http.client.HTTPConnection], bool]


def closed_loop(
    call: Call, concurrency: int, warmup_s: float, duration_s: float, probe: Callable[[], Any]
) -> tuple[dict[str, Any], Any, Any]:
    """``concurrency`` threads each repeat ``call`` back to back for ``warmup_s +
    duration_s``; only calls started in the measured window count.

    Returns:
        The summary (rps, p50/p99/mean ms, ok, errors), and ``probe()`` taken at the
        start and at the end of the window.
    """
    t_start = time.perf_counter() + warmup_s
    t_end = t_start + duration_s
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        while (t0 := time.perf_counter()) < t_end:
            try:
                ok = call(conn)
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            if t0 >= t_start:
                if ok:
                    latencies[i].append((time.perf_counter() - t0) * 1e3)
                else:
                    errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t_start - time.perf_counter()))
    before = probe()
    time.sleep(max(0.0, t_end - time.perf_counter()))
    after = probe()
    for t in threads:
        t.join()
    lat = np.array([x for per in latencies for x in per])
    summary = {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "ok": int(lat.size),
        "errors": sum(errors),
        "rps": round(lat.size / duration_s, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
        "mean_ms": round(float(lat.mean()), 3) if lat.size else None,
    }
    return summary, before, after


def chained_output(
    conn: http.client.HTTPConnection,
    request: bytes,
    models: tuple[str, ...],
    decode: bool = True,
) -> Any:
    """A chain as HTTP calls, each answer's ``output`` posted to the next of ``models``.

    Returns:
        The last ``output`` tensor (the last answer is left undecoded, like the other
        paths, when ``decode`` is False); None when a call was not answered 200.
    """
    payload = request
    for i, name in enumerate(models):
        data = post(conn, infer_path(name), payload)
        if data is None:
            return None
        if decode or i < len(models) - 1:
            out = json.loads(data)["outputs"][0]
            payload = fp32_body(out["data"], out["shape"])
    return out if decode else True
