"""Job records in Redis: what a client polls at ``/v2/jobs/<id>``.

One hash per job, ``<prefix>:job:<id>`` (the prefix is the queues' one,
``serve-app`` by default), written by the submitter (``queued``) and by
the consumer (``running``, then ``succeeded``/``failed``), each write under a Lua
script so the transitions are atomic:

- ``queued -> cancelled`` only (``DELETE /v2/jobs/<id>`` while queued);
- ``queued|running -> running`` at each delivery (a redelivered job runs again);
- ``running -> succeeded|failed`` once: the first answer stored wins, so a job that a
  killed consumer left running and another consumer ran again is answered once.

A consumer acknowledges a message only after ``finish`` returned, so a stored answer
always exists for an acknowledged job. Every write re-arms the record's time to live
(``ttl_s``): an answer is kept that long after it was stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'target', ARGV[1], 'submitted_at_s', ARGV[2],
           'attempts', 0)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return state end
if not state then
  redis.call('HSET', KEYS[1], 'target', ARGV[1], 'submitted_at_s', ARGV[2])
end
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at_s', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 'running'
"""
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at_s', ARGV[2], 'status_code', ARGV[3],
           'content_type', ARGV[4], 'header_length', ARGV[5], 'response', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
return 1
"""
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state ~= 'queued' then return state end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at_s', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'cancelled'
"""


@dataclass(frozen=True)
class StoredAnswer:
    """The answer the synchronous route would have given: status, body and the two
    headers that describe it."""

    status_code: int
    body: bytes
    content_type: str = "application/json"
    header_length: int | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job as a client sees it."""

    job_id: str
    state: str
    target: str
    submitted_at_s: float
    attempts: int = 0
    started_at_s: float | None = None
    finished_at_s: float | None = None
    answer: StoredAnswer | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        """Whether the job reached a final state."""
        return self.state in FINAL_STATES

    def to_json(self) -> dict[str, Any]:
        """The status document (without the answer's body)."""
        doc: dict[str, Any] = {
            "id": self.job_id,
            "status": self.state,
            "model": self.target,
            "submitted_at_s": self.submitted_at_s,
            "attempts": self.attempts,
        }
        if self.started_at_s is not None:
            doc["started_at_s"] = self.started_at_s
        if self.finished_at_s is not None:
            doc["finished_at_s"] = self.finished_at_s
        if self.answer is not None:
            doc["status_code"] = self.answer.status_code
        return doc


class JobStore:
    """Job records in one Redis database (a ``redis.Redis`` client, sync)."""

    def __init__(self, client: Any, ttl_s: int, prefix: str = "serve-app") -> None:
        self._redis = client
        self.ttl_s = ttl_s
        self._prefix = prefix
        self._create = client.register_script(_CREATE)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)

    def key(self, job_id: str) -> str:
        """The Redis key of a job's record."""
        return f"{self._prefix}:job:{job_id}"

    def create(self, job_id: str, target: str, submitted_at_s: float) -> bool:
        """Record a queued job; False when the id already exists."""
        return bool(self._create([self.key(job_id)], [target, submitted_at_s, self.ttl_s]))

    def start(self, job_id: str, target: str, submitted_at_s: float) -> str:
        """Mark a delivery of the job; returns ``running``, or the final state the job
        is already in (then the delivery must not run it). A record that expired or
        that a producer of its own never wrote is created here."""
        now = time.time()
        state = self._start([self.key(job_id)], [target, submitted_at_s, now, self.ttl_s])
        return _text(state)

    def finish(self, job_id: str, state: str, answer: StoredAnswer) -> bool:
        """Store the job's answer; False when another delivery stored one first."""
        assert state in (SUCCEEDED, FAILED), state
        header = "" if answer.header_length is None else str(answer.header_length)
        args = [state, time.time(), answer.status_code, answer.content_type, header, answer.body]
        return bool(self._finish([self.key(job_id)], [*args, self.ttl_s]))

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job: ``cancelled``, the state it is in when it is no longer
        queued (nothing changes), or None for an unknown job."""
        state = self._cancel([self.key(job_id)], [time.time(), self.ttl_s])
        return None if state is None else _text(state)

    def delete(self, job_id: str) -> None:
        """Forget a job (its message was never published)."""
        self._redis.delete(self.key(job_id))

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None when unknown or expired."""
        raw = self._redis.hgetall(self.key(job_id))
        if not raw:
            return None
        f = {_text(k): v for k, v in raw.items()}
        answer = None
        if "status_code" in f:
            header = _text(f.get("header_length", b""))
            answer = StoredAnswer(
                status_code=int(f["status_code"]),
                body=bytes(f.get("response", b"")),
                content_type=_text(f.get("content_type", b"application/json")),
                header_length=int(header) if header else None,
            )
        return JobRecord(
            job_id=job_id,
            state=_text(f["state"]),
            target=_text(f.get("target", b"")),
            submitted_at_s=float(f.get("submitted_at_s", 0.0)),
            attempts=int(f.get("attempts", 0)),
            started_at_s=_float(f.get("started_at_s")),
            finished_at_s=_float(f.get("finished_at_s")),
            answer=answer,
        )


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
