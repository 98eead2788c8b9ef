"""What a local Ray on this machine would have: CPUs and memory as Ray counts them
(cgroup limits included), GPUs as Ray detects them, or the demo's logical overrides."""

from __future__ import annotations


def local_capacity(num_cpus: int | None = None, num_gpus: int | None = None) -> dict[str, float]:
    """``CPU``, ``GPU`` and ``memory`` (bytes) of a local Ray started here.

    Args:
        num_cpus: Logical CPUs given to Ray (``serve-app demo --num-cpus``); None: detected.
        num_gpus: Logical GPUs (``--num-gpus``); None: detected.
    """
    from ray._private.accelerators import NvidiaGPUAcceleratorManager
    from ray._private.utils import get_num_cpus, get_system_memory

    cpus = get_num_cpus() if num_cpus is None else num_cpus
    if num_gpus is None:
        num_gpus = NvidiaGPUAcceleratorManager.get_current_node_num_accelerators()
    return {"CPU": float(cpus), "GPU": float(num_gpus), "memory": float(get_system_memory())}
