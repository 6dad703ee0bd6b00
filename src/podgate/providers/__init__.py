"""Load-balancer providers, each behind the one :class:`~podgate.providers.base.Provider` seam."""
