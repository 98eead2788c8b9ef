"""``serve-app loadtest run|sweep|report``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest.traffic import profiles

if TYPE_CHECKING:  # loadtest.run imports pyarrow: not at every serve-app start
    from loadtest.run import RunSettings


def profile_from_args(a: argparse.Namespace) -> profiles.Profile:
    """The profile the ``run`` flags describe."""
    if a.profile == "constant":
        return profiles.constant(a.rate, a.duration_s)
    if a.profile == "step":
        return profiles.step(a.low, a.high, a.at_s, a.duration_s, a.down_at_s)
    if a.profile == "ramp":
        return profiles.ramp(a.low, a.high, a.duration_s)
    if a.profile == "spike":
        return profiles.spike(a.low, a.high, a.at_s, a.width_s, a.duration_s)
    return profiles.diurnal(a.low, a.high, a.duration_s)


def _body(a: argparse.Namespace) -> bytes:
    from loadtest.traffic.payloads import body_from_file, generated_body, model_metadata

    if a.payload:
        return body_from_file(Path(a.payload))
    return generated_body(model_metadata(a.url, a.model), rows=a.rows)


def _settings(a: argparse.Namespace, **extra: object) -> RunSettings:
    from loadtest.run import RunSettings

    return RunSettings.model_validate(
        {
            "base_url": a.url,
            "model": a.model,
            "timeout_s": a.timeout_s,
            "serve_api_url": a.serve_api,
            "metrics_urls": a.metrics_url or [],
            "rows": a.rows,
            "note": a.note,
            **extra,
        }
    )


def _token(a: argparse.Namespace) -> str | None:
    from loadtest.observe.sampler import read_token

    return Path(a.token_file).read_text().strip() if a.token_file else read_token()


def _run(a: argparse.Namespace) -> int:
    from loadtest.run import run_open_loop

    profile = profile_from_args(a)
    settings = _settings(
        a, profile=profile, arrivals=a.arrivals, seed=a.seed, cooldown_s=a.cooldown_s
    )
    print(
        f"{profile.kind}: ~{profile.expected_requests():.0f} requests over "
        f"{profile.duration_s:g} s (peak {profile.peak_rate:g} req/s) to {a.model}",
        flush=True,
    )
    out = run_open_loop(settings, _body(a), Path(a.out), _token(a))
    return _report_and_print(out, a.slo_ms)


def _sweep(a: argparse.Namespace) -> int:
    from loadtest.run import run_sweep

    levels = [int(x) for x in a.concurrency.split(",")]
    settings = _settings(a, concurrency=levels, level_s=a.level_s)
    out = run_sweep(settings, _body(a), Path(a.out), _token(a))
    return _report_and_print(out, a.slo_ms)


def _report_and_print(folder: Path, slo_ms: float) -> int:
    from loadtest.reports.load import report

    report(folder, slo_ms)
    print((folder / "report.md").read_text())
    print(f"wrote {folder}/report.png")
    return 0


def _report(a: argparse.Namespace) -> int:
    return _report_and_print(Path(a.results), a.slo_ms)


def add_loadtest_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``loadtest`` and its subcommands on the CLI's subparsers."""
    lt = sub.add_parser("loadtest", help="load tests with replica timelines (see loadtest/)")
    lsub = lt.add_subparsers(dest="loadtest_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default="http://127.0.0.1:8000", help="ingress base URL")
    common.add_argument("--model", required=True, help="model or pipeline name")
    common.add_argument(
        "--payload", default=None, help="OIP JSON request file (default: generated)"
    )
    common.add_argument("--rows", type=int, default=1, help="rows per generated request")
    common.add_argument("--timeout-s", type=float, default=30.0)
    common.add_argument("--serve-api", default=None, help="dashboard URL for Serve's REST API")
    common.add_argument("--metrics-url", action="append", help="Prometheus page (repeatable)")
    common.add_argument("--token-file", default=None, help="Ray token (default ~/.ray/auth_token)")
    common.add_argument("--slo-ms", type=float, default=200.0, help="p99 latency objective")
    common.add_argument("--note", default="", help="what the run is for (kept in run.json)")
    common.add_argument("--out", required=True, help="results folder")

    run = lsub.add_parser("run", parents=[common], help="open-loop profile")
    run.add_argument(
        "--profile", choices=["constant", "step", "ramp", "spike", "diurnal"], default="step"
    )
    run.add_argument("--rate", type=float, default=10.0, help="constant: req/s")
    run.add_argument("--low", type=float, default=5.0, help="base/start/night req/s")
    run.add_argument("--high", type=float, default=50.0, help="step/end/peak req/s")
    run.add_argument("--at-s", type=float, default=10.0, help="step/spike start")
    run.add_argument("--down-at-s", type=float, default=None, help="step: back to --low")
    run.add_argument("--width-s", type=float, default=5.0, help="spike length")
    run.add_argument(
        "--duration-s", type=float, default=60.0, help="profile length (diurnal: the day)"
    )
    run.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--cooldown-s", type=float, default=0.0, help="keep sampling after the load")
    run.set_defaults(func=_run)

    sweep = lsub.add_parser("sweep", parents=[common], help="closed-loop concurrency sweep")
    sweep.add_argument("--concurrency", default="1,2,4,8,16,32")
    sweep.add_argument("--level-s", type=float, default=10.0)
    sweep.set_defaults(func=_sweep)

    rep = lsub.add_parser("report", help="summarize a results folder (+ report.png)")
    rep.add_argument("results")
    rep.add_argument("--slo-ms", type=float, default=200.0)
    rep.set_defaults(func=_report)
