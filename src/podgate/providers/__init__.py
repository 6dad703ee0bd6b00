"""Load-balancer providers, each behind the one :class:`~podgate.providers.base.TargetPool` seam,
with the capabilities only some have (group binding, provisioning) beside it."""
