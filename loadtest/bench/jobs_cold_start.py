"""Time from a job's submission to its answer when nothing is running: no consumer and
no model replica (``min_replicas: 0`` for both), the case the source designs worry about
(a model that takes 30-60 s to load).

``serve-app demo`` on ``configs/app.yaml`` with minilm's replicas autoscaled from zero
(``min_replicas: 0``, ``max_replicas: 2``) and its broker a Redis of the benchmark's own.
Once both are at zero, one job is put on minilm's queue; sampled every 0.1 s: when the
first consumer process appears, when minilm's replica appears, when the job is
``running``, when it is answered. Then it waits for both to go back to zero and
repeats (``--rounds``). The same job answered by the warm path (consumer and model up)
is the baseline. Results: ``loadtest/results/jobs-cold-start.{json,md}``.

    python -m loadtest.bench.jobs_cold_start      # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from loadtest.bench.jobs_burst import BODY, TARGET, replica_count
from loadtest.harness.demo_process import REPO_ROOT, start_demo, stop_demo
from loadtest.harness.machine import machine_info, machine_line, wait_for
from loadtest.reports.files import write_results
from serve_app.jobs.broker import JobPublisher, QueueNames, redis_client
from serve_app.jobs.message import make_message
from serve_app.jobs.store import FINAL_STATES, JobStore
from serve_app.local.broker import EmbeddedRedis

CONSUMER = f"ServeReplica:jobs-{TARGET}:JobConsumer"
MODEL = f"ServeReplica:{TARGET}:ModelDeployment"
SAMPLE_S = 0.1
WARM_SAMPLE_S = 0.005


def cold_config(base: dict[str, Any], root: Path) -> dict[str, Any]:
    """The demo's AppConfig on ``root`` with minilm autoscaled from zero."""
    config = copy.deepcopy(base)
    config["repository"]["root"] = str(root)
    for model in config["models"]:
        if model["name"] == TARGET:
            model.pop("num_replicas", None)
            model["autoscaling"] = {
                "min_replicas": 0,
                "max_replicas": 2,
                "target_ongoing_requests": 16,
                "upscale_delay_s": 0,
                "downscale_delay_s": 10,
            }
    config["jobs"]["consumers"]["downscale_delay_s"] = 10
    return config


def one_job(
    url: str,
    pid: int,
    store: JobStore,
    publisher: JobPublisher,
    n: int,
    *,
    warm: bool = False,
) -> dict[str, Any]:
    """Submit one job and time what happens until it is answered; ``warm``: only the
    record is watched (no process-tree walks), every ``WARM_SAMPLE_S``."""
    message = make_message(TARGET, BODY % n)
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    publisher.submit(message, QueueNames.of("serve-app", TARGET).jobs)
    while time.monotonic() - t0 < 600:
        # Each mark is timed right after its own check: walking the process tree takes
        # tens of ms, which would otherwise be charged to the record's marks (a warm job
        # answered meanwhile read as answered at 0 s).
        if not warm and "consumer_process_s" not in marks and replica_count(pid, CONSUMER):
            marks["consumer_process_s"] = round(time.monotonic() - t0, 3)
        if not warm and "model_process_s" not in marks and replica_count(pid, MODEL):
            marks["model_process_s"] = round(time.monotonic() - t0, 3)
        record = store.get(message.job_id)
        t = round(time.monotonic() - t0, 3)
        if record is not None and record.state != "queued" and "taken_s" not in marks:
            marks["taken_s"] = t
        if record is not None and record.state in FINAL_STATES:
            marks["answered_s"] = t
            marks["state"] = record.state  # type: ignore[assignment]
            return marks
        time.sleep(WARM_SAMPLE_S if warm else SAMPLE_S)
    raise TimeoutError(f"job {message.job_id} not answered in 600 s: {marks}")


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="a published demo repository to reuse (default: publish one in a temp folder)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "loadtest/results/jobs-cold-start")
    a = parser.parse_args(argv)
    from serve_app.local.demo import ensure_demo_models

    base = yaml.safe_load((REPO_ROOT / "configs" / "app.yaml").read_text())
    results: dict[str, Any] = {"rounds": [], "warm_s": []}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-cold-") as tmp:
        root = (a.repository or Path(tmp) / "repo").resolve()
        ensure_demo_models(root, progress=False)
        broker = EmbeddedRedis(Path(tmp) / "redis")
        url = broker.start()
        config = cold_config(base, root)
        demo = start_demo(config, Path(tmp), extra_env={"SERVE_APP_BROKER_URL": url})
        store = JobStore(redis_client(url), 3600)
        publisher = JobPublisher(url, store, redelivery_after_s=300)
        pid = demo.proc.pid
        try:
            for n in range(a.rounds):
                wait_for(
                    lambda: replica_count(pid, CONSUMER) == 0 and replica_count(pid, MODEL) == 0,
                    300,
                    "consumers and minilm at zero",
                )
                marks = one_job(url, pid, store, publisher, n)
                print(f"cold round {n}: {marks}", flush=True)
                results["rounds"].append(marks)
                for k in range(5):  # warm: both up now
                    warm = one_job(url, pid, store, publisher, 1000 * (n + 1) + k, warm=True)
                    results["warm_s"].append(warm["answered_s"])
        finally:
            publisher.close()
            stop_demo(demo)
            broker.stop()
    results["machine"] = machine_info()
    write_results(a.out, results, report(results))


def report(results: dict[str, Any]) -> str:
    """The Markdown report."""
    m = results["machine"]
    lines = [
        "# A job when nothing runs: consumers and the model from zero",
        "",
        f"`python -m loadtest.bench.jobs_cold_start`, {m['date']}. {machine_line(m)}",
        "configs/app.yaml with minilm (ONNX, version 2) autoscaled from zero and its "
        "consumers at zero; one job put on the queue; seconds from its submission:",
        "",
        "| round | first consumer process | minilm replica process | job taken (running) "
        "| answered |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(results["rounds"]):
        lines.append(
            f"| cold {i} | {r.get('consumer_process_s', '-')} | {r.get('model_process_s', '-')} "
            f"| {r.get('taken_s', '-')} | {r['answered_s']} ({r['state']}) |"
        )
    warm = results["warm_s"]
    lines += [
        "",
        f"Warm (consumer and model up), the same job: median {statistics.median(warm):.3f} s "
        f"over {len(warm)} jobs (polled every {WARM_SAMPLE_S} s; cold rounds every {SAMPLE_S} s).",
        "",
        "The job is taken only once the consumer's target answered (readiness gate), so "
        "the wait for the model's start is spent with the message on the queue, not held "
        "by a consumer that could die with it. A model that loads in L seconds adds about "
        "L to the cold answer.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
