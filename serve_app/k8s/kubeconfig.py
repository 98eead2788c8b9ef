"""Where the RayService client finds its cluster: the kubeconfig (a file and context)
or the in-cluster service account, loaded on first use, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.k8s.errors import KubeConfigError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def load_api_client(kubeconfig: str | None, context: str | None) -> ApiClient:
    """An ``ApiClient`` from the kubeconfig, else from the in-cluster service account.

    The global default ``Configuration`` is left alone, so several clients can talk to
    different clusters in one process.
    """
    from kubernetes import client, config

    try:
        return config.new_client_from_config(
            config_file=kubeconfig, context=context, persist_config=False
        )
    except (config.ConfigException, OSError) as e:
        if kubeconfig is not None or context is not None:
            where = kubeconfig or "(default: $KUBECONFIG or ~/.kube/config)"
            raise KubeConfigError(f"cannot load kubeconfig {where}: {e}") from e
        kube_error = e
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException as e:
        raise KubeConfigError(
            f"no Kubernetes configuration: kubeconfig: {kube_error}; in-cluster: {e}"
        ) from e
    return client.ApiClient(cfg)


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The context's namespace, else the service account's, else ``default``."""
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(kubeconfig)
    except (config.ConfigException, OSError):
        try:
            with open(_SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
                return f.read().strip() or "default"
        except OSError:
            return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")
