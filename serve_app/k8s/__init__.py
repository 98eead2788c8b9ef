"""Kubernetes (KubeRay) side of serve_app.

- ``render`` / ``cli_render`` / ``changes``: the generated parts of the manifests under
  ``kuberay/``, rendered from the cluster AppConfigs (``configs/cluster-*.yaml``) by
  ``serve-app render-k8s``, and what a render would change.
- ``client``, ``status``, ``errors``, ``upgrade``, ``cli``: the RayService client side
  (apply, wait, upgrade through the official ``kubernetes`` client).

May import: everything below it (``local`` for the ingress settings, ``deploy``,
``config``, ...). Not ``cli`` (the top-level command line).
"""
