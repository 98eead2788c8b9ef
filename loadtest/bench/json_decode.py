"""What decoding a JSON OIP body costs a replica (issue 27): the decoder before (pydantic
parses every element into a Python object, then numpy copies them) against the one in
``serve_app.protocol`` now (data arrays counted, then parsed into numpy in chunks).

For FP32 bodies of about 1, 4 and 16 MiB, each path runs in a fresh process, which
reports: the peak RSS growth during one decode (sampled every 1 ms), the peak of
Python's traced allocations (``tracemalloc``, a separate run), the time one decode holds
its thread (median of ``--repeats``), and the longest gap of an event loop's 1 ms ticker
while the decode runs where the replica runs it (the old one on the loop; the new one
in a worker thread for bodies above ``PREPARE_OFF_LOOP_BYTES``). Results:
``loadtest/results/json-decode.{json,md}``.

    python -m loadtest.bench.json_decode
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtest.harness.demo_process import REPO_ROOT
from loadtest.harness.machine import machine_info, machine_line
from loadtest.reports.files import write_results
from serve_app.protocol import json_data

SIZES_MIB = (1, 4, 16)
PATHS = ("before", "after")
MAX_ROWS = 1024
"""``http.limits.max_rows``: wider rows make the larger bodies."""


def baseline_decode(body: bytes) -> dict[str, np.ndarray]:
    """The JSON decoder before issue 27, kept as the baseline: pydantic validates the
    whole body (every element a Python object), then each input is flattened, its
    elements type-checked one by one and copied into numpy."""
    from serve_app.protocol.json_data import flatten
    from serve_app.protocol.oip import DATATYPES, InferenceRequest

    request = InferenceRequest.model_validate_json(body)
    out = {}
    for inp in request.inputs:
        flat = flatten(inp.data or [])
        if any(isinstance(x, (str, bool, list, dict)) or x is None for x in flat):
            raise TypeError("numeric data expected")
        out[inp.name] = np.asarray(flat, dtype=DATATYPES[inp.datatype]).reshape(inp.shape)
    return out


def current_decode(body: bytes) -> dict[str, np.ndarray]:
    """The decoder replicas run now."""
    from serve_app.protocol import oip

    return oip.decode_request(body, None, oip.DEFAULT_LIMITS).inputs


def fp32_body(target_bytes: int, seed: int = 0) -> tuple[bytes, list[int]]:
    """A JSON request of about ``target_bytes`` with one FP32 input of random normals,
    nested by rows as most clients send it; returns the body and the shape."""
    sample = np.random.default_rng(seed).normal(size=4096).astype(np.float32)
    per_element = len(orjson.dumps(sample, option=orjson.OPT_SERIALIZE_NUMPY)) / sample.size
    elements = int(target_bytes / per_element)
    cols = max(1024, math.ceil(elements / MAX_ROWS))
    shape = [max(1, elements // cols), cols]
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    request = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": x}]}
    return orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY), shape


CHILD = r"""
import asyncio, json, statistics, sys, time, tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from loadtest.bench.json_decode import baseline_decode, current_decode
from serve_app.server.memory import measure_peak_bytes
from serve_app.server.off_loop import PREPARE_OFF_LOOP_BYTES

body_file, path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
decode = baseline_decode if path == "before" else current_decode
tiny = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                               "data": [[1.0, 2.0]]}]}).encode()
decode(tiny)  # imports and first-call costs out of the numbers
body = Path(body_file).read_bytes()
rss_peak = measure_peak_bytes(lambda: decode(body), "cpu")
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    decode(body)
    times.append(time.perf_counter() - t0)
tracemalloc.start()
decode(body)
traced_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()

async def loop_gap():
    gaps = []
    done = False
    async def ticker():
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    if path == "after" and len(body) > PREPARE_OFF_LOOP_BYTES:
        with ThreadPoolExecutor(1) as pool:
            await asyncio.get_running_loop().run_in_executor(pool, decode, body)
    else:
        decode(body)
    await asyncio.sleep(0.01)
    done = True
    await task
    return max(gaps)

print(json.dumps({"rss_peak_bytes": rss_peak, "traced_peak_bytes": traced_peak,
                  "hold_s": statistics.median(times), "loop_gap_s": asyncio.run(loop_gap())}))
"""


def measure(body_file: Path, path: str, repeats: int) -> dict[str, Any]:
    """One fresh process's numbers for ``path`` (before/after) on the body in ``body_file``."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(body_file), path, str(repeats)],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(results: dict[str, Any]) -> str:
    """The Markdown table of a run."""
    mib = 2**20
    lines = [
        "# Decoding JSON FP32 bodies (`python -m loadtest.bench.json_decode`)",
        "",
        f"{results['machine']['date']}. {machine_line(results['machine'], 'torch')}",
        "before: pydantic parses the whole body, then numpy copies each element "
        "(`baseline_decode`); after: `oip.decode_request` (data arrays counted, then "
        f"parsed into numpy in {results['chunk_bytes'] // 1024} KiB chunks). Each cell is "
        "one fresh process; hold time "
        f"is the median of {results['repeats']} decodes; loop gap is the longest gap of a "
        "1 ms ticker on the event loop while the decode runs where the replica runs it "
        "(before: on the loop; after: in a worker thread).",
        "",
        "| body | shape | path | peak RSS growth | traced peak | x body | thread held | loop gap |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in results["bodies"]:
        for path in PATHS:
            r = run[path]
            lines.append(
                f"| {run['body_bytes'] / mib:.1f} MiB | {run['shape']} | {path} "
                f"| {r['rss_peak_bytes'] / mib:.1f} MiB | {r['traced_peak_bytes'] / mib:.1f} MiB "
                f"| {r['traced_peak_bytes'] / run['body_bytes']:.2f} "
                f"| {r['hold_s'] * 1e3:.0f} ms | {r['loop_gap_s'] * 1e3:.0f} ms |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure both decoders on each body size and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per process")
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=list(SIZES_MIB))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "loadtest/results/json-decode")
    a = parser.parse_args(argv)
    bodies = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes_mib:
            body, shape = fp32_body(size * 2**20)
            body_file = Path(tmp) / f"{size}.json"
            body_file.write_bytes(body)
            same = all(
                np.array_equal(baseline_decode(body)[k], v) for k, v in current_decode(body).items()
            )
            run: dict[str, Any] = {"body_bytes": len(body), "shape": shape, "same": same}
            for path in PATHS:
                run[path] = measure(body_file, path, a.repeats)
            bodies.append(run)
    results = {
        "machine": machine_info(),
        "repeats": a.repeats,
        "chunk_bytes": json_data.CHUNK_BYTES,
        "bodies": bodies,
    }
    write_results(a.out, results, report(results))


if __name__ == "__main__":
    main()
