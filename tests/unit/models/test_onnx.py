"""The ONNX runtime path gives the same embeddings as the eager model (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from serve_app.local.demo import minilm_source  # noqa: E402
from serve_app.models.hf_embedding import HFEmbeddingAdapter  # noqa: E402
from serve_app.models.onnx_embedding import OnnxEmbeddingAdapter  # noqa: E402
from serve_app.models.onnx_export import MIN_COSINE, export_onnx  # noqa: E402

SENTENCES = [
    "a",
    "Ray Serve batches requests for me",
    "Weights live on a read-only volume, versioned and checksummed. " * 8,
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich",
]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx")
    meta = export_onnx(minilm_source(), out)
    return out, meta


def test_export_records_its_check(onnx_dir: tuple[Path, dict]) -> None:
    out, meta = onnx_dir
    assert (out / "model.onnx").stat().st_size > 10_000_000
    assert (out / "tokenizer.json").is_file()
    assert meta["opset"] == 17
    assert meta["check_min_cosine"] >= MIN_COSINE


def test_onnx_matches_eager_within_tolerance(onnx_dir: tuple[Path, dict]) -> None:
    out, _ = onnx_dir
    eager = HFEmbeddingAdapter(minilm_source(), "cpu")
    fast = OnnxEmbeddingAdapter(out, "cpu", threads=1)
    text = np.array(SENTENCES, dtype=object)
    ref = eager.forward(eager.prepare({"text": text}))["embedding"]
    got = fast.forward(fast.prepare({"text": text}))["embedding"]
    cosine = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert got.shape == (4, 384)
    assert float(cosine.min()) >= 0.9999
    assert float(np.abs(ref - got).max()) < 1e-5
    assert fast.info.platform == "onnxruntime"


def test_eager_adapter_matches_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    eager = HFEmbeddingAdapter(minilm_source(), "cpu")
    got = eager.forward(eager.prepare({"text": np.array(SENTENCES, dtype=object)}))["embedding"]
    ref = SentenceTransformer(str(minilm_source()), device="cpu").encode(
        SENTENCES, convert_to_numpy=True, normalize_embeddings=True
    )
    assert float(np.abs(got - ref).max()) < 1e-5


def test_an_onnx_runtime_never_imports_torch(onnx_dir: tuple[Path, dict]) -> None:
    """A CPU replica of an ONNX model loads, warms up and answers without torch (about
    1 s and 200 MiB per process); the thread count reaches the session."""
    import subprocess
    import sys

    out, _ = onnx_dir
    code = f"""
import sys
from pathlib import Path
import numpy as np
from serve_app.models.onnx_embedding import OnnxEmbeddingAdapter
from serve_app.models.threads import set_intra_op_threads
from serve_app.server.runtime import pick_device
set_intra_op_threads(2)
adapter = OnnxEmbeddingAdapter(Path({str(out)!r}), pick_device("/nonexistent/nvidia[0-9]*"))
rows = adapter.prepare({{"text": np.array(["a sentence"], dtype=object)}})
print(adapter.forward(rows)["embedding"].shape, adapter.info.extra["threads"],
      adapter.info.device, "torch" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == "(1, 384) 2 cpu False"
