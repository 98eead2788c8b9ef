"""Tenant models for a multiplexed family: many small MLP heads of one architecture
(the demo's ``mlp-head`` shape, 384 -> 128 -> 8), each with its own seeded random
weights, published into the repository like any model (safetensors + checksummed
manifest). Tests and ``loadtest/bench/multiplex.py`` serve them.

``python -m serve_app.local.demo_tenants --root ./model-repository --count 200`` publishes
``tenant-0000`` ... ``tenant-0199`` (those not already there).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from serve_app.local.demo import MLP_HEAD_ARCH
from serve_app.repository import ModelRepository, publish
from serve_app.repository.manifest import Architecture

TENANT_PREFIX = "tenant-"


def tenant_name(index: int, prefix: str = TENANT_PREFIX) -> str:
    """Name of tenant ``index``: ``tenant-0007``."""
    return f"{prefix}{index:04d}"


def tenant_seed(index: int, base_seed: int = 1000) -> int:
    """Seed of tenant ``index``'s weights (different for every tenant)."""
    return base_seed + index


def write_tenant_weights(path: Path, seed: int, architecture: Architecture = MLP_HEAD_ARCH) -> Path:
    """A seeded random state dict of ``architecture`` as one safetensors file."""
    import torch
    from safetensors.torch import save_file

    from serve_app.models.architectures import ARCHITECTURES

    torch.manual_seed(seed)
    module = ARCHITECTURES[architecture.name](**architecture.kwargs)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def publish_tenants(
    root: str | Path, count: int, prefix: str = TENANT_PREFIX, base_seed: int = 1000
) -> list[str]:
    """Publish tenants ``0 .. count-1`` missing from ``root``; returns the names published."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    repo = ModelRepository(root)
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            name = tenant_name(i, prefix)
            if repo.versions(name):
                continue
            seed = tenant_seed(i, base_seed)
            (Path(tmp) / name).mkdir()
            weights = write_tenant_weights(Path(tmp) / name / "model.safetensors", seed)
            publish(
                weights,
                root,
                name,
                architecture=MLP_HEAD_ARCH,
                source=f"seeded random init (torch.manual_seed({seed}))",
                workers=1,
            )
            done.append(name)
    return done


def main(argv: list[str] | None = None) -> int:
    """Command line: publish ``--count`` tenants into ``--root``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="./model-repository")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--prefix", default=TENANT_PREFIX)
    a = parser.parse_args(argv)
    published = publish_tenants(a.root, a.count, a.prefix)
    print(f"published {len(published)} tenants into {a.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
