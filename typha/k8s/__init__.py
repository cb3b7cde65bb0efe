"""Kubernetes datastore support: resource table, key layout and object -> key/value projection."""
