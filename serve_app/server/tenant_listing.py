"""Which tenants exist, as the server application sees the model repository: a cached
listing of the tenant folders, so that a request for a tenant that has no folder is a
404 before any hop.

Why before the hop: Serve's router keeps every multiplexed model id it was asked to
route and no replica holds, forever; a client sending random tenant names would grow it
without bound. The listing is refreshed off the event loop (the repository is a network
volume in a cluster), at most one refresh at a time: a hung volume holds one thread,
and a flood of unknown names costs at most one scan per ``miss_refresh_s``. While no
listing can be read (the server's node does not mount the repository, or it hangs), the
request is forwarded as before and the family's replica checks the folder itself:
tenants stay available, and a warning says the check is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from serve_app.config.tenants import is_tenant_name
from serve_app.errors import ModelNotFound, RepositoryNotMounted

logger = logging.getLogger("ray.serve")

TTL_S = 5.0
"""A listing older than this is refreshed in the background on a hit."""
MISS_REFRESH_S = 1.0
"""An unknown name triggers a refresh (and waits for it) when the listing is older than
this: a tenant published a moment ago is found within about a second."""
WAIT_S = 2.0
"""How long a request waits for a refresh before answering from the listing it has."""


def no_tenant_folder(tenant: str, root: Path | str, family: str) -> ModelNotFound:
    """The 404 of a tenant without a folder: the same body whether the server's listing
    or the family's replica finds it missing."""
    return ModelNotFound(
        f"unknown model {tenant!r}: no tenant folder {Path(root) / tenant} "
        f"for the multiplexed family {family!r}"
    )


def scan_tenant_folders(root: Path, prefixes: Iterable[str]) -> frozenset[str]:
    """Names of the folders under ``root`` that are tenant names of one of ``prefixes``.
    Blocking (one directory read).

    Raises:
        RepositoryNotMounted: ``root`` is not a folder.
    """
    if not root.is_dir():
        raise RepositoryNotMounted(f"model repository not mounted at {root}")
    prefixes = list(prefixes)
    with os.scandir(root) as entries:
        return frozenset(
            e.name
            for e in entries
            if any(is_tenant_name(e.name, p) for p in prefixes) and e.is_dir()
        )


def repository_listing(root: Path | str, prefixes: Iterable[str]) -> TenantListing:
    """The listing of the tenant folders of ``prefixes``' families under ``root``."""
    path, names = Path(root), tuple(prefixes)
    return TenantListing(path, lambda: scan_tenant_folders(path, names))


class TenantListing:
    """The tenant folders of the repository, cached.

    Use it from one event loop (the server replica's): the state is only touched there;
    the scan itself runs in a worker thread.

    Args:
        root: The repository root (in messages).
        scan: Reads the tenant folder names (blocking; injected by tests).
        ttl_s: Age past which a hit starts a background refresh.
        miss_refresh_s: Age past which a miss waits for a refresh.
        wait_s: Longest wait for a refresh.
        clock: Monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        root: Path | str,
        scan: Callable[[], frozenset[str]],
        ttl_s: float = TTL_S,
        miss_refresh_s: float = MISS_REFRESH_S,
        wait_s: float = WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self._scan = scan
        self.ttl_s = ttl_s
        self.miss_refresh_s = miss_refresh_s
        self.wait_s = wait_s
        self._clock = clock
        self._names: frozenset[str] | None = None
        self._read_at = 0.0
        self._error: BaseException | None = None
        self._refresh: asyncio.Future[frozenset[str]] | None = None
        self._warned_at: float | None = None
        self.scans = 0
        """Scans started so far (for tests and logs)."""

    def _start_refresh(self) -> asyncio.Future[frozenset[str]]:
        """The refresh in flight, or a new one: never two at a time."""
        if self._refresh is None:
            self.scans += 1
            refresh = asyncio.get_running_loop().run_in_executor(None, self._scan)
            refresh.add_done_callback(self._refreshed)
            self._refresh = refresh
        return self._refresh

    def _refreshed(self, refresh: asyncio.Future[frozenset[str]]) -> None:
        self._refresh = None
        if refresh.cancelled():
            return
        error = refresh.exception()
        if error is None:
            self._names, self._read_at, self._error = refresh.result(), self._clock(), None
        else:
            self._error = error
            logger.warning("tenant listing of %s failed: %s", self.root, error)

    async def _wait_for_refresh(self) -> None:
        # Timed out or failed: the listing we have (or the lack of one) decides.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._start_refresh()), self.wait_s)

    def _warn_unchecked(self) -> None:
        now_s = self._clock()
        if self._warned_at is not None and now_s - self._warned_at < self.ttl_s:
            return
        self._warned_at = now_s
        cause = "it did not answer in time" if self._error is None else str(self._error)
        logger.warning(
            "tenants are forwarded unchecked: the model repository at %s cannot be listed (%s)",
            self.root,
            cause,
        )

    async def check(self, tenant: str, family: str) -> None:
        """Return when ``tenant`` has a folder in the repository, or when no listing
        could be read yet (then the family's replica checks the folder, as without one).

        Raises:
            ModelNotFound: no folder of that name (the family's replica's 404).
        """
        age_s = self._clock() - self._read_at
        known = self._names is not None and tenant in self._names
        if known and age_s > self.ttl_s:
            self._start_refresh()  # a known tenant does not wait for the volume
        elif not known and (self._names is None or age_s > self.miss_refresh_s):
            await self._wait_for_refresh()
        if self._names is None:
            self._warn_unchecked()
            return
        if tenant not in self._names:
            raise no_tenant_folder(tenant, self.root, family)
