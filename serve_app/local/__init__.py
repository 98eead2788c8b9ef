"""Running on one machine: a local Ray cluster with Serve, and the demo.

- ``cluster``: start, reuse and stop a local Ray with its token, wait for applications.
- ``ingress``: the HAProxy ingress settings (also rendered into the cluster manifests).
- ``demo``, ``demo_heads``, ``demo_tenants`` and ``demo_data/``: ``serve-app demo``,
  publishing the demo's models (MiniLM, the trained heads, tenants) into a local
  repository and serving the demo graph.

May import: ``server``, ``deploy``, ``config`` and everything below. Not ``k8s`` or
``cli``.
"""
