"""Tenants of a multiplexed family inside a replica, free of Ray and HTTP so it can be
unit tested: which names are tenants, loading one (verified like any model), and the
counts a replica reports (requests, loads, evictions, failures).

The LRU itself is Ray's (``@serve.multiplexed`` in ``server/multiplexed.py``): it evicts
the least recently used tenant *before* it loads the next one, even when that load then
fails. ``TenantLoader`` therefore refuses an unknown tenant before the LRU is touched,
and remembers a failed load for ``failure_memory_s``, so a corrupt tenant's repeated
requests fail fast instead of evicting a healthy tenant each time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app.config.tenants import is_tenant_name
from serve_app.errors import ModelNotFound, ModelVersionNotFound, RepositoryError
from serve_app.repository.loader import ModelRepository, VerifiedVersion
from serve_app.server.runtime import AdapterLoader, ModelRuntime
from serve_app.server.tenant_listing import no_tenant_folder

logger = logging.getLogger("ray.serve")

FAILURE_MEMORY_S = 5.0
"""How long a failed tenant load is answered from memory before it is tried again (a
restored file is picked up after this)."""


@dataclass
class TenantStats:
    """What one replica did with its tenants (``tenant_stats()`` returns it as a dict)."""

    requests: int = 0
    """Requests that asked for a known tenant (not a remembered failure)."""
    hits: int = 0
    """Requests whose tenant was loaded when they arrived."""
    loads: int = 0
    """Tenants loaded (a cold start: verify + load + warm-up)."""
    load_failures: int = 0
    """Loads that raised (corrupt or missing files), not counting remembered failures."""
    evictions: int = 0
    """Tenants dropped by the LRU."""
    recent_load_s: deque[tuple[str, float]] = field(default_factory=lambda: deque(maxlen=1024))
    """(tenant, seconds) of the latest loads."""

    def to_json(self) -> dict[str, Any]:
        """Plain dict for handles and benchmarks."""
        return {
            "requests": self.requests,
            "hits": self.hits,
            "loads": self.loads,
            "load_failures": self.load_failures,
            "evictions": self.evictions,
            "recent_load_s": [list(x) for x in self.recent_load_s],
        }


class LoadedTenant:
    """One tenant's verified, loaded model. Ray calls ``__del__`` when its LRU evicts
    the tenant; requests that already hold it finish with it (the weights are freed with
    the last reference)."""

    def __init__(self, name: str, runtime: ModelRuntime, on_evict: Callable[[str], None]) -> None:
        self.name = name
        self.runtime = runtime
        self.version = str(runtime.version.version if runtime.version else "")
        self._on_evict: Callable[[str], None] | None = on_evict

    def __del__(self) -> None:
        # Ray calls this on eviction; garbage collection may call it again later.
        on_evict, self._on_evict = self._on_evict, None
        if on_evict is not None:
            on_evict(self.name)

    def check_version(self, version: str | None) -> None:
        """Raise ``ModelNotFound`` unless ``version`` is None or the loaded one."""
        if version is not None and version != self.version:
            raise ModelNotFound(
                f"model {self.name!r} version {version} not found (serving version {self.version})"
            )

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata of the tenant."""
        adapter = self.runtime.require()
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": adapter.info.platform,
            "inputs": [t.to_json() for t in adapter.info.inputs],
            "outputs": [t.to_json() for t in adapter.info.outputs],
        }


class _PreVerified(ModelRepository):
    """The repository as ``ModelRuntime.load`` sees it when the tenant was verified just
    before (outside the LRU): hands out that verification instead of hashing again."""

    def __init__(self, repository: ModelRepository, version: VerifiedVersion) -> None:
        super().__init__(repository.root, repository.hash_workers)
        self._version = version

    def verify(
        self, name: str, policy: Literal["latest"] | int = "latest", *, hashes: bool = True
    ) -> VerifiedVersion:
        return self._version


