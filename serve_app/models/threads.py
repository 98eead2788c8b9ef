"""Intra-op threads of the model runtime in this process.

The deployment sets the count once, before its adapter loads; each runtime reads it
when it builds its session. torch is configured only by the adapters that run torch:
importing torch costs about 1 s and 200 MiB of private memory per process (measured on
this project's 2-core machine), which a replica serving an ONNX model never uses.
"""

from __future__ import annotations

import sys

_threads: int | None = None


def set_intra_op_threads(n: int) -> None:
    """Use ``n`` intra-op threads in this process (applied to torch now if it is already
    imported, else when a torch adapter loads)."""
    global _threads
    _threads = max(1, int(n))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(_threads)


def intra_op_threads() -> int:
    """The count set by ``set_intra_op_threads``; without one, torch's when it is
    imported, else 1 (Ray's ``OMP_NUM_THREADS`` default in workers)."""
    if _threads is not None:
        return _threads
    torch = sys.modules.get("torch")
    return max(1, int(torch.get_num_threads())) if torch is not None else 1


def apply_to_torch() -> None:
    """Give torch the configured count (torch adapters call this when they load)."""
    import torch

    torch.set_num_threads(intra_op_threads())
