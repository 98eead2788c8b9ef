"""The profiler's attribution of py-spy samples to request-path stages (no Ray)."""

from __future__ import annotations

from loadtest.bench.profile_serving import OTHER, delta_by_group, parse_raw, stage_of


def test_a_stack_goes_to_its_innermost_known_stage_in_priority_order() -> None:
    loop = "run (asyncio/base_events.py:600)"
    forward = "forward (serve_app/models/onnx_embedding.py:80);run (onnxruntime/capi/x.py:200)"
    assert stage_of([loop, "_infer (model_deployment.py:270)", forward]).startswith("model forward")
    tokenize = "encode_batch (tokenizers/__init__.py:10)"
    assert stage_of([loop, "prepare_rows (model_deployment.py:55)", tokenize]) == "tokenize"
    assert stage_of([loop, "read_inference_request (serve_app/server/http.py:40)"]).startswith(
        "decode request"
    )
    assert stage_of([loop]) == "asyncio event loop"
    assert stage_of(["main (somewhere.py:1)"]) == OTHER


def test_raw_output_is_counted_per_stage() -> None:
    raw = (
        "MainThread;run (asyncio/base_events.py:1);encode_response (oip.py:300) 7\n"
        "forward_0;run (onnxruntime/capi/session.py:2) 30\n"
        "garbage line\n"
    )
    assert parse_raw(raw) == {"model forward (ONNX Runtime / torch)": 30, "encode response": 7}


def test_cpu_deltas_only_count_processes_alive_at_both_ends() -> None:
    before = {1: ("replica:minilm", 10.0), 2: ("haproxy", 1.0)}
    after = {1: ("replica:minilm", 12.5), 2: ("haproxy", 1.5), 3: ("replica:minilm", 9.0)}
    assert delta_by_group(before, after) == {"replica:minilm": 2.5, "haproxy": 0.5}


def test_haproxy_timers_come_from_the_backend_rows() -> None:
    from loadtest.bench.profile_serving import parse_haproxy_csv

    text = (
        "# pxname,svname,qtime,ctime,rtime,ttime,\n"
        "minilm_backend,replica-1,0,0,80,81,\n"
        "minilm_backend,BACKEND,2,0,95,97,\n"
        "oip_backend,BACKEND,0,0,1,1,\n"
    )
    assert parse_haproxy_csv(text, "minilm") == {
        "minilm_backend": {"queue": 2, "connect": 0, "response": 95, "total": 97}
    }


def test_thread_cpu_reads_every_thread_of_a_process() -> None:
    import os

    from loadtest.bench.profile_serving import thread_cpu

    threads = thread_cpu(os.getpid())
    assert os.getpid() in threads  # the main thread's id is the process id
    assert all(cpu_s >= 0 for cpu_s in threads.values())
