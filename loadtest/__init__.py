"""Load tests, benchmarks and scripted experiments against serve_app.

Grouped by role (docs/load-tests.md has the commands):

- ``cli`` and ``run``: ``serve-app loadtest run|sweep|report``, a load run end to end.
- ``traffic/``: what is sent: open-loop profiles and generator, closed-loop HTTP load,
  request bodies, the generator's own ceiling, the Locust file.
- ``observe/``: what is watched while it runs (the cluster sampler, process trees) and
  the numbers drawn from a run's files.
- ``reports/``: the printed and Markdown reports of runs and benchmarks.
- ``bench/``: benchmarks, each ``python -m loadtest.bench.<name>``, results committed
  under ``loadtest/results/``.
- ``soak/``: long runs that look for failures rather than numbers (the soak, the long
  OIP fuzz).
- ``nodes/``: the node-autoscaling experiment (``python -m loadtest.nodes.experiment``).
- ``harness/``: what the others share: ``serve-app demo`` in its own process, ports,
  waits and the machine's facts.
"""
