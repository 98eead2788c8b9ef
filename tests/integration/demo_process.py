"""``serve-app demo`` in its own process, as a user starts it (re-exported from
``loadtest.demo_process``, which the benchmarks share): ``demo_process`` waits for
"serve_app is up", yields the running demo, and on exit sends Ctrl-C and checks that no
process of its tree is left."""

from loadtest.demo_process import (  # noqa: F401  (re-exported)
    REPO_ROOT,
    START_TIMEOUT_S,
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

    from loadtest.sampler import http_get, read_token

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
