"""A deterministic synthetic Kubernetes + Calico cluster: listed like an API server, churned like a real one.

Used by typha's synthetic datastore (`typha.datastores.synthetic`), the load tests and the test suite.
`SyntheticCluster` is the entry point; see `typha.simcluster.cluster` for the design.
"""

from .churn import CHURN_OPS, DEFAULT_MIX
from .cluster import SyntheticCluster
from .records import PoolExhausted
from .render import Event, Obj

__all__ = ["CHURN_OPS", "DEFAULT_MIX", "Event", "Obj", "PoolExhausted", "SyntheticCluster"]
