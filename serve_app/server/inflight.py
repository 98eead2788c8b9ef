"""A replica's budget of request bytes in flight (``http.max_in_flight_bytes``).

``max_ongoing_requests`` bounds how many requests a replica holds, not how large they
are: 64 requests of 16 MiB plus their decoded inputs would not fit a 2 GiB worker. Each
request reserves its body's bytes before the body is read (its ``Content-Length``, or
chunk by chunk as it arrives) and its decoded inputs' bytes once decoded; one that would
pass the budget is answered 503 with ``Retry-After`` instead, and everything a request
reserved is released when it ends, whether answered, failed or cancelled.
"""

from __future__ import annotations

import threading
from types import TracebackType

from serve_app.config import HttpConfig
from serve_app.errors import ServiceUnavailable
from serve_app.server.memory import in_flight_budget_bytes


class InFlightBytes:
    """Bytes held by a replica's requests, within ``limit_bytes``.

    Args:
        limit_bytes: The budget.
        retry_after_s: ``Retry-After`` of the 503 past it.
    """

    def __init__(self, limit_bytes: int, retry_after_s: int) -> None:
        self.limit_bytes = limit_bytes
        self.retry_after_s = retry_after_s
        self.in_flight_bytes = 0
        self.peak_bytes = 0
        """Most bytes held at once so far (for tests and operations)."""
        self._lock = threading.Lock()  # decodes also run in worker threads

    @classmethod
    def for_replica(cls, http: HttpConfig) -> InFlightBytes:
        """The budget of a replica with these ``http`` settings (``max_in_flight_bytes``,
        or derived from the memory it may use: ``memory.in_flight_budget_bytes``)."""
        one_request = http.max_request_bytes + http.limits.max_decoded_bytes
        limit = in_flight_budget_bytes(http.max_in_flight_bytes, one_request)
        return cls(limit, http.retry_after_s)

    def reserve(self, nbytes: int) -> None:
        """Hold ``nbytes`` more.

        Raises:
            ServiceUnavailable: they would pass the budget (503 with ``Retry-After``).
        """
        with self._lock:
            held = self.in_flight_bytes
            if held + nbytes > self.limit_bytes:
                raise ServiceUnavailable(
                    f"replica busy: {held} bytes of requests in flight, {nbytes} more would "
                    f"pass its budget of {self.limit_bytes} (http.max_in_flight_bytes)",
                    self.retry_after_s,
                )
            self.in_flight_bytes = held + nbytes
            self.peak_bytes = max(self.peak_bytes, self.in_flight_bytes)

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` reserved earlier."""
        with self._lock:
            self.in_flight_bytes -= nbytes

    def hold(self) -> Reservation:
        """What one request reserves, released when its ``with`` block ends."""
        return Reservation(self)


class Reservation:
    """The bytes one request holds in an :class:`InFlightBytes`; a context manager that
    releases them all on exit (an answer, an error or a cancellation)."""

    def __init__(self, budget: InFlightBytes) -> None:
        self.budget = budget
        self.nbytes = 0

    def add(self, nbytes: int) -> None:
        """Reserve ``nbytes`` more for this request (raises ``ServiceUnavailable``)."""
        if nbytes > 0:
            self.budget.reserve(nbytes)
            self.nbytes += nbytes

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.budget.release(self.nbytes)
        self.nbytes = 0
