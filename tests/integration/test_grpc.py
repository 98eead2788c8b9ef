"""KServe v2 gRPC (``inference.GRPCInferenceService``) on the session's Serve, called
with a stock ``tritonclient.grpc`` client: without metadata (through the server
application, HAProxy's default gRPC backend) and with ``application: <model>`` (straight
to the model's replicas)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import BROKEN, GRPC_PORT

pytestmark = pytest.mark.integration
SESSION_APPS = ["minilm", "triage", BROKEN]

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TICKET = "I was charged twice for my subscription this month, please refund ASAP"


@pytest.fixture(scope="module")
def grpc_client(serve_app_url: str) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{GRPC_PORT}") as c:
        yield c


def text_input(*texts: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return inp


def http_embedding(client: httpx.Client, text: str) -> np.ndarray:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    r = client.post("/v2/models/minilm/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def error_of(call: object) -> tuple[str, str]:
    assert callable(call)
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def test_server_live_and_ready(grpc_client: grpcclient.InferenceServerClient) -> None:
    assert grpc_client.is_server_live() is True
    assert grpc_client.is_model_ready("minilm") is True
    assert grpc_client.is_model_ready("triage") is True
    # The session serves models that never start (broken weights): not ready, as over HTTP.
    assert grpc_client.is_model_ready(BROKEN) is False
    assert grpc_client.is_server_ready() is False


def test_model_metadata(grpc_client: grpcclient.InferenceServerClient) -> None:
    meta = grpc_client.get_model_metadata("minilm", as_json=True)
    assert meta == {
        "name": "minilm",
        "versions": ["2"],
        "platform": "onnxruntime",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "384"]}],
    }


@pytest.mark.parametrize("headers", [None, {"application": "minilm"}], ids=["server", "direct"])
def test_infer_minilm_equals_http(
    grpc_client: grpcclient.InferenceServerClient,
    client: httpx.Client,
    headers: dict[str, str] | None,
) -> None:
    result = grpc_client.infer(
        "minilm",
        [text_input(SENTENCE)],
        outputs=[grpcclient.InferRequestedOutput("embedding")],
        request_id="grpc-1",
        headers=headers,
    )
    embedding = result.as_numpy("embedding")
    assert embedding.dtype == np.float32 and embedding.shape == (1, 384)
    np.testing.assert_allclose(embedding, http_embedding(client, SENTENCE), atol=1e-5)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("minilm", "2", "grpc-1")


def test_infer_triage_pipeline(grpc_client: grpcclient.InferenceServerClient) -> None:
    for headers in (None, {"application": "triage"}):
        result = grpc_client.infer("triage", [text_input(TICKET)], headers=headers)
        assert result.as_numpy("topic").tolist() == [b"billing"]
        assert result.as_numpy("urgency").tolist() == [b"high"]


def test_triage_reads_request_parameters_and_refuses_unproduced_outputs(
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    """The pipeline's gRPC path gets the request parameters (``timing``) like HTTP does,
    and an output asked for by name that this request did not produce is an error, not
    silently dropped."""
    result = grpc_client.infer("triage", [text_input(TICKET)], parameters={"timing": True})
    timing = result.get_response().parameters["timing_ms"].string_param
    assert {"embed", "topic"} <= set(json.loads(timing))
    assert result.as_numpy("route").tolist() == [b""]  # a sure ticket: no second opinion
    status, message = error_of(
        lambda: grpc_client.infer(
            "triage",
            [text_input(TICKET)],
            outputs=[grpcclient.InferRequestedOutput("second_opinion")],
        )
    )
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith(
        "requested output(s) not produced on this request: 'second_opinion' (node "
        "'second-opinion': not chosen by switch 'route' for any row)"
    ), message


def test_unknown_model_is_not_found(grpc_client: grpcclient.InferenceServerClient) -> None:
    status, message = error_of(lambda: grpc_client.infer("nope", [text_input("x")]))
    assert status == "StatusCode.NOT_FOUND"
    assert message.startswith("unknown model 'nope'; served models: ['minilm', ")
    status, message = error_of(lambda: grpc_client.get_model_metadata("nope"))
    assert status == "StatusCode.NOT_FOUND" and message.startswith("unknown model 'nope'")


@pytest.mark.parametrize("headers", [None, {"application": "minilm"}], ids=["server", "direct"])
def test_unserved_version_is_not_found(
    grpc_client: grpcclient.InferenceServerClient, headers: dict[str, str] | None
) -> None:
    status, message = error_of(
        lambda: grpc_client.infer("minilm", [text_input("x")], model_version="1", headers=headers)
    )
    assert (status, message) == (
        "StatusCode.NOT_FOUND",
        "model 'minilm' version 1 not found (serving version 2)",
    )


def test_wrong_application_header_is_not_found(
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    status, message = error_of(
        lambda: grpc_client.infer("triage", [text_input("x")], headers={"application": "minilm"})
    )
    assert (status, message) == (
        "StatusCode.NOT_FOUND",
        "model 'triage' is not served by application 'minilm' (send the metadata "
        "'application: triage', or none to go through the server application)",
    )


@pytest.mark.parametrize("headers", [None, {"application": "minilm"}], ids=["server", "direct"])
def test_malformed_input_is_invalid_argument(
    grpc_client: grpcclient.InferenceServerClient, headers: dict[str, str] | None
) -> None:
    wrong = grpcclient.InferInput("input", [1, 2], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 2), np.float32))
    status, message = error_of(lambda: grpc_client.infer("minilm", [wrong], headers=headers))
    assert status == "StatusCode.INVALID_ARGUMENT", message
    assert message == "missing input 'text'; got ['input']"


def test_shape_that_does_not_match_the_buffer(
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    inp = text_input("one")
    inp._get_tensor().shape[:] = [3]  # declares 3 texts, sends 1
    status, message = error_of(lambda: grpc_client.infer("minilm", [inp]))
    assert (status, message) == (
        "StatusCode.INVALID_ARGUMENT",
        "input 'text': 3 BYTES elements need at least 12 bytes, the buffer has 7",
    )
