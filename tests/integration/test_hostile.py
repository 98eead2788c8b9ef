"""The attacks measured against the demo in issue 12, through the real ingress: each is
answered 4xx quickly, naming the limit, and the model keeps serving."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import OVERLOADED, error_of

pytestmark = pytest.mark.integration
SESSION_APPS = ["minilm", OVERLOADED]

INFER = "/v2/models/minilm/infer"


def binary_bytes_request(shape: list[int]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": shape,
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    return header, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("shape", "status", "message"),
    [
        ([100_000_000], 413, "100000000 rows, above the limit of 1024 (http.limits.max_rows)"),
        ([1, 1_000_000_000], 413, "holds more than 4194304 elements (http.limits.max_elements)"),
        ([0, 10**20], 413, "holds more than 4194304 elements"),
        ([1] * 15_000, 400, "shape has 15000 dimensions, above the limit of 8"),
    ],
)
def test_declared_sizes_are_refused_before_allocation(
    client: httpx.Client, shape: list[int], status: int, message: str
) -> None:
    body, headers = binary_bytes_request(shape)
    t0 = time.monotonic()
    r = client.post(INFER, content=body, headers=headers)
    assert time.monotonic() - t0 < 2.0
    assert r.status_code == status
    assert message in error_of(r)[1]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9" * 5000, "must be 1-10 ASCII digits"),
        ("\u00b9", "must be 1-10 ASCII digits"),
        ("-5", "must be a non-negative integer"),
    ],
)
def test_lying_header_length_is_a_400(client: httpx.Client, value: str, message: str) -> None:
    body, _ = binary_bytes_request([1])
    r = client.post(
        INFER, content=body, headers={"Inference-Header-Content-Length": value.encode("utf-8")}
    )
    assert r.status_code == 400
    assert message in error_of(r)[1]


def test_still_serving_and_405_says_allow(client: httpx.Client) -> None:
    r = client.post(
        INFER,
        json={
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["still here"]}]
        },
    )
    assert r.status_code == 200
    r = client.post("/v2/models/minilm/ready")
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")


def hard_texts(rows: int, text_bytes: int) -> list[str]:
    """``rows`` texts of ``text_bytes`` made of random 40-letter words: WordPiece tries
    every substring of an unknown word, so these cost ~5x more to tokenize per byte than
    prose, while truncation keeps the forward at 256 tokens a row."""
    import random
    import string

    rng = random.Random(27)
    word_count = text_bytes // 41 + 1
    return [
        " ".join("".join(rng.choices(string.ascii_lowercase, k=40)) for _ in range(word_count))[
            :text_bytes
        ]
        for _ in range(rows)
    ]


def tokenizing_s(model_root: Path, texts: list[str]) -> float:
    """Seconds the replica's own tokenizer (``TextTokenizer.prepare``, the served MiniLM
    version's files) takes for ``texts`` in this process: best of two."""
    import numpy as np

    from serve_app.models.text import TextTokenizer, read_max_seq_length

    folder = max((model_root / "minilm").glob("[0-9]*"), key=lambda p: int(p.name))
    tokenizer = TextTokenizer(folder, read_max_seq_length(folder))
    text = np.empty(len(texts), dtype=object)
    text[:] = texts
    best_s = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        tokenizer.prepare({"text": text})
        best_s = min(best_s, time.perf_counter() - t0)
    return best_s


def test_a_large_request_does_not_stall_the_replica(serve_app_url: str, model_root: Path) -> None:
    """A request above the off-loop thresholds (6 texts of 60 KB, slow to tokenize,
    cheap to forward) leaves the replica's event loop free while it is tokenized: a
    ``/ready`` polled meanwhile never waits half the tokenizing time measured here, in
    the same run. On the loop, a poll arriving during tokenizing waits for all of it.
    Measured 2026-12-03 on 2 cores: tokenizing 287 ms here, worst /ready 9 ms; with the
    thresholds raised above the request (tokenizing on the loop) 427 ms against 409 ms
    of tokenizing, and this test failed."""
    import threading

    texts = hard_texts(rows=6, text_bytes=60_000)
    work_s = tokenizing_s(model_root, texts)
    big = {"inputs": [{"name": "text", "shape": [6], "datatype": "BYTES", "data": texts}]}
    result: dict[str, int] = {}

    def send() -> None:
        with httpx.Client(base_url=serve_app_url, timeout=60) as c:
            result["status"] = c.post(INFER, json=big).status_code

    worst_s = 0.0
    with httpx.Client(base_url=serve_app_url, timeout=30) as c:
        idle_s = []
        for _ in range(10):
            t0 = time.perf_counter()
            assert c.get("/v2/models/minilm/ready").status_code == 200
            idle_s.append(time.perf_counter() - t0)
        sender = threading.Thread(target=send)
        sender.start()
        while sender.is_alive():
            t0 = time.perf_counter()
            assert c.get("/v2/models/minilm/ready").status_code == 200
            worst_s = max(worst_s, time.perf_counter() - t0)
            time.sleep(0.01)
        sender.join()
    print(
        f"tokenizing here {work_s * 1e3:.0f} ms; /ready idle worst {max(idle_s) * 1e3:.0f} ms, "
        f"during the large request worst {worst_s * 1e3:.0f} ms"
    )
    assert result["status"] == 200
    assert worst_s < work_s / 2, (
        f"/ready waited {worst_s:.2f} s while a request that takes {work_s:.2f} s to "
        "tokenize was prepared: tokenizing ran on the replica's event loop"
    )


def test_a_burst_beyond_the_queue_gets_503_with_retry_after(serve_app_url: str) -> None:
    """max_ongoing_requests 1 + max_queued_requests 1 on an eager MiniLM: a burst of 24
    long requests through the ingress is answered 200 or 503 with Retry-After (never a
    500 or a hang), and the model serves again right after."""
    from tests.integration.conftest import send_burst

    text = "a long ticket about a parcel that never arrived " * 20
    payload = {"inputs": [{"name": "text", "shape": [4], "datatype": "BYTES", "data": [text] * 4}]}
    path = f"/v2/models/{OVERLOADED}/infer"
    answers = send_burst(serve_app_url, path, payload, timeout_s=30)
    statuses = sorted({s for s, _ in answers})
    print(
        f"burst of 24: {[s for s, _ in answers].count(200)} x 200, "
        f"{[s for s, _ in answers].count(503)} x 503"
    )
    assert set(statuses) <= {200, 503}, answers
    assert 503 in statuses and 200 in statuses
    assert all(ra == "1" for s, ra in answers if s == 503)
    with httpx.Client(base_url=serve_app_url, timeout=30) as c:
        assert c.post(path, json=payload).status_code == 200
