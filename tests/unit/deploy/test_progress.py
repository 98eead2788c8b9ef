"""Waits that follow progress (serve_app.deploy.progress), on scripted snapshots and a
fake clock: no Ray, no sleeping."""

from __future__ import annotations

import enum
from types import SimpleNamespace
from typing import Any

import pytest

from serve_app.deploy import progress
from serve_app.deploy.progress import AppView, DeploymentView

SCHEDULING = (
    "Deployment 'ModelDeployment' in application 'minilm' has 1 replicas that have taken "
    "more than 30s to be scheduled. Resources required for each replica: {'CPU': 1.0}"
)


def app(status: str, message: str = "", **replicas: int) -> AppView:
    return AppView(status, message, {"ModelDeployment": DeploymentView(status, "", replicas)})


class Script:
    """Returns the scripted snapshots in turn (the last one forever); a fake clock that
    advances only when the wait sleeps."""

    def __init__(self, *snapshots: dict[str, AppView]) -> None:
        self.snapshots = list(snapshots)
        self.now = 0.0
        self.polls = 0

    def poll(self) -> dict[str, AppView]:
        self.polls += 1
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def wait(script: Script, names: list[str], **kwargs: Any) -> progress.Snapshot:
    return progress.wait_apps(
        script.poll, names, interval_s=1.0, clock=script.clock, sleep=script.sleep, **kwargs
    )


def test_a_slow_deploy_that_keeps_moving_is_waited_for() -> None:
    # 300 s in all, longer than the 100 s stall window, but a replica moves every 60 s.
    steps = [
        {"m": app("DEPLOYING", STARTING=3)},
        {"m": app("DEPLOYING", STARTING=2, RUNNING=1)},
        {"m": app("DEPLOYING", STARTING=1, RUNNING=2)},
        {"m": app("DEPLOYING", RUNNING=3)},
        {"m": app("RUNNING", RUNNING=3)},
    ]
    script = Script(*[s for s in steps for _ in range(60)])
    seen: list[str] = []
    done = wait(
        script, ["m"], stall_s=100, on_progress=lambda s: seen.append(progress.summary(s, ["m"]))
    )
    assert done["m"].status == "RUNNING"
    assert script.now == 240.0
    assert seen == [
        "m DEPLOYING (ModelDeployment: STARTING 3)",
        "m DEPLOYING (ModelDeployment: RUNNING 1, STARTING 2)",
        "m DEPLOYING (ModelDeployment: RUNNING 2, STARTING 1)",
        "m DEPLOYING (ModelDeployment: RUNNING 3)",
        "m RUNNING",
    ]


def test_a_stall_fails_naming_what_was_starting_and_why() -> None:
    stuck = {
        "minilm": AppView(
            "DEPLOYING",
            "",
            {"ModelDeployment": DeploymentView("UPDATING", SCHEDULING, {"STARTING": 1})},
        ),
        "oip": app("RUNNING", RUNNING=1),
    }
    script = Script({"minilm": app("DEPLOYING", STARTING=2)}, stuck)
    with pytest.raises(progress.DeployStalled) as info:
        wait(script, ["oip", "minilm"], stall_s=30)
    message = str(info.value)
    assert message.startswith(
        "applications ['oip', 'minilm'] to be ['RUNNING']: "
        "no progress for 30 s (waited 31 s in all)"
    )
    assert message.endswith(
        "still pending:\nminilm: DEPLOYING [ModelDeployment UPDATING; replicas: STARTING 1; "
        + SCHEDULING
        + "]"
    )
    assert isinstance(info.value, TimeoutError)


def test_a_failed_app_fails_at_once_with_serves_reason() -> None:
    failed = AppView(
        "DEPLOY_FAILED",
        "",
        {"ModelDeployment": DeploymentView("DEPLOY_FAILED", "sha256 mismatch for /m/1/w", {})},
    )
    script = Script({"m": app("DEPLOYING", STARTING=1)}, {"m": failed})
    with pytest.raises(progress.DeployFailed) as info:
        wait(script, ["m"], stall_s=1000)
    assert str(info.value) == "application 'm' DEPLOY_FAILED: sha256 mismatch for /m/1/w"
    assert script.polls == 2


def test_an_app_expected_to_fail_is_waited_for_until_it_does() -> None:
    script = Script(
        {"bad": app("DEPLOYING", STARTING=1), "ok": app("RUNNING", RUNNING=1)},
        {"bad": app("DEPLOY_FAILED"), "ok": app("RUNNING", RUNNING=1)},
    )
    done = wait(script, ["ok", "bad"], stall_s=10, states={"bad": "DEPLOY_FAILED"})
    assert done["bad"].status == "DEPLOY_FAILED"
    # ...but an app that must run still fails the wait when it breaks.
    script = Script({"bad": app("DEPLOYING"), "ok": app("UNHEALTHY", "replica died")})
    with pytest.raises(progress.DeployFailed, match="application 'ok' UNHEALTHY: replica died"):
        wait(script, ["ok", "bad"], stall_s=10, states={"bad": "DEPLOY_FAILED"})


