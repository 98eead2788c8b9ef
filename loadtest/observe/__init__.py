"""What is watched while load runs and what is drawn from it afterwards: the cluster
sampler (replicas, nodes, Serve's status), memory and descriptors of process trees, and
the numbers of a run (throughput, latency percentiles, errors, scaling events)."""
