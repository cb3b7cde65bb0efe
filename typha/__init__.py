"""typha: the fan-out cache between a datastore and thousands of node agents.

ONE watch per resource type upstream, objects turned into small key/value updates, duplicates dropped,
and a snapshot then deltas streamed to every agent. The flow, left to right:

- `datastores` report object events: `kubernetes` (list + watch the API server) or `synthetic` (an
  embedded generated cluster, `simcluster`);
- `ingest` projects each object into keys and values (`k8s`: the resource table, the projection and
  its parts; keys come from the stream's key schema, `protocol.keys`) and feeds the caches;
- `snapcache` holds each syncer's state and its chain of pre-encoded breadcrumbs (pure);
- `syncserver` fans the breadcrumbs out to agents (knows nothing of datastores);
- `rebalance`, `ops` (health, status), `metrics`, `config` and `__main__` are the process around them.

typha depends only on `protocol` and `common`, never on felix (tests/test_layering.py).
"""
