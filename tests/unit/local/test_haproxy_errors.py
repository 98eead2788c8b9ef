"""Errors through HAProxy keep serve_app's JSON shape: the wrapper's sed program applied
to a config Ray 2.60 generated (captured from a demo, paths and ports made variables),
then the real HAProxy binary in front of a stub replica (no Ray)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from serve_app.local.haproxy_errors import write_sed_program
from serve_app.local.ingress import real_haproxy_binary

RAY_CONFIG = Path(__file__).parent / "data" / "ray-2.60-haproxy.cfg"
RETRY_AFTER_S = 2
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica(BaseHTTPRequestHandler):
    """A replica's direct-ingress port: ``/v2/models/minilm/<status>[-json|-noretry]``
    answers like Serve's own error paths (text bodies) or ours (JSON)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        last = self.path.rsplit("/", 1)[-1]
        status = 200 if self.path == "/-/healthz" else int(last.split("-")[0])
        if last.endswith("-json"):
            body, ctype = b'{"error": "ours", "request_id": "r"}', "application/json"
        else:
            body, ctype = (
                b"Request dropped due to backpressure (num_queued_requests=2).",
                "text/plain",
            )
        self.send_response(status)
        self.send_header("content-type", ctype)
        if status == 503 and not last.endswith("-noretry"):
            self.send_header("retry-after", "7")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ingress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """HAProxy on Ray's config with the errors program applied; minilm's replicas point
    at the stub, triage's at a closed port; yields the frontend's URL."""
    folder = tmp_path_factory.mktemp("haproxy")
    replica = ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    dead = free_port()
    frontend = free_port()
    text = RAY_CONFIG.read_text().replace("@NODE_DIR@", str(folder))
    text = text.replace("127.0.0.1:8000", f"127.0.0.1:{frontend}")
    text = text.replace("127.0.0.1:9101", f"127.0.0.1:{free_port()}")
    text = text.replace("127.0.0.1:8404", f"127.0.0.1:{free_port()}")
    text = re.sub(r"127\.0\.0\.1:3000[34]", f"127.0.0.1:{replica.server_address[1]}", text)
    text = re.sub(r"127\.0\.0\.1:(30002|8500)", f"127.0.0.1:{dead}", text)
    config = folder / "haproxy.cfg"
    config.write_text(text)
    program = write_sed_program(folder, RETRY_AFTER_S)
    subprocess.run(["sed", "-E", "-i", "-f", str(program), str(config)], check=True)
    check = subprocess.run(
        [real_haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([real_haproxy_binary(), "-f", str(config)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{frontend}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"{url}/v2/models/minilm/200", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, "HAProxy did not start"
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    replica.shutdown()


def test_program_replaces_rays_errorfiles_once(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG.read_text())
    program = write_sed_program(tmp_path, RETRY_AFTER_S)
    for _ in range(2):  # every reload rewrites a fresh file; applying twice must not add twice
        subprocess.run(["sed", "-E", "-i", "-f", str(program), str(config)], check=True)
    text = config.read_text()
    assert "errorfile 50" not in text
    assert text.count("http-error status 503") == 1
    assert text.count("http-request set-var(txn.serve_app_rid)") == 1
    frontend = text.split("frontend http_frontend\n", 1)[1]
    assert frontend.splitlines()[1].lstrip().startswith("http-request set-header x-request-id")


def test_replica_text_503_becomes_json_keeping_retry_after(ingress: str) -> None:
    r = httpx.get(f"{ingress}/v2/models/minilm/503", headers={"x-request-id": "req-1"})
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"] == "7"
    assert r.json() == {
        "error": "overloaded: the model is at max_ongoing_requests + max_queued_requests; "
        "retry later",
        "request_id": "req-1",
    }


def test_replica_503_without_retry_after_gets_ours(ingress: str) -> None:
    r = httpx.get(f"{ingress}/v2/models/minilm/503-noretry")
    assert r.status_code == 503
    assert r.headers["retry-after"] == str(RETRY_AFTER_S)
    assert r.json()["error"] == (
        "unavailable: the model has no replica that can take the request now; retry later"
    )
    assert UUID.match(r.json()["request_id"]), r.text


def test_replica_text_500_becomes_json_naming_the_request(ingress: str) -> None:
    r = httpx.get(f"{ingress}/v2/models/minilm/500", headers={"x-request-id": 'a"b'})
    assert r.status_code == 500
    assert r.json() == {
        "error": 'internal error in the serving runtime, request id a"b',
        "request_id": 'a"b',
    }


def test_json_errors_and_answers_pass_unchanged(ingress: str) -> None:
    r = httpx.get(f"{ingress}/v2/models/minilm/503-json")
    assert (r.status_code, r.content) == (503, b'{"error": "ours", "request_id": "r"}')
    assert r.headers["retry-after"] == "7"
    r = httpx.get(f"{ingress}/v2/models/minilm/200")
    assert (r.status_code, r.headers["content-type"]) == (200, "text/plain")


def test_no_replica_is_json_503_with_retry_after(ingress: str) -> None:
    r = httpx.get(
        f"{ingress}/v2/models/triage/infer", headers={"x-request-id": "req-2"}, timeout=30
    )
    assert r.status_code == 503
    assert r.headers["retry-after"] == str(RETRY_AFTER_S)
    assert json.loads(r.content) == {
        "error": "unavailable: no replica of this application can take the request now; "
        "retry later",
        "request_id": "req-2",
    }


def test_the_wrapper_applies_the_program_on_every_start(tmp_path: Path) -> None:
    from serve_app.local.ingress import write_wrapper

    fake = tmp_path / "fake-haproxy"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG.read_text())
    wrapper = write_wrapper("127.0.0.1", str(fake), str(tmp_path), retry_after_s=4)
    subprocess.run([str(wrapper), "-f", str(config)], check=True)
    text = config.read_text()
    assert "errorfile 503" not in text
    assert "http-error status 503 content-type application/json hdr Retry-After 4 " in text


def pod_start(tmp_path: Path, retry_after: str) -> tuple[str, str]:
    """Run the pod wrapper (as the image has it) on a copy of Ray's config; return the
    config after it and what the stand-in HAProxy printed."""
    from serve_app.local.ingress import write_pod_wrapper

    fake = tmp_path / "fake-haproxy"
    fake.write_text('#!/bin/sh\necho "ran with: $*"\n')
    fake.chmod(0o755)
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG.read_text())
    wrapper = write_pod_wrapper(str(tmp_path / "home" / "haproxy.sh"), str(fake))
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "SERVE_APP_RETRY_AFTER_S": retry_after}
    ran = subprocess.run(
        [str(wrapper), "-f", str(config)], env=env, capture_output=True, text=True, check=True
    )
    return config.read_text(), ran.stdout


def test_the_pod_wrapper_applies_the_program_with_the_rendered_retry_after(
    tmp_path: Path,
) -> None:
    text, out = pod_start(tmp_path, "3")
    assert "errorfile 503" not in text
    assert "http-error status 503 content-type application/json hdr Retry-After 3 " in text
    assert "bind 127.0.0.1:9101" in text  # a pod's listeners stay where Ray put them
    assert out == f"ran with: -f {tmp_path / 'haproxy.cfg'}\n"


def test_the_pod_wrapper_fails_open(tmp_path: Path) -> None:
    text, out = pod_start(tmp_path, "not-a-number")
    assert text == RAY_CONFIG.read_text()  # Ray's config as is: HAProxy still starts
    assert out.startswith("ran with: -f ")
