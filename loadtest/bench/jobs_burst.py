"""A burst of jobs into an idle demo, then silence: consumers that scale on the queue
from zero against a fixed pool sized for the burst, in one run.

Each variant is ``serve-app demo`` on ``configs/app.yaml`` (repository in a temporary
folder) with a Redis of the benchmark's own (``EmbeddedRedis``, passed to the demo as
``SERVE_APP_BROKER_URL``):

- ``scale from zero``: the committed consumers (``min_replicas: 0``, ``max_replicas: 2``);
- ``fixed pool``: the same consumers pinned at ``max_replicas`` (min = max).

Once the demo is up and idle, ``--jobs`` one-sentence jobs for ``minilm`` are put on its
queue in ``--burst-s`` by ``--producers`` threads (``serve_app.jobs.client``'s path: a
record, then a message), then nothing. Sampled every 0.5 s: the queue's depth, messages
held by consumers, the consumers' and minilm's replica processes. Reported: time to
drain (burst start to every job answered), time back to zero consumers, consumer
replica-seconds from the burst's start to the end of the window (the autoscaled
variant's return to zero plus ``--tail-s``, the same length for both), lost jobs
(submitted - succeeded - failed), and the timeline as a PNG. Results:
``loadtest/results/jobs-burst.{json,md,png}``; 127.0.0.1 only.

    python -m loadtest.bench.jobs_burst                 # ~8 min on 2 cores
    python -m loadtest.bench.jobs_burst --jobs 20000    # the issue's burst (longer)
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import yaml

from loadtest.harness.demo_process import REPO_ROOT, descendants, start_demo, stop_demo
from loadtest.harness.machine import Periodic, machine_info, machine_line, wait_for
from loadtest.reports.files import write_results
from serve_app.jobs.broker import UNACKED_INDEX_KEY, JobPublisher, QueueNames, redis_client
from serve_app.jobs.message import make_message
from serve_app.jobs.store import FINAL_STATES, JobStore
from serve_app.local.broker import EmbeddedRedis

VARIANTS = ("scale from zero", "fixed pool")
TARGET = "minilm"
BODY = b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["%d: my parcel never arrived, where is it?"]}]}'  # noqa: E501
SAMPLE_S = 1.0


def variant_config(base: dict[str, Any], root: Path, variant: str) -> dict[str, Any]:
    """The demo's AppConfig on ``root``; the fixed pool pins the consumers at max."""
    config = copy.deepcopy(base)
    config["repository"]["root"] = str(root)
    consumers = config["jobs"].setdefault("consumers", {})
    if variant == "fixed pool":
        consumers["min_replicas"] = consumers.get("max_replicas", 4)
    return config


def replica_count(root_pid: int, title: str) -> int:
    """Live replica processes of the demo whose command line holds ``title``."""
    n = 0
    for p in descendants(root_pid):
        try:
            if title in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                n += 1
        except psutil.Error:
            continue
    return n


class Sampler:
    """Every ``SAMPLE_S``: queue depth, held messages, consumer and model replicas."""

    def __init__(self, url: str, root_pid: int, t0: float) -> None:
        self._redis = redis_client(url)
        self._pid = root_pid
        self._t0 = t0
        self.rows: list[dict[str, float]] = []
        self._queue = QueueNames.of("serve-app", TARGET).jobs
        self._periodic = Periodic("jobs-sampler", SAMPLE_S, self._sample)

    def _sample(self) -> None:
        try:
            depth = int(self._redis.llen(self._queue))
            held = int(self._redis.zcard(UNACKED_INDEX_KEY))
        except Exception:  # noqa: BLE001 - a missed sample is a gap in the picture
            return
        self.rows.append(
            {
                "t_s": round(time.monotonic() - self._t0, 2),
                "queued": depth,
                "held": held,
                "consumers": replica_count(self._pid, f"ServeReplica:jobs-{TARGET}:JobConsumer"),
                "models": replica_count(self._pid, f"ServeReplica:{TARGET}:ModelDeployment"),
            }
        )

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()


