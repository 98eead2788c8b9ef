"""Wire protocols. ``oip``: Open Inference Protocol (KServe v2) REST."""
