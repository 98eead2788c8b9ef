"""Inference jobs taken from a queue: the message a producer puts on the broker
(``message``), the job records clients poll (``store``, Redis), and the broker side
(``broker``: URLs from the environment, queue names, publishing, queue depth).

No Ray here: the Serve consumers, the submit path and the autoscaling policy that use
these live in ``serve_app.server``.

May import: only the top-level ``errors``, ``constants``, ``schema_base``.
"""
