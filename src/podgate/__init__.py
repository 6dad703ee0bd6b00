"""podgate: pod readiness gates that open only when the load balancer says the pod is healthy."""

__version__ = "0.1.0"
