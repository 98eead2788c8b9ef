"""The demo hands every application an absolute repository root (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config import load_app_config
from serve_app.deploy.serve_config import render_serve_config
from serve_app.local.demo import absolute_roots

ROOT = Path(__file__).resolve().parents[3]


def test_every_application_reading_the_repository_gets_an_absolute_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = render_serve_config(load_app_config(ROOT / "configs/app.yaml"))
    readers = [a for a in config["applications"] if "repository" in a["args"]]
    kinds = {a["args"].get("kind") for a in readers}
    assert {"model", "server"} <= kinds, kinds  # the server's tenant listing reads it too
    assert any(not Path(a["args"]["repository"]["root"]).is_absolute() for a in readers)
    absolute_roots(config)
    for a in readers:
        root = a["args"]["repository"]["root"]
        assert Path(root).is_absolute() and root.startswith(str(tmp_path)), (a["name"], root)
