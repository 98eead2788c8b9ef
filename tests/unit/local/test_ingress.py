"""HAProxy wrapper: admin listeners move to the admin host, the frontend stays (no Ray)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from serve_app.local.ingress import haproxy_env, private_folder, write_wrapper

CONFIG = """global
    stats socket /tmp/x/admin.sock mode 666 level admin
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
listen stats
  bind *:8404
  stats enable
"""


def test_wrapper_rebinds_admin_listeners_and_execs(tmp_path: Path) -> None:
    fake = tmp_path / "fake-haproxy"
    fake.write_text('#!/bin/sh\necho "ran with: $*"\n')
    fake.chmod(0o755)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG)
    wrapper = write_wrapper("127.0.0.1", binary=str(fake), directory=str(tmp_path))
    out = subprocess.run(
        [str(wrapper), "-db", "-f", str(cfg), "-dR"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    assert out == f"ran with: -db -f {cfg} -dR\n"
    binds = [line.strip() for line in cfg.read_text().splitlines() if "bind" in line]
    assert binds == ["bind 127.0.0.1:9101", "bind 127.0.0.1:8000", "bind 127.0.0.1:8404"]


def test_env_for_pods_keeps_ray_defaults() -> None:
    assert haproxy_env(None) == {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    env = haproxy_env("127.0.0.1")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).is_file()


def test_two_local_runs_get_their_own_admin_ports() -> None:
    a = haproxy_env("127.0.0.1", (8404, 9101))
    b = haproxy_env("127.0.0.1", (18404, 19101))
    ports = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
    assert [a[k] for k in ports] == ["8404", "9101"]
    assert [b[k] for k in ports] == ["18404", "19101"]


def test_the_wrapper_folder_is_private_or_refused(tmp_path: Path) -> None:
    """The wrapper lives under a predictable name in /tmp: a folder someone else made (or
    could write to) would let them replace what Ray runs as HAProxy."""
    wrapper = write_wrapper("127.0.0.1", binary="/bin/true", directory=str(tmp_path / "a"))
    assert stat.S_IMODE(wrapper.parent.stat().st_mode) == 0o700
    readable = tmp_path / "readable"  # ours, as an older serve_app made it: tightened
    readable.mkdir(mode=0o755)
    readable.chmod(0o755)
    assert stat.S_IMODE(private_folder(readable).stat().st_mode) == 0o700
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    for folder, why in ((open_folder, "drwxrwxrwx"), (link, "lrwxrwxrwx")):
        with pytest.raises(PermissionError, match=f"is not a private folder.*{why}"):
            private_folder(folder)
    if os.getuid() == 0:  # only root can give a folder away
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 12345, 12345)
        with pytest.raises(PermissionError, match="owner uid 12345"):
            private_folder(theirs)
