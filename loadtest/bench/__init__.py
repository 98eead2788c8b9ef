"""Benchmarks, run as ``python -m loadtest.bench.<name>``: each measures against a
baseline in the same run and writes its results (machine and date included) under
``loadtest/results/``. ``serving`` (levers of the serving path), ``graph`` (per-hop
cost), ``grpc``, ``peers`` (ONNX Runtime, PyTriton, ...), ``multiplex``,
``autoscaling``, ``profile_serving`` (where the CPU goes), ``ab_env`` (one Ray
setting A/B), ``raw_model`` (the in-process baseline)."""
