"""Deploying: from an ``AppConfig`` to running Serve applications, and following them.

- ``serve_config`` / ``render``: the Serve config file (``configs/local.yaml``) and the
  RayService ``serveConfigV2`` built from an ``AppConfig``; ``app_args``: the arguments
  each application's builder (``serve_app.app``) receives, the contract between the two.
- ``versions`` / ``version_policy``: which repository version each model serves
  (pinning, ``latest`` with a policy, canaries).
- ``rollout``: ``serve-app deploy``, a new config or version applied to a running
  cluster through the dashboard's REST API, then waited on.
- ``pipeline_check``: a pipeline's datatypes and shapes checked against the models'
  published tensor specs before anything is deployed.
- ``progress``: what Serve reports about applications, reduced to plain values, and a
  wait that follows progress (replica states moving) instead of the clock. It imports
  nothing of ``serve_app`` and no Ray at import time, so every layer may use it.

May import: ``config`` and everything below it (``graph``, ``models``, ``repository``,
``protocol``, the top-level ``errors``, ``constants``, ``schema_base``). Not ``server``,
``local``, ``k8s`` or ``cli``.
"""
