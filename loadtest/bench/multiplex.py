"""Multiplexed family vs one deployment per tenant (issue 16), measured on this machine.

One local Ray (2 logical CPUs, HAProxy ingress, 127.0.0.1 only) serves:

- ``tenants``: a multiplexed family of ``--tenants`` MLP heads (384 -> 128 -> 8, seeded
  random weights each, published into the repository and verified per tenant) on
  ``--replicas`` replicas, each keeping ``--max-models`` tenants (Ray's LRU);
- ``single``: one of those tenants as an ordinary one-model deployment (what "one
  deployment per tenant" would run ``--tenants`` times), batch wait 0.

Measured, in order:

1. **cold load**: ``--cold`` never-loaded tenants, one request each by OIP name (the
   load happens in it), then a second (warm) request; client latencies of both, plus
   Ray's ``ray_serve_multiplexed_model_load_latency_ms`` (the load inside the LRU; the
   tenant's sha256 verification runs just before it, outside the LRU, and is in the
   cold request's latency).
2. **hop cost**: hot tenant, sequential (c=1) requests: ``single`` direct (one hop),
   the family by header (one hop) and by OIP name (HAProxy -> server app -> handle ->
   family: one more hop).
3. **Zipf mix**: open-loop Poisson arrivals at ``--rate`` req/s for ``--duration-s``
   (after ``--warmup-s`` not counted), tenant of each request drawn from a Zipf law
   (exponent ``--zipf-s``, ranks shuffled), once addressed by OIP name (Serve's handle
   router prefers a replica holding the tenant) and once by header on the family's route
   (HAProxy picks the replica, ``leastconn``, blind to the tenant). Hit rate from Ray's
   per-replica counters ``ray_serve_multiplexed_get_model_requests_counter`` and
   ``..._models_load_counter`` (hit rate = 1 - loads / requests), p50/p99 from the client;
   next to it the hit rate an LRU simulation of the same tenant sequence gives with
   perfect affinity and with random replica choice. ``--haproxy-balance tenant-header``
   (``http.haproxy_balance``) makes HAProxy hash the header instead.
4. **memory**: RSS, USS and PSS of every replica process (psutil), after the mix. The
   memory that ``--tenants`` single-tenant deployments would need is *extrapolated* from
   the one measured ``single`` replica.

    python -m loadtest.bench.multiplex                  # ~4 min on 2 cores
    python -m loadtest.bench.multiplex --quick          # shorter, smoke check

Results: ``<out>/multiplex.json`` and ``multiplex.md`` (default
``loadtest/results/multiplex``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench.multiplex_stats import (
    FAMILY,
    PREFIX,
    SINGLE,
    counters_delta,
    lru_hit_rate,
    scrape,
    summary_ms,
    zipf_sequence,
)
from loadtest.harness.machine import free_port
from loadtest.reports.multiplex import write

BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 384], "datatype": "FP32", "data": [0.01] * 384}]}
).encode()
JSON = {"content-type": "application/json"}


def app_dict(
    root: Path, port: int, admin: tuple[int, int], a: argparse.Namespace
) -> dict[str, Any]:
    """The benchmark's AppConfig (as a dict)."""
    return {
        "repository": {"root": str(root)},
        "http": {
            "host": "127.0.0.1",
            "port": port,
            "admin_ports": list(admin),
            "haproxy_balance": a.haproxy_balance,
        },
        "models": [
            {
                "name": FAMILY,
                "multiplex": {"tenant_prefix": PREFIX, "max_models_per_replica": a.max_models},
                "num_replicas": a.replicas,
                "resources": {"num_cpus": 0.5, "torch_threads": 1},
            },
            {
                "name": SINGLE,
                "repository_name": f"{PREFIX}0000",
                "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.0},
                "resources": {"num_cpus": 0.5, "torch_threads": 1},
            },
        ],
    }


