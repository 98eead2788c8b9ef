"""Waits that follow progress, not the clock.

A fixed deadline measures the machine: sixteen applications starting on two slow cores
need minutes, one on a fast laptop seconds. ``follow`` instead polls a snapshot, returns
when it is done, fails at once when it failed, and fails on a *stall*: no change of the
snapshot's progress key for ``stall_s``. For Serve the key is every application's status
and each deployment's count of replicas per state, so a replica moving from STARTING to
RUNNING (or a new one appearing) is progress; the stall message says what was still
starting and Serve's reason (e.g. "taken more than 30s to be scheduled ... resources").

``AppView`` snapshots come from ``serve.status()`` (a driver connected to Ray) or from
the dashboard's ``GET /api/serve/applications/`` (any process with the token).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

FAILED_STATES = ("DEPLOY_FAILED", "UNHEALTHY")
"""Application states that do not resolve by waiting (Serve gave up or the app broke)."""
NOT_DEPLOYED = "NOT_DEPLOYED"
"""The status of an application Serve does not know (yet)."""


class DeployFailed(RuntimeError):
    """An application turned DEPLOY_FAILED or UNHEALTHY while we waited."""


class DeployStalled(TimeoutError):
    """Nothing moved for the stall window (or the optional overall cap ran out)."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def concise(message: str) -> str:
    """Serve's status message without terminal colours, and with a replica's traceback
    cut to its last line (the error itself, e.g. the file that failed verification)."""
    message = _ANSI.sub("", message)
    head, sep, tail = message.partition("Traceback (most recent call last):")
    if not sep:
        return message.strip()
    last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
    lead = head.split("Error:")[0].strip() if "Error:" in head else head.strip()
    return f"{lead} {last}".strip()


def state_name(state: Any) -> str:
    """``RUNNING`` for an enum member (``ApplicationStatus.RUNNING``) or a plain string."""
    return str(getattr(state, "value", state))


@dataclass(frozen=True)
class DeploymentView:
    """One deployment as Serve reports it."""

    status: str
    message: str = ""
    replica_states: Mapping[str, int] = field(default_factory=dict)
    """Number of replicas in each state (STARTING, RUNNING, STOPPING, ...)."""

    def replicas(self, state: str) -> int:
        """Replicas in ``state`` (0 when none)."""
        return int(self.replica_states.get(state, 0))


@dataclass(frozen=True)
class AppView:
    """One application as Serve reports it."""

    status: str
    message: str = ""
    deployments: Mapping[str, DeploymentView] = field(default_factory=dict)


Snapshot = Mapping[str, AppView]
"""Applications by name."""


def from_serve_status(applications: Mapping[str, Any]) -> dict[str, AppView]:
    """A snapshot from ``serve.status().applications``."""
    return {
        name: AppView(
            status=state_name(app.status),
            message=app.message or "",
            deployments={
                d_name: DeploymentView(
                    status=state_name(d.status),
                    message=d.message or "",
                    replica_states={state_name(k): int(v) for k, v in d.replica_states.items()},
                )
                for d_name, d in app.deployments.items()
            },
        )
        for name, app in applications.items()
    }


def from_rest(body: Mapping[str, Any]) -> dict[str, AppView]:
    """A snapshot from the JSON of the dashboard's ``GET /api/serve/applications/``."""
    out = {}
    for name, app in (body.get("applications") or {}).items():
        deployments = {}
        for d_name, d in (app.get("deployments") or {}).items():
            counts: dict[str, int] = {}
            for replica in d.get("replicas") or []:
                counts[replica["state"]] = counts.get(replica["state"], 0) + 1
            deployments[d_name] = DeploymentView(d["status"], d.get("message") or "", counts)
        out[name] = AppView(app["status"], app.get("message") or "", deployments)
    return out


def status_of(snapshot: Snapshot, name: str) -> str:
    """The application's status, ``NOT_DEPLOYED`` when Serve does not list it."""
    app = snapshot.get(name)
    return app.status if app is not None else NOT_DEPLOYED


def progress_key(snapshot: Snapshot, names: Iterable[str]) -> Hashable:
    """What changes while ``names`` make progress: each application's status and, per
    deployment, its status and replica counts by state (messages are left out: Serve
    rewrites them without anything having moved)."""
    key: list[tuple[str, str, tuple[Any, ...]]] = []
    for name in sorted(names):
        app = snapshot.get(name)
        if app is None:
            key.append((name, NOT_DEPLOYED, ()))
            continue
        deployments = tuple(
            (d_name, d.status, tuple(sorted(d.replica_states.items())))
            for d_name, d in sorted(app.deployments.items())
        )
        key.append((name, app.status, deployments))
    return tuple(key)


def describe(snapshot: Snapshot, names: Iterable[str], *, only_unfinished: bool = True) -> str:
    """One line per application (not RUNNING ones only, by default) with each
    deployment's status, replica states and Serve's message: what was still starting
    and why."""
    lines = []
    for name in names:
        app = snapshot.get(name)
        if app is None:
            lines.append(f"{name}: {NOT_DEPLOYED}")
            continue
        if only_unfinished and app.status == "RUNNING":
            continue
        parts = [f"{name}: {app.status}"]
        if app.message:
            parts.append(f"({_short(app.message)})")
        for d_name, d in app.deployments.items():
            states = ", ".join(f"{s} {n}" for s, n in sorted(d.replica_states.items())) or "none"
            part = f"[{d_name} {d.status}; replicas: {states}"
            parts.append(part + (f"; {_short(d.message)}]" if d.message else "]"))
        lines.append(" ".join(parts))
    return "\n".join(lines) if lines else "(all running)"


