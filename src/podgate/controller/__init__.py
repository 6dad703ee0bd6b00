"""The controller: informers → work queue keyed by Service → level-triggered reconcile."""
