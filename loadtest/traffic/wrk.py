"""Closed-loop HTTP load with wrk on the demo's OIP infer route: request bodies, the Lua
script that cycles through them and counts status codes, a run's numbers, and the
wait for the first 200. Needs ``wrk`` (``apt-get install wrk``); 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtest.traffic.payloads import SENTENCE

PORT = 8000


BASE = f"http://127.0.0.1:{PORT}"


INFER = f"{BASE}/v2/models/minilm/infer"


def body(texts: list[str]) -> str:
    """OIP JSON body for ``texts``."""
    return json.dumps(
        {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    )


def wrk_script(payloads: list[str], path: Path) -> Path:
    """A wrk Lua script that cycles through ``payloads`` and counts status codes."""
    bodies = ",\n".join("[==[" + p + "]==]" for p in payloads)
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"local bodies = {{{bodies}}}\nlocal i = 0\nlocal codes = {{}}\n"
        "request = function()\n  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\nend\n"
        "response = function(status, headers, b)\n  codes[status] = (codes[status] or 0) + 1\nend\n"
        "done = function(summary, latency, requests)\n  for k, v in pairs(codes) do\n"
        '    io.write(string.format("STATUS %d %d\\n", k, v))\n  end\nend\n'
    )
    return path


def run_wrk(
    script: Path, connections: int, duration_s: float, warmup: bool = True, url: str = INFER
) -> dict[str, Any]:
    """One closed-loop wrk run on ``url`` (after a 2 s warm-up run unless ``warmup`` is
    False); returns rps, latency percentiles (ms) and status counts."""
    if warmup:
        subprocess.run(
            ["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url],
            capture_output=True,
            check=True,
        )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration_s:.0f}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    rps = float(found.group(1))
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[f"p{pct}_ms"] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    codes = {int(c): int(n) for c, n in re.findall(r"^STATUS (\d+) (\d+)$", out, re.M)}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # wrk runs done() in another Lua state than response(), so the STATUS lines may not
    # come; its own count of non-2xx/3xx answers always does.
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = max(
        sum(n for c, n in codes.items() if c != 200), int(non_2xx.group(1)) if non_2xx else 0
    ) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return {"rps": rps, **lat, "status": codes, "errors": errors}


def wait_first_200(deadline_s: float, url: str = INFER, data: bytes | None = None) -> float:
    """POST ``data`` (one-sentence OIP body by default) to ``url`` until it answers 200;
    returns when it did (``time.monotonic()``)."""
    data = data or body([SENTENCE]).encode()
    while time.monotonic() < deadline_s:
        try:
            req = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic()
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError("no 200 from the served model")
