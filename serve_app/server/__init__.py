"""Ray Serve deployments and the thin HTTP and gRPC layer over them.

- ``model_deployment`` (one model, batched), ``multiplexed`` (a family of tenants),
  ``pipeline_deployment`` (the router of a graph), ``oip_server`` (the server routes:
  health, list, forwarding) and their parts: ``runtime``, ``batching``, ``memory``,
  ``canary``, ``tenant_runtime``, ``tenant_forward``.
- ``http``, ``routes``, ``serve_errors``: the one error-to-status mapping and the OIP
  routes; ``grpc_methods`` / ``grpc_server_methods``: the gRPC servicer methods.
- ``metrics``, ``controller_view``, ``node_status``: what replicas report and read.

May import: ``deploy`` (application arguments, status helpers), ``config`` and
everything below. Not ``app``, ``local``, ``k8s`` or ``cli``.
"""
