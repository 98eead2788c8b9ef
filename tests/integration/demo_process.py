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
