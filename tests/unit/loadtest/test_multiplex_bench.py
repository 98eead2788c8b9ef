"""The multiplexing benchmark's own arithmetic (no Ray): the Zipf draw, the LRU
simulation it compares Ray's hit rate with, and the counters' hit rate."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from loadtest.bench.multiplex_stats import counters_delta, lru_hit_rate, zipf_sequence

REQ = "ray_serve_multiplexed_get_model_requests_counter_total"
LOAD = "ray_serve_multiplexed_models_load_counter_total"
UNLOAD = "ray_serve_multiplexed_models_unload_counter_total"


def test_zipf_sequence_follows_the_law() -> None:
    seq = zipf_sequence(200, 200_000, 1.0, np.random.default_rng(0))
    counts = sorted(Counter(seq).values(), reverse=True)
    harmonic = sum(1 / k for k in range(1, 201))
    assert counts[0] / len(seq) == pytest.approx(1 / harmonic, rel=0.03)
    assert counts[9] / len(seq) == pytest.approx(1 / (10 * harmonic), rel=0.1)
    assert all(t.startswith("tenant-") and len(t) == 11 for t in set(seq))


def test_lru_simulation_counts_hits_and_evicts_least_recent() -> None:
    seq = ["tenant-0000", "tenant-0002", "tenant-0000", "tenant-0004", "tenant-0002"]
    # one replica of 2: miss, miss, hit, miss (evicts 0002), miss
    assert lru_hit_rate(seq, 1, 2, None) == pytest.approx(1 / 5)
    # affinity over 2 replicas by tenant number: all even tenants on replica 0 -> same
    assert lru_hit_rate(seq, 2, 2, None) == pytest.approx(1 / 5)
    assert lru_hit_rate(seq, 1, 3, None) == pytest.approx(2 / 5)


def test_hit_rate_from_counter_deltas() -> None:
    before = {REQ: 10.0, LOAD: 4.0, UNLOAD: 0.0}
    after = {REQ: 110.0, LOAD: 14.0, UNLOAD: 6.0}
    assert counters_delta(before, after) == {
        "requests": 100.0, "loads": 10.0, "evictions": 6.0, "hit_rate": 0.9,
    }  # fmt: skip


def test_the_report_renders_the_committed_results() -> None:
    import json
    from pathlib import Path

    from loadtest.reports.multiplex import render_md

    folder = Path(__file__).resolve().parents[3] / "loadtest" / "results" / "multiplex"
    doc = json.loads((folder / "multiplex.json").read_text())
    assert render_md(doc) == (folder / "multiplex.md").read_text()
