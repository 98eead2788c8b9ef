"""ModelRuntime with a stand-in adapter (no Ray): health fails when a forward hangs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from serve_app.errors import ServiceUnavailable
from serve_app.models.base import ModelAdapter, ModelInfo, TensorSpec
from serve_app.repository import ModelRepository, publish
from serve_app.repository.loader import VerifiedVersion
from serve_app.repository.manifest import Architecture
from serve_app.server.runtime import ModelRuntime


class BlockingAdapter(ModelAdapter):
    """Forwards block until released (a model stuck in a kernel or a deadlock)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.info = ModelInfo("test", [TensorSpec("x", "FP32", (-1,))], [], "cpu")

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        return list(inputs["x"])

    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        if items and items[0] == -1.0:
            self.started.set()
            self.release.wait(10)
        return {"y": np.asarray(items, dtype=np.float32)}

    def warmup_items(self, n: int) -> list[Any]:
        return [0.0] * n


@pytest.fixture
def runtime(tmp_path: Path) -> tuple[ModelRuntime, BlockingAdapter]:
    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, str(weights))
    publish(weights, tmp_path / "repo", "m", architecture=Architecture(name="mlp"))
    adapter = BlockingAdapter()

    def loader(_: VerifiedVersion, __: str) -> ModelAdapter:
        return adapter

    rt = ModelRuntime(ModelRepository(tmp_path / "repo"), "m", "latest", loader, device="cpu")
    rt.load(cap_to_memory=False)
    return rt, adapter


def test_health_fails_while_a_forward_hangs_and_recovers(
    runtime: tuple[ModelRuntime, BlockingAdapter],
) -> None:
    rt, adapter = runtime
    rt.hung_forward_s = 0.2
    rt.check_health()
    worker = threading.Thread(target=rt.forward_rows, args=([-1.0],))
    worker.start()
    assert adapter.started.wait(5)
    rt.check_health()  # running, not yet hung
    time.sleep(0.3)
    with pytest.raises(ServiceUnavailable, match=r"model 'm': a forward has been running for"):
        rt.check_health()
    adapter.release.set()
    worker.join(5)
    rt.check_health()
    assert rt.forward_rows([1.0, 2.0])["y"].tolist() == [1.0, 2.0]


class EndsWhenRead(dict[int, float]):
    """Forwards in flight where the one the check saw ends (on its thread) before the
    check reads when it started."""

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return 1


def test_a_forward_ending_during_the_health_check_is_no_failure(
    runtime: tuple[ModelRuntime, BlockingAdapter],
) -> None:
    rt, _ = runtime
    rt.hung_forward_s = 0.2
    rt._forwards_in_flight = EndsWhenRead()
    rt.check_health()  # before the fix: min() of an empty sequence, a false failure


def test_large_requests_are_prepared_off_the_event_loop() -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from serve_app.server.off_loop import PREPARE_OFF_LOOP_BYTES, prepare_rows

    threads: list[int] = []

    def prepare(inputs: dict[str, np.ndarray]) -> list[Any]:
        threads.append(threading.get_ident())
        return list(inputs["text"])

    small = {"text": np.array(["a" * 100], dtype=object)}
    large = {"text": np.array(["a" * (PREPARE_OFF_LOOP_BYTES + 1)], dtype=object)}

    async def scenario() -> int:
        with ThreadPoolExecutor(1) as pool:
            await prepare_rows(prepare, small, pool)
            await prepare_rows(prepare, large, pool)
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert threads[0] == loop_thread and threads[1] != loop_thread
