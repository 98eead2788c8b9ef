"""Long runs that look for failures rather than numbers: the soak (``python -m
loadtest.soak.run``: constant load, memory and descriptors per process over time, with
its ``analysis`` and ``report``) and the long OIP fuzz (``python -m loadtest.soak.fuzz_oip``)."""
