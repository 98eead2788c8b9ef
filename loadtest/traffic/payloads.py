"""Request bodies for a load run: from a file, or generated from the target's own OIP
metadata (``GET /v2/models/<name>``), so any model or pipeline can be loaded without
writing a payload by hand."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

SENTENCES = [
    "I was charged twice this month, please refund ASAP",
    "Can I change the delivery address of my order?",
    "The parcel arrived damaged and the box was open",
    "How do I reset the password of my account?",
    "Ray Serve batches requests for me",
]


def model_metadata(base_url: str, name: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """OIP metadata of model or pipeline ``name``."""
    url = f"{base_url.rstrip('/')}/v2/models/{name}"
    with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - user's URL
        return dict(json.loads(r.read()))


def generated_body(metadata: dict[str, Any], rows: int = 1, seed: int = 0) -> bytes:
    """An OIP request with ``rows`` rows for every declared input: sentences for BYTES,
    random values in [0, 1) for numbers (``-1`` dimensions past the first become 1)."""
    rng = np.random.default_rng(seed)
    inputs = []
    for spec in metadata["inputs"]:
        dims = [rows] + [d if d > 0 else 1 for d in spec["shape"][1:]]
        count = int(np.prod(dims))
        if spec["datatype"] == "BYTES":
            data: list[Any] = [SENTENCES[i % len(SENTENCES)] for i in range(count)]
        elif spec["datatype"].startswith(("FP", "BF")):
            data = np.round(rng.random(count), 4).tolist()
        elif spec["datatype"] == "BOOL":
            data = (rng.random(count) < 0.5).tolist()
        else:
            data = rng.integers(0, 100, count).tolist()
        inputs.append(
            {"name": spec["name"], "shape": dims, "datatype": spec["datatype"], "data": data}
        )
    return json.dumps({"inputs": inputs}).encode()


def body_from_file(path: Path) -> bytes:
    """A JSON OIP request from ``path`` (checked to parse and to hold ``inputs``)."""
    raw = path.read_bytes()
    if "inputs" not in json.loads(raw):
        raise ValueError(f"{path}: not an OIP inference request (no 'inputs')")
    return raw


SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank today"