def test_an_app_serve_does_not_list_yet_is_pending_not_failed() -> None:
    script = Script({}, {}, {"m": app("RUNNING", RUNNING=1)})
    assert wait(script, ["m"], stall_s=10)["m"].status == "RUNNING"
    with pytest.raises(progress.DeployStalled, match="still pending:\nm: NOT_DEPLOYED$"):
        wait(Script({}), ["m"], stall_s=5)


def test_the_overall_cap_ends_a_wait_that_still_moves() -> None:
    counter = iter(range(10**6))
    with pytest.raises(progress.DeployStalled, match="not met after 20 s although still moving"):
        progress.follow(
            lambda: next(counter),
            done=lambda n: False,
            key=lambda n: n,
            stall_s=5,
            timeout_s=20,
            interval_s=1.0,
            clock=(clock := Script({})).clock,
            sleep=clock.sleep,
        )


class ReplicaState(enum.Enum):
    """Like Serve's enum of the same name: ``serve.status()`` keys replica counts by it."""

    RUNNING = "RUNNING"
    STARTING = "STARTING"


def test_snapshots_from_the_rest_api_and_from_serve_status_agree() -> None:
    rest = {
        "applications": {
            "m": {
                "status": "DEPLOYING",
                "message": "",
                "deployments": {
                    "ModelDeployment": {
                        "status": "UPDATING",
                        "message": SCHEDULING,
                        "replicas": [
                            {"state": "RUNNING"},
                            {"state": "STARTING"},
                            {"state": "RUNNING"},
                        ],
                    }
                },
            }
        }
    }
    status = {
        "m": SimpleNamespace(
            status=SimpleNamespace(value="DEPLOYING"),
            message="",
            deployments={
                "ModelDeployment": SimpleNamespace(
                    status=SimpleNamespace(value="UPDATING"),
                    message=SCHEDULING,
                    replica_states={ReplicaState.RUNNING: 2, ReplicaState.STARTING: 1},
                )
            },
        )
    }
    expected = {
        "m": AppView(
            "DEPLOYING",
            "",
            {
                "ModelDeployment": DeploymentView(
                    "UPDATING", SCHEDULING, {"RUNNING": 2, "STARTING": 1}
                )
            },
        )
    }
    assert progress.from_rest(rest) == expected
    assert progress.from_serve_status(status) == expected
    assert expected["m"].deployments["ModelDeployment"].replicas("RUNNING") == 2
    assert expected["m"].deployments["ModelDeployment"].replicas("STOPPING") == 0


def test_messages_alone_are_not_progress() -> None:
    a = {"m": app("DEPLOYING", "taken more than 30s", STARTING=1)}
    b = {"m": app("DEPLOYING", "taken more than 60s", STARTING=1)}
    c = {"m": app("DEPLOYING", "taken more than 60s", STARTING=1, RUNNING=1)}
    assert progress.progress_key(a, ["m"]) == progress.progress_key(b, ["m"])
    assert progress.progress_key(b, ["m"]) != progress.progress_key(c, ["m"])


def test_status_messages_are_cut_to_the_error() -> None:
    raw = (
        "A replica failed to start with exception. Retrying. Error:\n\x1b[36mray::ServeReplica:"
        'fragile:ModelDeployment.initialize_and_get_metadata()\x1b[39m (pid=2595)\n  File "x",'
        ' line 1\nRuntimeError: Traceback (most recent call last):\n  File "y", line 2\n'
        "serve_app.errors.IntegrityError: sha256 mismatch for /m/fragile/1/model.safetensors\n"
    )
    assert progress.concise(raw) == (
        "A replica failed to start with exception. Retrying. "
        "serve_app.errors.IntegrityError: sha256 mismatch for /m/fragile/1/model.safetensors"
    )
    assert progress.concise("The deployments are UNHEALTHY.") == "The deployments are UNHEALTHY."


def test_unscheduled_replicas_are_named_with_what_they_need() -> None:
    # The message as Ray 2.60's DeploymentState writes it (deployment_state.py, "to be
    # scheduled"), with a terminal colour code as serve.status() may carry it.
    message = (
        "\x1b[33mDeployment 'ModelDeployment' in application 'minilm.v2' has 2 replicas that "
        "have taken more than 5s to be scheduled. This may be due to waiting for the cluster "
        "to auto-scale or for a runtime environment to be installed. Resources required for "
        'each replica: {"CPU": 1.0}, total resources available: {"CPU": 0.0}. Use `ray '
        "status` for more details.\x1b[0m"
    )
    snapshot = {
        "minilm.v2": AppView(
            "DEPLOYING", "", {"ModelDeployment": DeploymentView("UPDATING", message, {})}
        ),
        "minilm": app("RUNNING", RUNNING=2),
    }
    assert progress.unscheduled(snapshot, ["minilm", "minilm.v2", "absent"]) == [
        'minilm.v2/ModelDeployment: 2 replicas unscheduled for 5+ s: each needs {"CPU": 1.0}; '
        'available {"CPU": 0.0}'
    ]
    # A replica slow to initialise (placed, loading) is not waiting for resources.
    slow = SCHEDULING.replace("to be scheduled", "to initialize")
    snapshot["minilm.v2"].deployments["ModelDeployment"] = DeploymentView("UPDATING", slow, {})
    assert progress.unscheduled(snapshot, ["minilm.v2"]) == []
