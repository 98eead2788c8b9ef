"""The peer benchmark's configs, arithmetic and report (no servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest.bench.peers import (
    APP_CONFIG,
    apply_variant,
    markdown,
    one_model_config,
    parse_variant,
    ratios,
    raw_mean,
)
from serve_app.config.app import AppConfig


def _server(rps: tuple[float, float, float], p99_ms: float = 20.0) -> dict[str, Any]:
    loads = {
        f"c{c}": {"rps": r, "p50_ms": 10.0, "p99_ms": p99_ms, "errors": 0,
                  "server_cpu_ms_per_request": 5.0}
        for c, r in zip((1, 16, 64), rps, strict=True)
    }  # fmt: skip
    idle = {"window_s": 20.0, "processes": 2, "cores": 0.1, "pss_gib": 0.5,
            "by_group": {"raylet": {"processes": 1, "cores": 0.05, "pss_mib": 100.0}}}  # fmt: skip
    return {"loads": loads, "settings": "s", "cold_start_s": 3.0, "idle_pss_gib": 0.5,
            "idle_cores": 0.1, "idle": idle}  # fmt: skip


def test_the_raw_baseline_is_the_mean_of_before_and_after() -> None:
    before = {"version": 2, "sentences_per_s": {"1": 200.0, "8": 400.0, "32": 500.0}}
    after = {"version": 2, "sentences_per_s": {"1": 220.0, "8": 420.0, "32": 540.0}}
    raw = raw_mean(before, after)
    assert raw["sentences_per_s"] == {"1": 210.0, "8": 410.0, "32": 520.0}
    assert raw["runs"] == [before, after]


def test_ratios_and_report() -> None:
    result: dict[str, Any] = {
        "machine": {"date": "d", "cpus": 2, "memory_gib": 24, "ray": "2.60.0",
                    "onnxruntime": "1.32.0"},
        "duration_s": 15.0,
        "raw_onnxruntime": raw_mean(
            {"sentences_per_s": {"1": 1.0, "8": 1.0, "32": 400.0}},
            {"sentences_per_s": {"1": 1.0, "8": 1.0, "32": 400.0}},
        ),
        "pytriton": _server((50.0, 200.0, 300.0), p99_ms=40.0),
        "serve_app": _server((100.0, 250.0, 330.0)),
        "demo": _server((90.0, 240.0, 320.0)),
    }  # fmt: skip
    result["ratios"] = {"serve_app": ratios(result["serve_app"], result["pytriton"], 400.0)}
    assert result["ratios"]["serve_app"] == {
        "vs_pytriton_c1": 2.0,
        "vs_pytriton_c16": 1.25,
        "vs_pytriton_c64": 1.1,
        "p99_vs_pytriton_c16": 0.5,
        "p99_vs_pytriton_c64": 0.5,
        "c64_vs_raw_b32": 0.82,
        "cold_start_vs_pytriton": 1.0,
        "idle_pss_vs_pytriton": 1.0,
    }
    text = markdown(result)
    assert "c=16 1.25x (p99 0.5x), c=64 1.1x (p99 0.5x)" in text
    row = "| serve_app (s) | 100.0 (10) | 250.0 (20) | 330.0 (20) | 5.0 | 3.0 | 0.5 | 0.1 |"
    assert row in text
    assert "| demo (s) | 90.0 (10)" in text  # reported, not in the ratios
    assert "demo /" not in text
    assert "| raylet | 1 | 0.05 | 100.0 |" in text


def test_the_one_model_config_is_minilm_as_committed(tmp_path: Path) -> None:
    app = yaml.safe_load(APP_CONFIG.read_text())
    one = one_model_config(app)
    assert [m["name"] for m in one["models"]] == ["minilm"]
    assert one["models"][0] == next(m for m in app["models"] if m["name"] == "minilm")
    assert "pipelines" not in one and "jobs" not in one
    AppConfig.model_validate(one)  # a config the demo accepts
    changed = apply_variant(
        one, {"replicas": 1, "threads": 2, "batch_wait_timeout_s": 0.0, "split_min_rows": 0}
    )
    model = changed["models"][0]
    assert (model["num_replicas"], model["resources"]["torch_threads"]) == (1, 2)
    assert model["batching"]["batch_wait_timeout_s"] == 0.0
    assert model["batching"]["split_min_rows"] is None
    AppConfig.model_validate(changed)
    assert one["models"][0]["num_replicas"] == app["models"][0]["num_replicas"]  # a copy


def test_a_variant_names_known_knobs() -> None:
    assert parse_variant("one:replicas=1,threads=2") == ("one", {"replicas": 1, "threads": 2})
    assert parse_variant("w0:batch_wait_timeout_s=0") == ("w0", {"batch_wait_timeout_s": 0.0})
    with pytest.raises(SystemExit, match="expected NAME:key=value"):
        parse_variant("one:workers=1")


def test_pytriton_layouts_parse_threads_by_instances() -> None:
    from loadtest.bench.peers import parse_layout

    assert parse_layout("2x1") == (2, 1)
    assert parse_layout("1x2") == (1, 2)
    assert parse_layout("3") == (3, 1)
    with pytest.raises(SystemExit, match="expected THREADSxINSTANCES"):
        parse_layout("two")


def test_idle_ab_means_per_variant_and_group() -> None:
    from loadtest.bench.idle_ab import markdown as idle_markdown
    from loadtest.bench.idle_ab import parse_variant as parse_env_variant
    from loadtest.bench.idle_ab import summarize

    assert parse_env_variant("base:") == ("base", {})
    assert parse_env_variant("slow:A=1,B=x=y") == ("slow", {"A": "1", "B": "x=y"})
    runs = [
        {"cold_start_s": 10.0, "idle_cores": 0.1, "idle_pss_gib": 1.0,
         "idle": {"by_group": {"gcs": {"cores": 0.02}, "controller": {"cores": 0.04}}}},
        {"cold_start_s": 12.0, "idle_cores": 0.2, "idle_pss_gib": 1.2,
         "idle": {"by_group": {"gcs": {"cores": 0.04}}}},
    ]  # fmt: skip
    s = summarize(runs)
    assert (s["mean_cold_start_s"], s["mean_idle_cores"], s["mean_idle_pss_gib"]) == (
        11.0,
        0.15,
        1.1,
    )
    # A group missing from a run counts as 0 there (it had no process in the window).
    assert s["mean_cores_by_group"] == {"controller": 0.02, "gcs": 0.03}
    page = idle_markdown({
        "machine": {"date": "d", "cpus": 2, "memory_gib": 1.0, "cpu_model": "x", "ray": "2.60.0"},
        "rounds": 2, "idle_s": 20.0, "environments": {"base": {}}, "variants": {"base": s},
    })  # fmt: skip
    assert "| base | - | 11.0 (10.0, 12.0) | 0.15 (0.1, 0.2) | 1.1 |" in page
    assert "| controller | 0.02 |" in page
