"""The mutating admission webhook that injects readiness gates into new pods."""
