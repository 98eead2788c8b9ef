"""Model lifecycle inside a replica, free of Ray and HTTP so it can be unit tested.

``ModelRuntime.load`` verifies the weights, loads the adapter onto the device, measures
what one batch row costs in memory, caps the batch size so a full batch fits, and runs
a warm-up batch. Only then is the replica ready.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serve_app.errors import ServiceUnavailable
from serve_app.models.base import ModelAdapter
from serve_app.repository.loader import ModelRepository, VerifiedVersion
from serve_app.server.batching import plan_forwards, run_planned
from serve_app.server.memory import free_memory_bytes, measure_peak_bytes

logger = logging.getLogger("ray.serve")

MEMORY_HEADROOM = 0.8
"""Fraction of the free memory a full batch may use; the rest is left for fragmentation."""


NVIDIA_DEVICE_GLOB = "/dev/nvidia[0-9]*"
"""Device nodes of NVIDIA GPUs: without one, CUDA cannot be available."""


def pick_device(device_glob: str = NVIDIA_DEVICE_GLOB) -> str:
    """The visible CUDA device when there is one (Ray sets CUDA_VISIBLE_DEVICES), else CPU.

    torch is asked only on a machine with an NVIDIA device node, so a CPU replica of an
    ONNX model never imports it (about 1 s and 200 MiB per process)."""
    if not glob.glob(device_glob):
        return "cpu"
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


@dataclass
class BatchStats:
    """Counts of what the batcher did, for tests and logs."""

    batches: int = 0
    rows: int = 0
    forwards: int = 0
    max_rows_seen: int = 0
    compute_s: float = 0.0
    """Total seconds spent in forwards (the model's own compute)."""
    recent_sizes: list[int] = field(default_factory=list)

    def record(self, rows: int, forwards: int, compute_s: float = 0.0) -> None:
        """Note one batch of ``rows`` rows run as ``forwards`` forwards in ``compute_s``."""
        self.batches += 1
        self.rows += rows
        self.forwards += forwards
        self.compute_s += compute_s
        self.max_rows_seen = max(self.max_rows_seen, rows)
        self.recent_sizes.append(rows)
        del self.recent_sizes[:-256]


AdapterLoader = Callable[[VerifiedVersion, str], ModelAdapter]


class ModelRuntime:
    """One loaded model version with its batching limits.

    Args:
        repository: Where to read the weights from.
        name: Model name.
        version_policy: ``latest`` or a pinned version.
        adapter_loader: Builds the adapter (injected so tests can stand in a model).
        device: Device string; ``None`` picks CUDA when visible, else CPU.
        gpu_share: This replica's ``num_gpus`` (a fraction shares the device).
    """

    def __init__(
        self,
        repository: ModelRepository,
        name: str,
        version_policy: Literal["latest"] | int,
        adapter_loader: AdapterLoader,
        device: str | None = None,
        gpu_share: float = 1.0,
    ) -> None:
        self.repository = repository
        self.name = name
        self.version_policy = version_policy
        self.adapter_loader = adapter_loader
        self.device = device or pick_device()
        self.gpu_share = gpu_share
        self.hung_forward_s: float | None = None
        """A forward running longer than this fails the health check (None: never)."""
        self._forwards_in_flight: dict[int, float] = {}
        self.adapter: ModelAdapter | None = None
        self.version: VerifiedVersion | None = None
        self.memory_cap_rows: int | None = None
        self.max_batch_tokens: int | None = None
        self.stats = BatchStats()
        self.load_s: dict[str, float] = {}

    def load(self, probe_rows: int = 4, cap_to_memory: bool = True) -> None:
        """Verify, load, probe memory and warm up; raises a ``RepositoryError`` naming
        the bad file when the weights are missing or corrupt."""
        t0 = time.perf_counter()
        self.version = self.repository.verify(self.name, self.version_policy)
        t1 = time.perf_counter()
        adapter = self.adapter_loader(self.version, self.device)
        t2 = time.perf_counter()
        items = adapter.warmup_items(probe_rows)
        per_row = measure_peak_bytes(lambda: adapter.forward(items), self.device) // probe_rows
        self.adapter = adapter
        t3 = time.perf_counter()
        if cap_to_memory and per_row > 0:
            free = free_memory_bytes(self.device, self.gpu_share)
            self.memory_cap_rows = max(1, int(free * MEMORY_HEADROOM // per_row))
            logger.info(
                "%s v%d on %s: one row of the longest input costs %.1f MiB, %.1f GiB free "
                "-> batch size capped at %d rows",
                self.name,
                self.version.version,
                self.device,
                per_row / 2**20,
                free / 2**30,
                self.memory_cap_rows,
            )
        self.load_s = {"verify_s": t1 - t0, "load_s": t2 - t1, "warmup_s": t3 - t2}
        logger.info("%s v%d ready: %s", self.name, self.version.version, self.load_s)

    def effective_batch_size(self, configured: int) -> int:
        """``configured`` capped by what fits in memory."""
        if self.memory_cap_rows is None:
            return configured
        return max(1, min(configured, self.memory_cap_rows))

    @property
    def ready(self) -> bool:
        """Whether a verified model is loaded."""
        return self.adapter is not None

    def require(self) -> ModelAdapter:
        """The adapter, or ``ServiceUnavailable`` while loading."""
        if self.adapter is None:
            raise ServiceUnavailable(f"model {self.name!r} is not loaded yet")
        return self.adapter

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        """Validate and split one request into rows (tokenization happens here)."""
        return self.require().prepare(inputs)

    def forward_rows(self, rows: list[Any]) -> dict[str, np.ndarray]:
        """Run rows as one batch (grouped by length when ``max_batch_tokens`` is set) and
        count it in ``stats``."""
        t0 = time.perf_counter()
        out, forwards = self.forward_chunk(rows)
        self.stats.record(len(rows), forwards, time.perf_counter() - t0)
        return out

    def forward_chunk(self, rows: list[Any]) -> tuple[dict[str, np.ndarray], int]:
        """Run rows without counting a batch (a batch cut into chunks is counted once by
        its caller); returns the outputs and the number of forwards."""
        adapter = self.require()
        lengths = [adapter.item_length(r) for r in rows]
        groups = plan_forwards(lengths, self.max_batch_tokens)
        key = threading.get_ident()
        self._forwards_in_flight[key] = time.monotonic()
        try:
            return run_planned(rows, groups, adapter.forward), len(groups)
        finally:
            del self._forwards_in_flight[key]

    def check_health(self) -> None:
        """Raise unless the model is loaded, no forward has hung (run longer than
        ``hung_forward_s``) and its weight files are still in place."""
        self.require()
        # One copy (atomic under the GIL): a forward ending on its thread between a check
        # and a read of the live dict would fail this check falsely.
        started = list(self._forwards_in_flight.copy().values())
        if self.hung_forward_s is not None and started:
            running_s = time.monotonic() - min(started)
            if running_s > self.hung_forward_s:
                raise ServiceUnavailable(
                    f"model {self.name!r}: a forward has been running for {running_s:.0f} s "
                    f"(limit {self.hung_forward_s:.0f} s); the replica is stuck"
                )
        assert self.version is not None
        for entry in self.version.manifest.files:
            path = self.version.path / entry.path
            if not path.is_file():
                raise ServiceUnavailable(
                    f"model {self.name!r} version {self.version.version}: {path} disappeared"
                )