async def open_loop(
    base: str, targets: list[tuple[str, dict[str, str]]], rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One request per (path, headers) at Poisson arrivals of ``rate``; latencies (s)
    and statuses (0: no answer)."""
    import aiohttp

    from loadtest.traffic.generator import Target, post

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, size=len(targets)))
    latency = np.full(len(targets), np.nan)
    status = np.zeros(len(targets), np.int32)

    async def send(i: int, session: Any) -> None:
        path, headers = targets[i]
        t = time.monotonic()
        status[i], _ = await post(session, Target(base + path, BODY, JSON | headers), 30.0)
        latency[i] = time.monotonic() - t

    connector = aiohttp.TCPConnector(limit=512, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        tasks = []
        for i, at in enumerate(arrivals):
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, session)))
        await asyncio.gather(*tasks)
    return latency, status


def sequential(base: str, path: str, headers: dict[str, str], n: int) -> np.ndarray:
    """``n`` requests one after the other on one keep-alive connection; latencies (s)."""
    import httpx

    out = np.empty(n)
    with httpx.Client(base_url=base, timeout=30) as c:
        for i in range(n):
            t = time.perf_counter()
            r = c.post(path, content=BODY, headers=JSON | headers)
            out[i] = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"{path} {headers}: {r.status_code} {r.text}")
    return out


def replica_memory() -> list[dict[str, Any]]:
    """RSS/USS/PSS (MiB) of every Serve replica process, by application."""
    import psutil

    rows = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(p.info["cmdline"] or [])
        if "ServeReplica:" not in title:
            continue
        app = title.split("ServeReplica:", 1)[1].split(":", 1)[0]
        try:
            m = p.memory_full_info()
        except psutil.Error:
            continue
        rows.append(
            {
                "app": app,
                "pid": p.info["pid"],
                "rss_mib": round(m.rss / 2**20, 1),
                "uss_mib": round(m.uss / 2**20, 1),
                "pss_mib": round(m.pss / 2**20, 1),
            }
        )
    return sorted(rows, key=lambda r: (r["app"], r["pid"]))


def run(a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Everything above on one local Ray; returns the results."""
    from serve_app.config import AppConfig
    from serve_app.deploy.serve_config import render_serve_config
    from serve_app.local import cluster as local
    from serve_app.local.demo_tenants import publish_tenants

    t0 = time.monotonic()
    published = publish_tenants(root, a.tenants, PREFIX)
    publish_s = time.monotonic() - t0
    port, metrics_port = free_port(), free_port()
    app = AppConfig.model_validate(app_dict(root, port, (free_port(), free_port()), a))
    config = render_serve_config(app)
    local.start_ray(num_cpus=2, http=app.http, metrics_port=metrics_port)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {
        "published_tenants": len(published),
        "publish_s": round(publish_s, 1),
    }
    try:
        local.deploy_config(config)
        local.wait_running([x["name"] for x in config["applications"]], stall_s=300)
        results["memory_idle"] = replica_memory()
        rng = np.random.default_rng(a.seed)

        # 1. cold loads: tenants no one asked for yet
        cold_tenants = [f"{PREFIX}{i:04d}" for i in range(a.tenants - a.cold, a.tenants)]
        before = scrape(metrics_port)
        cold, warm = [], []
        for t in cold_tenants:
            cold.append(sequential(base, f"/v2/models/{t}/infer", {}, 1)[0])
            warm.append(sequential(base, f"/v2/models/{t}/infer", {}, 1)[0])
        time.sleep(3)  # metrics are reported every 0.5 s
        after = scrape(metrics_port)
        lat = "ray_serve_multiplexed_model_load_latency_ms"
        n_loads = after.get(f"{lat}_count", 0) - before.get(f"{lat}_count", 0)
        results["cold_load"] = {
            "tenants": len(cold_tenants),
            "cold_request": summary_ms(np.array(cold)),
            "warm_request": summary_ms(np.array(warm)),
            "ray_load_latency_mean_ms": round(
                (after.get(f"{lat}_sum", 0) - before.get(f"{lat}_sum", 0)) / max(n_loads, 1), 2
            ),
            "ray_loads": n_loads,
            "counters": counters_delta(before, after),
        }
        print("cold load:", results["cold_load"], flush=True)

        # 2. the hop the OIP-name address adds
        hot = f"{PREFIX}0000"
        sequential(base, f"/v2/models/{hot}/infer", {}, 20)  # warm every path
        hop: dict[str, Any] = {}
        for name, path, headers in (
            ("single_direct", f"/v2/models/{SINGLE}/infer", {}),
            ("family_by_header", f"/v2/models/{FAMILY}/infer", {"serve_multiplexed_model_id": hot}),
            ("family_by_name", f"/v2/models/{hot}/infer", {}),
        ):
            sequential(base, path, headers, 20)
            hop[name] = summary_ms(sequential(base, path, headers, a.hop_requests))
        hop["server_hop_p50_ms"] = round(
            hop["family_by_name"]["p50_ms"] - hop["family_by_header"]["p50_ms"], 2
        )
        results["hop"] = hop
        print("hop:", hop, flush=True)

        # 3. Zipf mixes
        mixes = {}
        for mode in ("by_name", "by_header"):
            n_warm, n = int(a.rate * a.warmup_s), int(a.rate * a.duration_s)
            seq = zipf_sequence(a.tenants, n_warm + n, a.zipf_s, rng)

            def target(t: str, mode: str = mode) -> tuple[str, dict[str, str]]:
                if mode == "by_name":
                    return f"/v2/models/{t}/infer", {}
                return f"/v2/models/{FAMILY}/infer", {"serve_multiplexed_model_id": t}

            asyncio.run(open_loop(base, [target(t) for t in seq[:n_warm]], a.rate, a.seed))
            time.sleep(2)
            before = scrape(metrics_port)
            t_start = time.monotonic()
            latency, status = asyncio.run(
                open_loop(base, [target(t) for t in seq[n_warm:]], a.rate, a.seed + 1)
            )
            elapsed = time.monotonic() - t_start
            time.sleep(3)
            after = scrape(metrics_port)
            measured = seq[n_warm:]
            mixes[mode] = {
                "requests": n,
                "offered_rps": a.rate,
                "elapsed_s": round(elapsed, 1),
                "ok": int((status == 200).sum()),
                "errors": {
                    str(s): int((status == s).sum()) for s in set(status.tolist()) if s != 200
                },
                "distinct_tenants": len(set(measured)),
                "latency": summary_ms(latency),
                "counters": counters_delta(before, after),
                "simulated_hit_rate_affinity": round(
                    lru_hit_rate(seq, a.replicas, a.max_models, None), 3
                ),
                "simulated_hit_rate_random_replica": round(
                    lru_hit_rate(seq, a.replicas, a.max_models, np.random.default_rng(0)), 3
                ),
            }
            print(mode, mixes[mode], flush=True)
        results["zipf"] = mixes

        # 4. memory
        memory = replica_memory()
        results["memory_after_mix"] = memory
        single = [m for m in memory if m["app"] == SINGLE]
        family = [m for m in memory if m["app"] == FAMILY]
        results["memory_comparison"] = {
            "family_replicas": len(family),
            "family_total_rss_mib": round(sum(m["rss_mib"] for m in family), 1),
            "family_total_pss_mib": round(sum(m["pss_mib"] for m in family), 1),
            "family_total_uss_mib": round(sum(m["uss_mib"] for m in family), 1),
            "single_replica_rss_mib": single[0]["rss_mib"],
            "single_replica_pss_mib": single[0]["pss_mib"],
            "single_replica_uss_mib": single[0]["uss_mib"],
            "extrapolated": (
                f"{a.tenants} single-tenant deployments x 1 replica, from the one measured"
            ),
            "extrapolated_rss_gib": round(a.tenants * single[0]["rss_mib"] / 1024, 1),
            "extrapolated_uss_gib": round(a.tenants * single[0]["uss_mib"] / 1024, 1),
            "extrapolated_pss_gib": round(a.tenants * single[0]["pss_mib"] / 1024, 1),
        }
        print("memory:", results["memory_comparison"], flush=True)
    finally:
        results["elapsed_s"] = round(time.monotonic() - t0, 1)
        write(a, results)
        local.stop_ray(timeout_s=60)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--max-models", type=int, default=32)
    p.add_argument("--cold", type=int, default=30, help="tenants whose cold load is timed")
    p.add_argument("--hop-requests", type=int, default=300)
    p.add_argument("--rate", type=float, default=40.0)
    p.add_argument("--duration-s", type=float, default=45.0)
    p.add_argument("--warmup-s", type=float, default=10.0)
    p.add_argument("--zipf-s", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument(
        "--haproxy-balance",
        choices=["leastconn", "tenant-header"],
        default="leastconn",
        help="http.haproxy_balance: tenant-header hashes the serve_multiplexed_model_id "
        "header, so each tenant's header requests reach one replica",
    )
    p.add_argument(
        "--root", help="repository folder to publish tenants into (default: a temporary one)"
    )
    p.add_argument("--out", default="loadtest/results/multiplex")
    p.add_argument("--quick", action="store_true", help="short phases (smoke check)")
    a = p.parse_args(argv)
    if a.quick:
        a.tenants, a.cold, a.hop_requests, a.duration_s, a.warmup_s = 40, 5, 50, 8.0, 2.0
    return a


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; results in ``--out``."""
    from serve_app.local import cluster as local

    local.prepare_environment({"SERVE_APP_LOG_TO_DRIVER": "0"})
    a = parse_args(argv)
    if a.root:
        run(a, Path(a.root))
        return
    with tempfile.TemporaryDirectory(prefix="multiplex-repo-") as tmp:
        run(a, Path(tmp))


if __name__ == "__main__":
    main()
