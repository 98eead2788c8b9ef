"""Reports: ``serve-app loadtest report`` of a load run (``load``), and the derived
numbers and Markdown of the graph and multiplexing benchmarks."""