def _short(message: str, limit: int = 400) -> str:
    one_line = " ".join(message.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def failure_of(snapshot: Snapshot, names: Iterable[str]) -> str | None:
    """Serve's reasons for the first of ``names`` that failed, or None."""
    for name in names:
        app = snapshot.get(name)
        if app is not None and app.status in FAILED_STATES:
            reasons = [app.message] + [d.message for d in app.deployments.values()]
            return f"application {name!r} {app.status}: " + " | ".join(r for r in reasons if r)
    return None


def follow(
    poll: Callable[[], T],
    *,
    done: Callable[[T], bool],
    key: Callable[[T], Hashable],
    stall_s: float,
    describe: Callable[[T], str] = repr,
    failed: Callable[[T], str | None] = lambda _: None,
    what: str = "condition",
    on_progress: Callable[[T], None] | None = None,
    timeout_s: float | None = None,
    interval_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Poll until ``done(snapshot)``, for as long as ``key(snapshot)`` keeps changing.

    Args:
        poll: takes a snapshot (may raise: the error propagates).
        done: the condition waited for.
        key: the snapshot's progress; any change restarts the stall window.
        stall_s: how long the key may stay the same before giving up.
        describe: what to tell when giving up (what was still pending, and why).
        failed: a reason when the snapshot shows a failure that waiting cannot fix.
        what: names the condition in the error.
        on_progress: called with each snapshot whose key changed (the first included).
        timeout_s: an optional overall cap, for callers that must bound the total.
        interval_s: time between polls.

    Returns:
        The snapshot that satisfied ``done``.

    Raises:
        DeployFailed: ``failed`` returned a reason.
        DeployStalled: no progress for ``stall_s`` (or ``timeout_s`` ran out).
    """
    start = last_change = clock()
    last_key: Hashable = object()
    while True:
        snapshot = poll()
        now = clock()
        current = key(snapshot)
        if current != last_key:
            last_key, last_change = current, now
            if on_progress is not None:
                on_progress(snapshot)
        if done(snapshot):
            return snapshot
        reason = failed(snapshot)
        if reason is not None:
            raise DeployFailed(reason)
        if now - last_change >= stall_s:
            raise DeployStalled(
                f"{what}: no progress for {stall_s:.0f} s (waited {now - start:.0f} s in all); "
                f"still pending:\n{describe(snapshot)}"
            )
        if timeout_s is not None and now - start >= timeout_s:
            raise DeployStalled(
                f"{what}: not met after {timeout_s:.0f} s although still moving; "
                f"still pending:\n{describe(snapshot)}"
            )
        sleep(interval_s)


def wait_apps(
    poll: Callable[[], Snapshot],
    names: Iterable[str],
    *,
    stall_s: float,
    states: Mapping[str, str] | None = None,
    on_progress: Callable[[Snapshot], None] | None = None,
    timeout_s: float | None = None,
    interval_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Snapshot:
    """Wait until each of ``names`` is RUNNING (or the state ``states`` gives it, e.g.
    ``DEPLOY_FAILED`` for an app expected to fail), following progress.

    Raises:
        DeployFailed: an application failed that was expected to run (Serve's reason).
        DeployStalled: no replica or application moved for ``stall_s``.
    """
    names = list(names)
    expected = {n: (states or {}).get(n, "RUNNING") for n in names}
    must_run = [n for n in names if expected[n] not in FAILED_STATES]
    return follow(
        poll,
        done=lambda s: all(status_of(s, n) == expected[n] for n in names),
        key=lambda s: progress_key(s, names),
        stall_s=stall_s,
        describe=lambda s: describe(s, [n for n in names if status_of(s, n) != expected[n]]),
        failed=lambda s: failure_of(s, must_run),
        what=f"applications {names} to be {sorted(set(expected.values()))}",
        on_progress=on_progress,
        timeout_s=timeout_s,
        interval_s=interval_s,
        clock=clock,
        sleep=sleep,
    )


_UNSCHEDULED = re.compile(
    r"has (?P<n>\d+) replicas that have taken more than (?P<s>\d+)s to be scheduled\..*?"
    r"Resources required for each replica: (?P<need>\{.*?\}), "
    r"total resources available: (?P<have>\{.*?\})\.",
    re.S,
)
"""Serve's message for replicas no node can place yet (``DeploymentState``, after
``RAY_SERVE_SLOW_STARTUP_WARNING_S``)."""


def unscheduled(snapshot: Snapshot, names: Iterable[str]) -> list[str]:
    """One line per deployment whose replicas wait for resources, from Serve's own
    message: ``minilm/ModelDeployment: 2 replicas unscheduled for 5+ s: each needs
    {"CPU": 1.0}; available {"CPU": 0.0}``."""
    lines = []
    for name in names:
        app = snapshot.get(name)
        for d_name, d in (app.deployments if app else {}).items():
            m = _UNSCHEDULED.search(concise(d.message))
            if m:
                lines.append(
                    f"{name}/{d_name}: {m['n']} replicas unscheduled for {m['s']}+ s: each "
                    f"needs {m['need']}; available {m['have']}"
                )
    return lines


def summary(snapshot: Snapshot, names: Iterable[str]) -> str:
    """A one-line progress report: each app's status, with replica counts while not
    RUNNING (``minilm RUNNING; triage DEPLOYING (PipelineRouter: STARTING 1)``)."""
    parts = []
    for name in names:
        app = snapshot.get(name)
        if app is None:
            parts.append(f"{name} {NOT_DEPLOYED}")
            continue
        text = f"{name} {app.status}"
        if app.status != "RUNNING":
            counts = [
                f"{d_name}: " + ", ".join(f"{s} {n}" for s, n in sorted(d.replica_states.items()))
                for d_name, d in app.deployments.items()
                if d.replica_states
            ]
            if counts:
                text += f" ({'; '.join(counts)})"
        parts.append(text)
    return "; ".join(parts)
