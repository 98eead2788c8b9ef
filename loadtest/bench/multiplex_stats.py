"""The multiplexing benchmark's numbers: Zipf tenant sequences and the LRU hit rate they
imply, the replicas' metrics scraped and differenced, latency summaries.
"""

from __future__ import annotations

import urllib.request
from collections import OrderedDict

import numpy as np

FAMILY = "tenants"
SINGLE = "single"
PREFIX = "tenant-"


def zipf_sequence(n_tenants: int, n: int, s: float, rng: np.random.Generator) -> list[str]:
    """``n`` tenant names, rank k drawn with probability proportional to 1 / k**s; which
    tenant has which rank is shuffled."""
    weights = 1.0 / np.arange(1, n_tenants + 1) ** s
    ranks = rng.choice(n_tenants, size=n, p=weights / weights.sum())
    order = rng.permutation(n_tenants)
    return [f"{PREFIX}{order[r]:04d}" for r in ranks]


def lru_hit_rate(
    sequence: list[str], replicas: int, size: int, rng: np.random.Generator | None
) -> float:
    """Hit rate of per-replica LRUs of ``size`` on ``sequence``: with ``rng`` None each
    tenant always goes to the same replica (perfect affinity), else to a random one."""
    caches: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(replicas)]
    hits = 0
    for tenant in sequence:
        i = int(tenant[len(PREFIX) :]) % replicas if rng is None else int(rng.integers(replicas))
        cache = caches[i]
        if tenant in cache:
            hits += 1
            cache.move_to_end(tenant)
        else:
            if len(cache) >= size:
                cache.popitem(last=False)
            cache[tenant] = None
    return hits / len(sequence)


def scrape(port: int) -> dict[str, float]:
    """Ray's multiplexing counters for the family, summed over its replicas."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "multiplex" not in sample.name or sample.labels.get("application") != FAMILY:
                continue
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def counters_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    req = "ray_serve_multiplexed_get_model_requests_counter_total"
    load = "ray_serve_multiplexed_models_load_counter_total"
    unload = "ray_serve_multiplexed_models_unload_counter_total"
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in (req, load, unload)}
    return {
        "requests": d[req],
        "loads": d[load],
        "evictions": d[unload],
        "hit_rate": 1 - d[load] / d[req] if d[req] else float("nan"),
    }


def summary_ms(latency_s: np.ndarray) -> dict[str, float]:
    ms = latency_s[~np.isnan(latency_s)] * 1000
    return {
        "n": int(len(ms)),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }
