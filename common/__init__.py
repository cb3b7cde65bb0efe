"""Process plumbing shared by typha and felix: settings, start-up, ops endpoints, typha discovery.

Nothing here knows the wire format; `protocol` (the wire format, the key schema and the client
library) never imports this package, so a stranger writing a compatible peer need not read it.

- `settings`: one declaration per setting gives the CLI flag, the environment variable and the check.
- `runtime`: one start-up path (settings errors as one line, logging, uvloop, Kubernetes client).
- `ops`: the aiohttp site serving /metrics (and the programs' health apps).
- `endpoints`: typha replicas from the EndpointSlices of its Service (typha counts them, felix dials them).
"""
