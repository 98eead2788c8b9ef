"""Node-level autoscaling on one machine: a private fake multi-node cluster driven by
Ray's real autoscaler (see ``loadtest/nodes/experiment.py``, the entry point)."""