class TenantLoader:
    """Loads the tenants of one family from the repository.

    A replica calls :meth:`check_known` and :meth:`check_failed` for every request,
    :meth:`verify` before a cold tenant enters the LRU (so a corrupt tenant fails before
    Ray evicts anyone for it), then :meth:`load` from inside Ray's LRU.

    Args:
        repository: Where tenants' weights live (``<root>/<tenant>/<version>/``).
        family: The family's name (in messages).
        prefix: Repository folders starting with this are the family's tenants.
        version_policy: ``latest`` or a pinned version, for every tenant.
        adapter_loader: Builds a tenant's adapter (injected so tests can stand in one).
        device: Device string; ``None`` picks CUDA when visible, else CPU.
        failure_memory_s: How long a failed load is answered from memory.
        clock: Monotonic seconds (injected by tests of the failure memory).
    """

    def __init__(
        self,
        repository: ModelRepository,
        family: str,
        prefix: str,
        version_policy: Literal["latest"] | int,
        adapter_loader: AdapterLoader,
        device: str | None = None,
        failure_memory_s: float = FAILURE_MEMORY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.family = family
        self.prefix = prefix
        self.version_policy = version_policy
        self.adapter_loader = adapter_loader
        self.device = device
        self.failure_memory_s = failure_memory_s
        self.clock = clock
        self.stats = TenantStats()
        self.loaded: set[str] = set()
        """Tenants in the LRU now (loads add, evictions remove)."""
        self._failed: dict[str, tuple[float, RepositoryError]] = {}
        self._verified: dict[str, tuple[float, VerifiedVersion]] = {}
        self._lock = threading.Lock()

    def check_known(self, tenant: str) -> None:
        """Raise ``ModelNotFound`` (404) unless ``tenant`` names a tenant folder of this
        family; ``RepositoryNotMounted`` (503) when the repository is missing."""
        if not is_tenant_name(tenant, self.prefix):
            raise ModelNotFound(
                f"unknown model {tenant!r}: not a tenant of the multiplexed family "
                f"{self.family!r} (tenant names start with {self.prefix!r})"
            )
        self.repository.check_mounted()
        if not (self.repository.root / tenant).is_dir():
            raise no_tenant_folder(tenant, self.repository.root, self.family)

    def check_failed(self, tenant: str) -> None:
        """Re-raise a failure of ``tenant`` remembered less than ``failure_memory_s`` ago."""
        with self._lock:
            failed = self._failed.get(tenant)
        if failed is not None and self.clock() - failed[0] < self.failure_memory_s:
            raise failed[1]

    def note_request(self, tenant: str) -> bool:
        """Count a request for ``tenant``; True (a hit) when it is loaded already."""
        with self._lock:
            self.stats.requests += 1
            hit = tenant in self.loaded
            self.stats.hits += hit
        return hit

    def _failure(self, tenant: str, error: RepositoryError) -> None:
        with self._lock:
            self._failed[tenant] = (self.clock(), error)
            self.stats.load_failures += 1
        logger.error("tenant %s of %s failed to load: %s", tenant, self.family, error)

    def verify(self, tenant: str) -> VerifiedVersion:
        """Check the tenant's files (sizes and sha256 against its manifest) and keep the
        result for the :meth:`load` that follows. Blocking: call it off the event loop.

        Raises:
            ModelNotFound: not a tenant, or the tenant has no (such) published version.
            RepositoryError: a file is corrupt, missing or unreadable (named); remembered.
        """
        self.check_known(tenant)
        try:
            version = self.repository.verify(tenant, self.version_policy)
        except ModelVersionNotFound as e:
            raise ModelNotFound(e.message) from None
        except RepositoryError as e:
            self._failure(tenant, e)
            raise
        with self._lock:
            self._verified[tenant] = (self.clock(), version)
        return version

    def load(self, tenant: str) -> LoadedTenant:
        """Load ``tenant`` (verified by :meth:`verify` moments ago, else now) and warm it
        up. Blocking: call it off the event loop.

        Raises:
            ModelNotFound: not a tenant, or the tenant has no (such) published version.
            RepositoryError: a file is corrupt, missing or unreadable (named); remembered.
        """
        t0 = time.perf_counter()
        with self._lock:
            verified = self._verified.pop(tenant, None)
        earlier_verify_s = 0.0  # a verification before this call (outside the LRU)
        if verified is None or self.clock() - verified[0] > self.failure_memory_s:
            version = self.verify(tenant)
            with self._lock:
                self._verified.pop(tenant, None)
        else:
            version = verified[1]
            earlier_verify_s = version.verify_s
        runtime = ModelRuntime(
            _PreVerified(self.repository, version),
            tenant,
            self.version_policy,
            self.adapter_loader,
            device=self.device,
        )
        try:
            runtime.load(cap_to_memory=False)
        except RepositoryError as e:  # e.g. weights that do not match the architecture
            self._failure(tenant, e)
            raise
        load_s = time.perf_counter() - t0 + earlier_verify_s
        with self._lock:
            self._failed.pop(tenant, None)
            self.loaded.add(tenant)
            self.stats.loads += 1
            self.stats.recent_load_s.append((tenant, load_s))
        logger.info(
            "tenant %s of %s loaded in %.3f s (verify %.3f s) %s",
            tenant, self.family, load_s, version.verify_s, runtime.load_s,
        )  # fmt: skip
        return LoadedTenant(tenant, runtime, self._evicted)

    def _evicted(self, tenant: str) -> None:
        with self._lock:
            self.stats.evictions += 1
            self.loaded.discard(tenant)
        logger.info("tenant %s of %s evicted", tenant, self.family)
