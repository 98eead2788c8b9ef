"""Where a benchmark's results go: ``<out>.json`` (every raw number) and ``<out>.md``
(the report a reader opens), committed under ``loadtest/results/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, results: dict[str, Any], markdown: str) -> None:
    """Write ``results`` as ``out``.json and ``markdown`` as ``out``.md, and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
