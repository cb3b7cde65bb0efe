"""A Kubernetes API-server emulator for load-testing Typha/Felix (see docs/apiserver.md).

Public entry points::

    handle = await start_apiserver(token="t", window_size=1000, bookmark_interval=1.0)
    handle.write_kubeconfig("/tmp/kubeconfig")      # for the unmodified kubernetes-asyncio
    handle.store.bulk_load("pods", make_pods(...))  # in-process writes emit watch events
    handle.stats.snapshot()                          # counters (also GET /emulator/stats)
    await handle.stop()
"""

from .errors import ApiError
from .fixtures import make_calico_object, make_namespace, make_node, make_pod
from .kubeconfig import TLSMaterial, kubeconfig_text, make_tls, write_kubeconfig
from .resources import CALICO_GROUP, DEFAULT_RESOURCES, ResourceRegistry, ResourceType
from .server import ApiServerHandle, ServerConfig, start_apiserver
from .state import Backup
from .stats import ResourceStats, Stats
from .store import Event, ListResult, Store, StoredObject, Watcher

__all__ = [
    "CALICO_GROUP",
    "DEFAULT_RESOURCES",
    "ApiError",
    "ApiServerHandle",
    "Backup",
    "Event",
    "ListResult",
    "ResourceRegistry",
    "ResourceStats",
    "ResourceType",
    "ServerConfig",
    "Stats",
    "Store",
    "StoredObject",
    "TLSMaterial",
    "Watcher",
    "kubeconfig_text",
    "make_calico_object",
    "make_namespace",
    "make_node",
    "make_pod",
    "make_tls",
    "start_apiserver",
    "write_kubeconfig",
]
