"""Shared by the benchmarks, experiments and integration tests: ``serve-app demo`` in
its own process, started and stopped as a user would (``demo_process``), and free
ports, waits and the facts about the machine (``machine``)."""
