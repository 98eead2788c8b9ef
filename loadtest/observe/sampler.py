"""What the cluster does while load runs, sampled every ~0.5 s in a thread.

Two sources, both over HTTP so the same sampler watches a local run or a port-forwarded
cluster:

- Serve's REST API (``GET /api/serve/applications/`` on the dashboard, with the Ray
  token): per deployment, replicas RUNNING / STARTING and the autoscaler's target;
- the Prometheus metrics Ray exports (parsed with prometheus-client): requests being
  processed at the replicas, requests queued at handles/proxies, and the target replicas.

One row per deployment per sample; a failed read is a row with an ``error``, not a crash.
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from loadtest.harness.machine import Periodic

METRICS = {
    "ray_serve_replica_processing_queries": "processing",
    "ray_serve_deployment_queued_queries": "queued",
    "ray_serve_autoscaling_target_replicas": "target_metric",
}
"""Exported metric -> column: summed per (application, deployment)."""

COLUMNS = [
    "t_s",
    "app",
    "deployment",
    "running",
    "starting",
    "target_replicas",
    "processing",
    "queued",
    "target_metric",
    "metrics_t_s",
    "error",
]


def read_token(path: Path | None = None) -> str | None:
    """The Ray auth token a local cluster wrote (``~/.ray/auth_token``), if any."""
    path = path or Path.home() / ".ray" / "auth_token"
    return path.read_text().strip() if path.is_file() else None


def http_get(url: str, token: str | None, timeout_s: float) -> bytes:
    """GET ``url`` with the Ray token as a bearer token when given."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as r:  # noqa: S310 - our URLs
        return bytes(r.read())


def replica_counts(applications: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(app, deployment) -> running/starting/target from the REST API's details."""
    out = {}
    for app_name, app in (applications.get("applications") or {}).items():
        for dep_name, dep in (app.get("deployments") or {}).items():
            states = [r.get("state") for r in dep.get("replicas") or []]
            out[(app_name, dep_name)] = {
                "running": states.count("RUNNING"),
                "starting": states.count("STARTING") + states.count("PENDING_MIGRATION"),
                "target_replicas": dep.get("target_num_replicas"),
            }
    return out


def metric_sums(text: str) -> dict[tuple[str, str], dict[str, float]]:
    """(app, deployment) -> summed value of each of ``METRICS`` in a Prometheus text page.

    Ray's page is ~700 KB of mostly histograms (135 ms to parse whole, on the generator's
    GIL); only the lines of ``METRICS`` are parsed."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = tuple(METRICS)
    kept = "\n".join(
        line
        for line in text.splitlines()
        if line.startswith(wanted) or (line.startswith("#") and any(m in line for m in wanted))
    )
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(kept + "\n"):
        for sample in family.samples:
            column = METRICS.get(sample.name)
            if column is None:
                continue
            key = (sample.labels.get("application", ""), sample.labels.get("deployment", ""))
            out[key][column] = out[key].get(column, 0.0) + float(sample.value)
    return out


@dataclass
class Sampler:
    """Samples every ``period_s`` from ``start()`` to ``stop()``; times are seconds from
    ``t0`` (``time.monotonic()``), the load generator's clock."""

    serve_api_url: str | None
    metrics_urls: list[str] = field(default_factory=list)
    token: str | None = None
    period_s: float = 0.5
    metrics_period_s: float = 2.0
    """Ray's metrics page is ~700 KB: scraping it every 0.5 s cost 26% of a 2-core
    machine's served requests (measured); rows in between repeat the last values."""
    t0: float = field(default_factory=time.monotonic)
    timeout_s: float = 2.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._metrics: dict[tuple[str, str], dict[str, float]] = {}
        self._metrics_t: float | None = None
        self._loop = Periodic("sampler", self.period_s, lambda: self.rows.extend(self.sample()))

    def start(self) -> None:
        """Start sampling in a thread."""
        self._loop.start()

    def stop(self) -> None:
        """Stop and wait for the thread (bounded)."""
        self._loop.stop()

    def sample(self) -> list[dict[str, Any]]:
        """One sample: a row per deployment seen by either source."""
        t = time.monotonic() - self.t0
        counts: dict[tuple[str, str], dict[str, Any]] = {}
        metrics: dict[tuple[str, str], dict[str, float]] = {}
        errors = []
        if self.serve_api_url:
            try:
                url = self.serve_api_url.rstrip("/") + "/api/serve/applications/"
                counts = replica_counts(orjson.loads(http_get(url, self.token, self.timeout_s)))
            except Exception as e:  # noqa: BLE001 - recorded as data
                errors.append(f"serve api: {e!r}")
        due = self._metrics_t is None or t - self._metrics_t >= self.metrics_period_s
        for url in self.metrics_urls if due else []:
            try:
                page = http_get(url, None, self.timeout_s).decode()
                for key, values in metric_sums(page).items():
                    merged = metrics.setdefault(key, {})
                    for k, v in values.items():
                        merged[k] = merged.get(k, 0.0) + v
            except Exception as e:  # noqa: BLE001 - recorded as data
                errors.append(f"metrics {url}: {e!r}")
        if due and self.metrics_urls:
            self._metrics, self._metrics_t = metrics, t
        metrics = self._metrics
        keys = sorted(set(counts) | {k for k in metrics if k[0] and k[1]})
        if not keys:
            return [{"t_s": t, "app": "", "deployment": "", "error": "; ".join(errors)}]
        return [
            {
                "t_s": t,
                "app": app,
                "deployment": dep,
                **counts.get((app, dep), {}),
                **metrics.get((app, dep), {}),
                "metrics_t_s": self._metrics_t,
                "error": "; ".join(errors),
            }
            for app, dep in keys
        ]

    def table(self) -> pa.Table:
        """The samples as a table with ``COLUMNS`` (missing values are null)."""
        return pa.table({c: [row.get(c) for row in self.rows] for c in COLUMNS})
