"""The peer benchmark's arithmetic and report (no servers)."""

from __future__ import annotations

import pytest

from loadtest.bench.peers import markdown, parse_variant, ratios, raw_mean


def _server(rps: tuple[float, float, float]) -> dict:
    loads = {
        f"c{c}": {"rps": r, "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0,
                  "server_cpu_ms_per_request": 5.0}
        for c, r in zip((1, 16, 64), rps, strict=True)
    }  # fmt: skip
    return {"loads": loads, "settings": "s", "cold_start_s": 3.0, "idle_pss_gib": 0.5}


def test_the_raw_baseline_is_the_mean_of_before_and_after() -> None:
    before = {"version": 2, "sentences_per_s": {"1": 200.0, "8": 400.0, "32": 500.0}}
    after = {"version": 2, "sentences_per_s": {"1": 220.0, "8": 420.0, "32": 540.0}}
    raw = raw_mean(before, after)
    assert raw["sentences_per_s"] == {"1": 210.0, "8": 410.0, "32": 520.0}
    assert raw["runs"] == [before, after]


def test_ratios_and_report() -> None:
    result = {
        "machine": {"date": "d", "cpus": 2, "memory_gib": 24, "ray": "2.60.0",
                    "onnxruntime": "1.32.0"},
        "duration_s": 15.0,
        "raw_onnxruntime": raw_mean(
            {"sentences_per_s": {"1": 1.0, "8": 1.0, "32": 400.0}},
            {"sentences_per_s": {"1": 1.0, "8": 1.0, "32": 400.0}},
        ),
        "pytriton": _server((50.0, 200.0, 300.0)),
        "serve_app": _server((100.0, 250.0, 330.0)),
    }  # fmt: skip
    result["ratios"] = ratios(result)
    assert result["ratios"] == {
        "vs_pytriton_c1": 2.0,
        "vs_pytriton_c16": 1.25,
        "vs_pytriton_c64": 1.1,
        "c64_vs_raw_b32": 0.82,
    }
    text = markdown(result)
    assert "c=16 1.25x, c=64 1.1x" in text
    assert "| serve_app (s) | 100.0 (10) | 250.0 (20) | 330.0 (20) | 5.0 | 3.0 | 0.5 |" in text


def test_a_variant_names_replicas_and_threads() -> None:
    assert parse_variant("one:replicas=1,threads=2") == ("one", {"replicas": 1, "threads": 2})
    with pytest.raises(SystemExit, match="expected NAME:replicas=R,threads=T"):
        parse_variant("one:replicas=1")
