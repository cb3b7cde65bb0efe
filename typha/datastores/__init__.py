"""Datastores: where typha's state comes from. Each reports object events to an `Ingestor`."""
