"""BGP for felix: a real BIRD configured from typha's ``bgp`` syncer, as Calico's confd does.

`view` (the syncer's state, pure) -> `render` (this node's BIRD 2 configuration, pure) -> `bird` (the
thin shell that writes, validates, applies and supervises BIRD) ; `birdctl` speaks BIRD's control
socket and reads session states; `agent` joins them behind a second `protocol.client.SyncClient`.
See docs/bgp.md.
"""
