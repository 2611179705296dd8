"""Building the official Kubernetes client: in-cluster config first, then the kubeconfig (`KUBECONFIG`).

Also resolves the namespace the way upstream does: the flag, else the `NAMESPACE` environment variable,
else `default`.
"""

from __future__ import annotations

import os
from typing import Any, cast

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from epp.errors import SettingsError

__all__ = ["load_api_client", "resolve_namespace"]


def load_api_client(pool_size: int = 8) -> client.ApiClient:
    """An ApiClient for the cluster this process runs in (or the current kubeconfig context).

    `pool_size` bounds the HTTP connections; each running watch holds one.
    """
    cfg = client.Configuration()
    loader = cast(Any, config)  # the kubernetes package has no type hints
    try:
        loader.load_incluster_config(client_configuration=cfg)
    except ConfigException as in_cluster:
        try:
            loader.load_kube_config(client_configuration=cfg)
        except (ConfigException, OSError) as kubeconfig:
            raise SettingsError(
                "no Kubernetes credentials: not in a cluster "
                f"({in_cluster}) and no usable kubeconfig ({kubeconfig}); pass --kubeconfig, "
                "or --static-endpoints to run without Kubernetes"
            ) from None
    cfg.connection_pool_maxsize = max(pool_size, cfg.connection_pool_maxsize or 0)
    return client.ApiClient(cfg)


def resolve_namespace(flag: str | None) -> str:
    return flag or os.environ.get("NAMESPACE") or "default"
