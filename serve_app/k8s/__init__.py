"""Kubernetes (KubeRay) side of serve_app.

- ``render`` / ``cli_render``: the generated parts of the manifests under ``kuberay/``,
  rendered from the cluster AppConfigs (``configs/cluster-*.yaml``) by
  ``serve-app render-k8s``.
- ``client``, ``status``, ``errors``, ``cli``: the RayService client side.
"""