def burst(url: str, n_jobs: int, burst_s: float, producers: int) -> tuple[list[str], float]:
    """Put ``n_jobs`` on the queue, paced to take ``burst_s``; returns their ids and the
    seconds the producers actually took."""
    queue = QueueNames.of("serve-app", TARGET).jobs
    publishers = [
        JobPublisher(url, JobStore(redis_client(url), 3600), redelivery_after_s=300)
        for _ in range(producers)
    ]
    ids: list[list[str]] = [[] for _ in range(producers)]
    t0 = time.monotonic()

    def produce(k: int) -> None:
        for i in range(k, n_jobs, producers):
            due_s = t0 + burst_s * i / n_jobs
            if (wait_s := due_s - time.monotonic()) > 0:
                time.sleep(wait_s)
            message = make_message(TARGET, BODY % i)
            publishers[k].submit(message, queue)
            ids[k].append(message.job_id)

    with ThreadPoolExecutor(producers) as pool:
        list(pool.map(produce, range(producers)))
    took_s = time.monotonic() - t0
    for p in publishers:
        p.close()
    return [i for part in ids for i in part], took_s


def outcomes(url: str, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` are in each state (``missing``: no record)."""
    client = redis_client(url)
    store = JobStore(client, 3600)
    counts: dict[str, int] = {}
    for start in range(0, len(ids), 1000):
        pipe = client.pipeline()
        for job_id in ids[start : start + 1000]:
            pipe.hget(store.key(job_id), "state")
        for state in pipe.execute():
            key = state.decode() if state else "missing"
            counts[key] = counts.get(key, 0) + 1
    return counts


class Pending:
    """The jobs not answered yet; each check asks only about those (a check of 20,000
    records every poll would load Redis and this process more than the jobs do)."""

    def __init__(self, url: str, ids: list[str]) -> None:
        self._store = JobStore(redis_client(url), 3600)
        self.left = list(ids)

    def done(self) -> bool:
        pipe = self._store._redis.pipeline()  # noqa: SLF001 - a read-only pipeline
        for job_id in self.left:
            pipe.hget(self._store.key(job_id), "state")
        states = pipe.execute()
        self.left = [
            i
            for i, s in zip(self.left, states, strict=True)
            if (s or b"").decode() not in FINAL_STATES
        ]
        return not self.left


def run_variant(
    config: dict[str, Any], folder: Path, broker_url: str, a: argparse.Namespace
) -> dict[str, Any]:
    """One variant: start, wait idle, burst, drain, back to the floor, tail."""
    demo = start_demo(config, folder, extra_env={"SERVE_APP_BROKER_URL": broker_url})
    floor = config["jobs"]["consumers"]["min_replicas"]
    try:
        title = f"ServeReplica:jobs-{TARGET}:JobConsumer"
        wait_for(lambda: replica_count(demo.proc.pid, title) == floor, 120, "consumers idle")
        t0 = time.monotonic()
        sampler = Sampler(broker_url, demo.proc.pid, t0)
        sampler.start()
        ids, produced_s = burst(broker_url, a.jobs, a.burst_s, a.producers)
        pending = Pending(broker_url, ids)
        wait_for(pending.done, a.drain_timeout_s, "every job answered", period_s=1.0)
        drain_s = time.monotonic() - t0
        wait_for(
            lambda: replica_count(demo.proc.pid, title) == floor, 300, "consumers back at floor"
        )
        floor_s = time.monotonic() - t0
        window_s = a.window_s or floor_s + a.tail_s
        time.sleep(max(0.0, window_s - (time.monotonic() - t0)))
        sampler.stop()
        counts = outcomes(broker_url, ids)
        rows = [r for r in sampler.rows if r["t_s"] <= window_s]
        replica_s = sum(r["consumers"] for r in rows) * SAMPLE_S
        return {
            "submitted": len(ids),
            "produced_s": round(produced_s, 1),
            "drain_s": round(drain_s, 1),
            "back_to_floor_s": round(floor_s, 1),
            "window_s": round(window_s, 1),
            "consumer_replica_s": round(replica_s, 1),
            "max_consumers": max((r["consumers"] for r in rows), default=0),
            "max_queued": max((r["queued"] for r in rows), default=0),
            "outcomes": counts,
            "lost": len(ids) - counts.get("succeeded", 0) - counts.get("failed", 0),
            "timeline": rows,
        }
    finally:
        stop_demo(demo)


def draw(results: dict[str, Any], path: Path) -> None:
    """Queue depth (left axis) and replicas (right axis) over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results["variants"]), 1, figsize=(9, 7), sharex=True)
    for ax, (name, r) in zip(axes, results["variants"].items(), strict=True):
        t = [row["t_s"] for row in r["timeline"]]
        ax.plot(t, [row["queued"] for row in r["timeline"]], label="queued jobs", color="C0")
        ax.plot(t, [row["held"] for row in r["timeline"]], label="held by consumers", color="C2")
        ax.set_ylabel("messages")
        ax.set_title(f"{name}: drained in {r['drain_s']} s, lost {r['lost']}")
        right = ax.twinx()
        right.step(t, [row["consumers"] for row in r["timeline"]], color="C3", label="consumers")
        right.step(t, [row["models"] for row in r["timeline"]], color="C1", label="minilm replicas")
        right.set_ylabel("replicas")
        right.set_ylim(0, 1 + max(max(row["consumers"], row["models"]) for row in r["timeline"]))
        lines = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds from the burst's start")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def report(results: dict[str, Any]) -> str:
    """The Markdown report of a run."""
    m = results["machine"]
    a = results["args"]
    lines = [
        "# A burst of jobs into an idle demo: consumers from zero vs a fixed pool",
        "",
        f"`python -m loadtest.bench.jobs_burst --jobs {a['jobs']} --burst-s {a['burst_s']}`, "
        f"{m['date']}. {machine_line(m)}",
        f"configs/app.yaml (minilm: 2 replicas; consumers of jobs-minilm at most 2 x 16 "
        f"jobs); {a['jobs']} one-sentence jobs for minilm put on its Redis queue by "
        f"{a['producers']} producer threads, then silence. Picture: jobs-burst.png.",
        "",
        "| variant | jobs produced in | drained (all answered) | consumers back at floor "
        "| most consumers | most queued | consumer replica-s in the window | succeeded "
        "| failed | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["variants"].items():
        o = r["outcomes"]
        lines.append(
            f"| {name} | {r['produced_s']} s | {r['drain_s']} s | {r['back_to_floor_s']} s "
            f"| {r['max_consumers']} | {r['max_queued']} | {r['consumer_replica_s']} "
            f"(window {r['window_s']} s) | {o.get('succeeded', 0)} | {o.get('failed', 0)} "
            f"| {r['lost']} |"
        )
    z, f = results["variants"]["scale from zero"], results["variants"]["fixed pool"]
    if f["consumer_replica_s"]:
        lines += [
            "",
            f"Scale from zero used {z['consumer_replica_s'] / f['consumer_replica_s']:.2f}x "
            f"the fixed pool's consumer replica-seconds over the same window and drained "
            f"in {z['drain_s'] / f['drain_s']:.2f}x its time. Outside the window the fixed "
            "pool keeps its consumers; the autoscaled one has none.",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run both variants and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--burst-s", type=float, default=10.0)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--tail-s", type=float, default=10.0, help="window after back to zero")
    parser.add_argument("--drain-timeout-s", type=float, default=900.0)
    parser.add_argument("--window-s", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="a published demo repository to reuse (default: publish one in a temp folder)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "loadtest/results/jobs-burst")
    a = parser.parse_args(argv)
    from serve_app.local.demo import ensure_demo_models

    base = yaml.safe_load((REPO_ROOT / "configs" / "app.yaml").read_text())
    results: dict[str, Any] = {"args": {k: v for k, v in vars(a).items() if k != "out"}}
    results["variants"] = {}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        root = (a.repository or Path(tmp) / "repo").resolve()
        ensure_demo_models(root, progress=False)
        for name in VARIANTS:
            folder = Path(tmp) / name.replace(" ", "-")
            folder.mkdir()
            broker = EmbeddedRedis(folder / "redis")
            url = broker.start()
            try:
                r = run_variant(variant_config(base, root, name), folder, url, a)
            finally:
                broker.stop()
            results["variants"][name] = r
            if name == VARIANTS[0] and a.window_s is None:
                a.window_s = r["window_s"]  # the fixed pool is measured over the same window
            print(f"{name}: { {k: v for k, v in r.items() if k != 'timeline'} }", flush=True)
    results["machine"] = machine_info()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    draw(results, a.out.with_suffix(".png"))
    write_results(a.out, results, report(results))


if __name__ == "__main__":
    main()
