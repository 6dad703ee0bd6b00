"""The Kubernetes seam: API client, informers, events. Policy above it sees plain dicts."""
