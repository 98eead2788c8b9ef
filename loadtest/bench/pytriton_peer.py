"""PyTriton (Triton's dynamic batcher) serving the same ``model.onnx`` as serve_app: the
benchmark peer of ``loadtest/bench/peers.py``.

Runs in its own virtual environment (PyTriton's numpy/protobuf pins clash with Ray's),
so it imports nothing from serve_app: it tokenizes with the folder's ``tokenizer.json``
exactly like ``serve_app.models.text.TextTokenizer`` (truncation at
``sentence_bert_config.json``'s ``max_seq_length``, pad to the longest row) and runs the
ONNX Runtime session with the same options as ``OnnxEmbeddingAdapter``.

    <venv>/bin/python loadtest/bench/pytriton_peer.py --folder model-repository/minilm/2 \\
        --http-port 8010 --threads 2 --max-batch 32 --delay-us 10000

Serves ``POST /v2/models/minilm/infer`` (KServe v2 JSON: a BYTES ``text`` input of shape
``[N, 1]``) until SIGINT/SIGTERM. Prints ``READY`` once Triton answers.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path, and its neighbour
# loadtest/bench/grpc.py would shadow the grpc package tritonclient imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402


def build_infer(folder: Path, threads: int) -> Any:
    """The batched infer function: BYTES ``text`` [N, 1] -> FP32 ``embedding`` [N, 384]."""
    import onnxruntime as ort
    from pytriton.decorators import batch
    from tokenizers import Tokenizer

    max_len = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.no_padding()
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )

    @batch
    def infer(text: np.ndarray) -> dict[str, np.ndarray]:
        sentences = [t.decode("utf-8") for t in text.reshape(-1)]
        rows = [e.ids for e in tokenizer.encode_batch(sentences)]
        longest = max(len(r) for r in rows)
        ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        (emb,) = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        return {"embedding": np.asarray(emb, dtype=np.float32)}

    return infer


def main() -> int:
    """Entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", required=True, help="model version folder with model.onnx")
    p.add_argument("--http-port", type=int, default=8010)
    p.add_argument("--grpc-port", type=int, default=8011)
    p.add_argument("--metrics-port", type=int, default=8012)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--instances", type=int, default=1, help="model instances (one session each)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--delay-us", type=int, default=10_000, help="max queue delay (µs)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=a.http_port,
        grpc_address="127.0.0.1",
        grpc_port=a.grpc_port,
        metrics_port=a.metrics_port,
        allow_metrics=False,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="minilm",
            infer_func=[build_infer(Path(a.folder), a.threads) for _ in range(a.instances)],
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="embedding", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=a.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=a.delay_us),
            ),
            strict=False,
        )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print("READY", flush=True)
        try:
            triton.serve()
        except (KeyboardInterrupt, SystemExit):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
