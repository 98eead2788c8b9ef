"""``serve-app demo`` in its own process, as a user starts it (re-exported from
``loadtest.harness.demo_process``, which the benchmarks share): ``demo_process`` waits for
"serve_app is up", yields the running demo, and on exit sends Ctrl-C and checks that no
process of its tree is left."""

from loadtest.harness.demo_process import (  # noqa: F401  (re-exported)
    REPO_ROOT,
    START_STALL_S,
    Demo,
    demo_process,
    descendants,
    running,
    user_environment,
)


def serve_diagnosis(demo: Demo, dashboard_url: str, app: str) -> str:
    """What to look at when a test's replicas did not do what it expected: the app's
    deployments as Serve reports them (status, message, each replica's state and age)
    and the demo's last output lines. Never raises: it goes into a failure message."""
    import json
    import time

    from loadtest.observe.sampler import http_get, read_token

    url = f"{dashboard_url}/api/serve/applications/"
    try:
        deployments = json.loads(http_get(url, read_token(), timeout_s=10))["applications"][app][
            "deployments"
        ]
        state: object = {
            name: {
                "status": d["status"],
                "message": d["message"][:300],
                "replicas (state, age s)": [
                    (r["state"], round(time.time() - r["start_time_s"], 1)) for r in d["replicas"]
                ],
            }
            for name, d in deployments.items()
        }
    except Exception as e:  # noqa: BLE001 - a diagnosis must not hide the failure
        state = {"error": repr(e)}
    return f"Serve reports: {state}\ndemo output:\n" + "".join(demo.lines[-30:])


REPLICA_STALL_S = 120.0
"""How long a demo's replicas may show no state change before a wait on them fails."""


def wait_for_replicas(
    demo: Demo, dashboard_url: str, app: str, replicas: int, stall_s: float = REPLICA_STALL_S
) -> None:
    """Wait until the demo's application ``app`` has ``replicas`` RUNNING replicas (in
    its deployments), as long as its replicas keep changing state (a replacement
    being scheduled, starting, ...); on a stall, fail with Serve's view and the demo's
    last output."""
    import json

    from loadtest.observe.sampler import http_get, read_token
    from serve_app.deploy import progress

    token = read_token()

    def snapshot() -> progress.Snapshot:
        body = json.loads(http_get(f"{dashboard_url}/api/serve/applications/", token, 10))
        return progress.from_rest(body)

    def running_now(s: progress.Snapshot) -> int:
        return sum(d.replicas("RUNNING") for d in s[app].deployments.values()) if app in s else 0

    try:
        progress.follow(
            snapshot,
            done=lambda s: running_now(s) == replicas,
            key=lambda s: progress.progress_key(s, [app]),
            stall_s=stall_s,
            describe=lambda s: progress.describe(s, [app], only_unfinished=False),
            what=f"{replicas} RUNNING replicas of {app}",
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}\ndemo output:\n" + "".join(demo.lines[-30:])) from e
