"""The real node (``podgate sandbox up --node kubelet``): containerd, runc, a CNI bridge, the
kubelet and kube-proxy, fenced in by an egress guard and undone exactly by ``down``.

``render`` and ``oci`` are pure (configuration text, firewall bookkeeping, image archives) and
table-tested; ``host`` and ``images`` are the imperative shell that applies them to the machine;
``binder`` binds pods to the node, since the sandbox runs no scheduler.
"""
