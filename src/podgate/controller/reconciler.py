"""Reconcile one Service: its load-balancer pools, their targets, and its pods' gates.

Level-triggered: it reads only the informer caches (desired state) and the load balancer
(actual state), so running it again, or after a restart, converges to the same place.  It
writes a gate condition only when it changes, and never True because something failed.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from podgate.controller.gatewriter import GateWriter
from podgate.kube.api import SERVICES, Kube, PatchType
from podgate.kube.events import EventRecorder
from podgate.kube.informer import Informer
from podgate.model import addresses, gates, lb
from podgate.model import conditions as cond
from podgate.model.ownership import GROUP_NOT_OWNED
from podgate.model.policy import FLOOR_UNREACHABLE, TIMED_OUT, GatePolicy, floor_unreachable, with_timeout
from podgate.model.types import (
    Condition,
    Namespace,
    PodView,
    Service,
    ingress,
    is_terminating,
    labels,
    meta_of,
    pod_conditions,
    pod_ip,
    pod_spec,
    selector_of,
)
from podgate.providers.base import NotOwned, Provider, ProviderError, TargetState
from podgate.providers.reads import PoolReads
from podgate.resolutions import ServiceResolutions

log = logging.getLogger(__name__)


GATE_INDEX = "gate"
LABEL_INDEX = "label"
IP_INDEX = "ip"


def _label_keys(pod: PodView) -> list[str]:
    ns = meta_of(pod).get("namespace")
    return [f"{ns}/{k}={v}" for k, v in labels(pod).items()]


def _ip_keys(pod: PodView) -> list[str]:
    ip = pod_ip(pod)
    return [f"{meta_of(pod).get('namespace')}/{ip}"] if ip else []


#: pending gates of a Service whose load balancer tells its health changes as they happen
#: (``Provider.changes``) are still read this often: a safety net for a change missed while
#: reconnecting, and what makes a readiness timeout fall due (at most this late)
HEARD_POLL = 1.0


@dataclass
class Outcome:
    """What one reconcile leaves behind: whether to look again soon."""

    poll: bool = False
    #: the provider's own least interval between health reads (a cloud API is metered)
    interval: float = 0.0
    #: targets are draining (their connections are not told as they end: polled as before)
    drains: bool = False


class ServiceReconciler:
    def __init__(
        self,
        kube: Kube,
        pods: Informer[PodView],
        services: Informer[Service],
        namespaces: Informer[Namespace],
        resolutions: ServiceResolutions,
        recorder: EventRecorder,
        gate_writer: GateWriter,
        *,
        migration_labels: bool = False,
        lb_cidr: str | None = None,
        adopted_prefixes: Sequence[str] = (),
        reads: PoolReads | None = None,
        on_write_failed: Callable[[str], None] = lambda key: None,
        fence: Callable[[], object] = lambda: None,
    ) -> None:
        """``reads``: the controller's shared pool reads (see :mod:`podgate.providers.reads`): a
        reconcile run by a pod's event within a poll interval of the last read reuses it, so a
        group costs one health read per poll however many of its pods change.
        ``on_write_failed(key)``: a gate write of the Service failed (the controller queues it
        again, rate-limited); ``fence()`` raises when this replica may not write (its leader
        lease is not fresh), asked before every pass and every change to a load balancer."""
        self.kube = kube
        self.pods, self.services, self.namespaces = pods, services, namespaces
        self.resolutions = resolutions
        self.providers = resolutions.providers
        self.migration_labels = migration_labels
        self.recorder = recorder
        self.net = addresses.loopback_network(lb_cidr) if lb_cidr else None
        #: the controller-wide policy, for gates of a Service podgate cannot read
        self.policy = resolutions.settings.policy
        #: other controllers' gate prefixes podgate manages as its own (migration)
        self.adopted_prefixes = tuple(adopted_prefixes)
        self._addresses: dict[str, str] | None = None
        #: False once the API server dropped ``ipMode`` from a status podgate wrote (then only
        #: the address is compared: no write on every pass)
        self._ip_mode_kept = True
        self._missing_gate_counts: dict[str, int] = {}
        #: the MinHealthyTargetsUnreachable Warning last sent per Service (sent once per change)
        self._floor_reported: dict[str, str] = {}
        #: when podgate first saw each target draining, by (Service key, port): removal waits for
        #: the pool's drain delay.  A target's entry goes when it leaves the pool, a Service's
        #: when its load balancer is released (see :meth:`_forget_service`)
        self._draining_since: dict[tuple[str, int], dict[lb.Target, float]] = {}
        self.gates = gate_writer
        self.reads = reads if reads is not None else PoolReads()
        self.on_write_failed = on_write_failed
        self.fence = fence
        #: Services queued again for a failed write since their last pass began
        self._requeued: set[str] = set()
        #: Services whose load balancer could not be read, since when (wall clock, for messages)
        self.unreadable_since: dict[str, float] = {}
        # A reconcile reads only its Service's pods, through these (and never scans the cache):
        # by the Service each readiness gate is for, by label (a selector is the intersection
        # of its pairs), by IP (the pods behind a pool's present targets).
        pods.add_index(GATE_INDEX, self._gate_keys)
        pods.add_index(LABEL_INDEX, _label_keys)
        pods.add_index(IP_INDEX, _ip_keys)

    # -- helpers ------------------------------------------------------------------------------
    def selected(self, namespace: str, selector: Mapping[str, str] | None) -> list[PodView]:
        """The pods of the namespace a Service's selector matches (an empty one: none)."""
        if not selector:
            return []
        sets = sorted(
            (self.pods.keys_by_index(LABEL_INDEX, f"{namespace}/{k}={v}") for k, v in selector.items()),
            key=len,
        )
        keys = set.intersection(*sets)
        return [p for k in sorted(keys) if (p := self.pods.get(k)) is not None]

    def gated_pods(self, key: str) -> list[PodView]:
        """The pods carrying a gate for this Service (podgate's or an adopted vendor's)."""
        return self.pods.by_index(GATE_INDEX, key)

    def _gate_keys(self, pod: PodView) -> list[str]:
        ns = meta_of(pod).get("namespace")
        out = []
        for g in cond.readiness_gates(pod_spec(pod)):
            svc = gates.service_of_gate(g, self.adopted_prefixes)
            if svc:
                out.append(f"{ns}/{svc}")
        return out

    def injection_enabled(self, namespace: str) -> bool:
        ns = self.namespaces.get(namespace)
        return ns is not None and gates.opted_in(labels(ns), self.migration_labels)

    def address_for(self, key: str, service: Service) -> str | None:
        """The Service's load-balancer address: kept from its status, else the next free one."""
        if self.net is None:
            return None
        if self._addresses is None:
            self._addresses = {}
            for k, s in self.services.cache.items():
                ip = _ingress_ip(s)
                if ip and addresses.contains(self.net, ip):
                    self._addresses[k] = ip
        if key not in self._addresses:
            current = _ingress_ip(service)
            if current and addresses.contains(self.net, current) and current not in self._addresses.values():
                self._addresses[key] = current
            else:
                self._addresses[key] = addresses.allocate(self.net, self._addresses.values())
        return self._addresses[key]

    # -- reconcile ----------------------------------------------------------------------------
    async def reconcile(self, key: str) -> Outcome:
        self.fence()
        self._requeued.discard(key)
        namespace, name = key.split("/", 1)
        gate = gates.service_gate(name)
        service = self.services.get(key)
        gated = [p for p in self.gated_pods(key) if not is_terminating(p)]
        out = Outcome()
        if service is None:
            await self._release(key)
            missing = lb.failure_condition(
                gate, lb.SERVICE_NOT_FOUND, f"Service {namespace}/{name} does not exist"
            )
            for pod in gated:
                self.set_gate(pod, missing)
            return out
        deleting = is_terminating(service)
        resolution = self.resolutions.of(service)
        if resolution.error is not None:
            # a bad annotation, or a group not granted to the namespace: the load balancer is
            # not touched (a refused group keeps every target it has, podgate's own included)
            granted = resolution.error_reason != lb.GROUP_NOT_GRANTED
            reason = "InvalidConfiguration" if granted else lb.GROUP_NOT_GRANTED
            self.recorder_emit(service, "Service", reason, resolution.error, "Warning")
            if deleting:  # podgate cannot (or may not) clean up: never hold a deletion forever
                await self._set_finalizer(service, False)
            invalid = lb.failure_condition(gate, resolution.error_reason, resolution.error)
            for pod in gated:
                self.set_gate(pod, invalid)
            return out
        provider_name, policy, pools = resolution.provider, resolution.policy, list(resolution.pools)
        if provider_name is None or deleting:
            await self._let_go(key, service, self.providers[provider_name] if provider_name else None, pools)
            why = lb.failure_condition(
                gate,
                lb.SERVICE_NOT_FOUND if deleting else lb.NOT_LOAD_BALANCED,
                f"Service {namespace}/{name} is being deleted"
                if deleting
                else f"Service {namespace}/{name} is not load-balanced by podgate "
                f"(type {(service.get('spec') or {}).get('type')}, "
                f"class {(service.get('spec') or {}).get('loadBalancerClass') or 'none'}, "
                f"no {gates.PROVIDER_ANNOTATION} annotation)",
            )
            for pod in gated:
                # a vendor's gate (adopted prefix) on a Service podgate does not serve is that
                # vendor's to write; podgate answers only for its own gate type
                types = None if deleting else [t for t in self._gate_types_on(pod, name) if t == gate]
                if types != []:
                    self.set_gate(pod, why, policy=policy, types=types)
            return out
        provider = self.providers[provider_name]
        out.interval = provider.pool.poll_interval
        try:
            await self._reconcile_pools(key, service, provider, pools, gated, gate, policy, out)
        except NotOwned as e:
            self._not_owned(service, gate, gated, policy, e)
            raise  # retried with back-off: only an administrator's tag changes the answer
        except ProviderError as e:
            self._unreadable(key, service, gate, gated, policy, e)
            raise
        self.unreadable_since.pop(key, None)
        await self._report_pods_without_gate(key, service, gate)
        heard = provider.changes is not None and provider.changes.live
        if heard and out.poll and not out.drains and not policy.continuous:
            # only health is awaited, and the load balancer says when it changes (a pass then)
            out.interval = max(out.interval, HEARD_POLL)
        return out

    def _not_owned(
        self, service: Service, gate: str, gated: list[PodView], policy: GatePolicy, error: NotOwned
    ) -> None:
        """A group refused for its ownership tags: a Warning naming it, and closed gates say why.
        The group is untouched, so an open gate stays open (its pod is still in the group)."""
        self.recorder_emit(service, "Service", GROUP_NOT_OWNED, str(error), "Warning")
        refused = lb.failure_condition(gate, GROUP_NOT_OWNED, str(error))
        name = service["metadata"]["name"]
        for pod in gated:
            if not self._gates_open(pod, name):
                self.set_gate(pod, refused, policy=policy)

    def _unreadable(
        self,
        key: str,
        service: Service,
        gate: str,
        gated: list[PodView],
        policy: GatePolicy,
        error: ProviderError,
    ) -> None:
        """The load balancer could not be read or written: unknown is not unhealthy.  An open
        gate stays open (only the load balancer's own verdict closes one: an API error or a
        throttled call must not take every pod out of service); a closed one stays closed and
        says since when podgate cannot read the load balancer.  For as long as it lasts."""
        since = self.unreadable_since.setdefault(key, time.time())
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        self.recorder_emit(
            service,
            "Service",
            "LoadBalancerError",
            f"{error}; podgate cannot read the load balancer since {at}: gates keep their status",
            "Warning",
        )
        failed = lb.failure_condition(
            gate, lb.PROVIDER_ERROR, f"podgate cannot read the load balancer since {at}: {error}"
        )
        name = service["metadata"]["name"]
        for pod in gated:
            if not self._gates_open(pod, name):
                self.set_gate(pod, failed, policy=policy)

    async def _reconcile_pools(
        self,
        key: str,
        service: Service,
        provider: Provider,
        pools: list[lb.PoolSpec],
        gated: list[PodView],
        gate: str,
        policy: GatePolicy,
        out: Outcome,
    ) -> None:
        """The Service's load balancer set up, each pool's targets brought to plan, then every
        gated pod's condition decided from the pools' health."""
        namespace = service["metadata"]["namespace"]
        address = None
        if provider.provisioning is not None:
            address = await provider.provisioning.provision(
                key, pools, self.address_for(key, service) if not any(p.group for p in pools) else None
            )
        if provider.binding is not None:
            await provider.binding.bind(key, pools)
            # the groups exist and are this Service's: hold it before any pod goes in
            service = await self._set_finalizer(service, True)
        if address:
            await self._publish_address(service, address)
        selector = selector_of(service)
        selected = self.selected(namespace, selector)
        self._report_floor(key, service, policy, len(selected))
        healths: dict[str, list[lb.TargetHealth]] = {}
        for pool in pools:
            plan, present = await self._sync_pool(key, provider, pool, selector, selected)
            if any(st.admin == "drain" for st in present.values()):
                out.poll = out.drains = True  # remove drained targets once their connections end
            for target, pod_key in plan.active.items():
                st = present.get(target)
                healths.setdefault(pod_key, []).append(
                    st.health
                    if st
                    else lb.TargetHealth(lb.Health.UNREGISTERED, f"{target} is being registered")
                )
        self._decide_gates(service, pools, gated, gate, policy, healths, out)

    async def _sync_pool(
        self,
        key: str,
        provider: Provider,
        pool: lb.PoolSpec,
        selector: Mapping[str, str] | None,
        selected: list[PodView],
    ) -> tuple[lb.TargetPlan, Mapping[lb.Target, TargetState]]:
        """Register, drain and remove the pool's targets as the plan says; the plan, and the
        pool as the load balancer has it afterwards."""
        present = await self.reads.read(provider, pool, provider.pool.poll_interval)
        # the pods the plan needs: those selected, and those behind a present target (a pod that
        # left the selector drains rather than vanishes); a pod in both is planned once (most
        # are: planning each twice was a pass's largest cost in a rollout of 100-pod Services)
        chosen = {id(p) for p in selected}
        behind = [
            p
            for ip in {t.ip for t in present}
            for p in self.pods.by_index(IP_INDEX, f"{pool.namespace}/{ip}")
            if id(p) not in chosen
        ]
        plan = lb.plan_targets(pool, selector, [*selected, *behind])
        drained = self._drained(key, pool, present)
        diff = lb.diff_targets(plan, {t: st.admin for t, st in present.items()}, drained)
        if not (diff.add or diff.drain or diff.remove):
            return plan, present
        self.fence()
        failed: ProviderError | None = None
        try:
            if diff.add:
                try:
                    await provider.pool.register(pool, diff.add)
                except ProviderError as e:
                    failed = e  # leaving pods must still leave: report after draining/removing
            if diff.drain:
                await provider.pool.drain(pool, diff.drain)
            if diff.remove:
                await provider.pool.deregister(pool, diff.remove)
                self._forget_targets(key, pool, diff.remove)
        finally:
            self.reads.forget(provider, pool)  # changed (or maybe, on an error): read afresh
        if failed is not None:
            raise failed
        log.info(
            "%s port %d: register %s, drain %s, remove %s",
            key,
            pool.port,
            _targets(diff.add),
            _targets(diff.drain),
            _targets(diff.remove),
        )
        log.debug(
            "%s port %d: plan %s; present %s",
            key,
            pool.port,
            plan,
            {str(t): st.admin for t, st in present.items()},
        )
        return plan, await self.reads.read(provider, pool, provider.pool.poll_interval)

    def _decide_gates(
        self,
        service: Service,
        pools: list[lb.PoolSpec],
        gated: list[PodView],
        gate: str,
        policy: GatePolicy,
        healths: Mapping[str, list[lb.TargetHealth]],
        out: Outcome,
    ) -> None:
        """Each gated pod's condition from its targets' health in every pool."""
        namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
        selector = selector_of(service)
        minimum = pools[0].health.minimum_to_healthy if pools else 0.0
        for pod in gated:
            if not policy.continuous and self._gates_true(pod, name):
                continue  # sticky: a True gate stays True, so nothing to decide, write or poll for
            pod_key = f"{namespace}/{pod['metadata']['name']}"
            mine = healths.get(pod_key)
            if mine is None:
                desired = lb.failure_condition(
                    gate, lb.REASONS[lb.Health.UNREGISTERED], _why_not_target(pod, selector)
                )
            elif len(mine) < len(pools):
                desired = lb.failure_condition(
                    gate,
                    lb.REASONS[lb.Health.UNREGISTERED],
                    "the pod is not a target of every port of the Service yet",
                )
            else:
                desired = lb.gate_condition(gate, mine)
                if desired["status"] != cond.TRUE:
                    out.poll = True
                if all(h.health is not lb.Health.UNREGISTERED for h in mine):
                    self.gates.registered(pod, gate)
            self.set_gate(pod, desired, minimum, policy)
        if policy.continuous and gated and pools and not out.poll:
            # Nothing pending, but True gates must notice a target the load balancer marks
            # unhealthy: re-read every half check interval (at least the provider's own poll
            # interval), so the gate is False within 2 x the check interval of the mark.
            out.poll = True
            out.interval = max(out.interval, min(p.health.interval for p in pools) / 2)

    def _drained(
        self, key: str, pool: lb.PoolSpec, present: Mapping[lb.Target, TargetState]
    ) -> list[lb.Target]:
        now = time.monotonic()
        done = []
        draining = self._draining_since.pop((key, pool.port), {})
        # kept: the targets still draining in the pool (one that left it, with its pod or by
        # another's hand, is forgotten with it)
        kept: dict[lb.Target, float] = {}
        for target, st in present.items():
            if st.admin != "drain":
                continue
            since = draining.get(target, now)
            # ``held``: an old worker a reload left still routes to it; removed from the pool
            # now, the pod's drain hook would read it gone, take it for drained and let the pod
            # stop under that worker's last requests
            if st.connections == 0 and not st.held and now - since >= pool.drain_delay:
                done.append(target)
            else:
                kept[target] = since
        if kept:
            self._draining_since[(key, pool.port)] = kept
        return done

    def _forget_targets(self, key: str, pool: lb.PoolSpec, removed: Iterable[lb.Target]) -> None:
        """Targets taken out of the pool leave no drain mark behind."""
        draining = self._draining_since.get((key, pool.port))
        if draining is None:
            return
        for target in removed:
            draining.pop(target, None)
        if not draining:
            del self._draining_since[(key, pool.port)]

    def _forget_service(self, key: str) -> None:
        """The Service's load balancer was released (the Service gone or no longer podgate's):
        nothing the reconciler noted about it is kept."""
        self._missing_gate_counts.pop(key, None)
        self._floor_reported.pop(key, None)
        for marker in [m for m in self._draining_since if m[0] == key]:
            del self._draining_since[marker]

    def tracked(self) -> dict[str, int]:
        """How many entries each of the reconciler's per-Service and per-target maps holds
        (leak tests, the churn benchmark; ``address_for``'s addresses only once allocated)."""
        return {
            "draining_since": sum(len(d) for d in self._draining_since.values()),
            "missing_gate_counts": len(self._missing_gate_counts),
            "floor_reported": len(self._floor_reported),
            "addresses": len(self._addresses or ()),
            "requeued": len(self._requeued),
        }

    async def _let_go(
        self, key: str, service: Service, provider: Provider | None, pools: Sequence[lb.PoolSpec]
    ) -> None:
        """The Service is being deleted or no longer names a provider: its pods leave the load
        balancer, then podgate's finalizer goes.  A transient cloud error keeps the finalizer
        (retried, with a Warning saying how to let go); a permanent one (the group is gone or
        never suited) lets go with a Warning, so no deletion waits for ever."""
        held = lb.TARGETS_FINALIZER in (meta_of(service).get("finalizers") or ())
        deleting = is_terminating(service)
        try:
            if held and deleting and provider is not None and provider.binding is not None:
                # after a restart the provider may not know the groups yet: bind them again
                await provider.binding.bind(key, pools)
            # unbind only where podgate's finalizer is (it goes on before the first target goes
            # in): a Service podgate never bound costs no look-up of records or groups
            await self._release(key, service, unbind=held)
        except ProviderError as e:
            if not held:
                raise
            # a deleting Service that names no provider (any more) is the user letting go
            if not e.permanent and not (deleting and provider is None):
                self.recorder_emit(
                    service,
                    "Service",
                    "CleanupFailed",
                    f"{e}; retrying (to let go without clean-up, annotate {gates.PROVIDER_ANNOTATION}=none)",
                    "Warning",
                )
                raise
            self.recorder_emit(
                service, "Service", "CleanupSkipped", f"{e}; nothing podgate can take out", "Warning"
            )
        await self._set_finalizer(service, False)

    async def _set_finalizer(self, service: Service, present: bool) -> Service:
        """Add or remove podgate's finalizer (see ``lb.TARGETS_FINALIZER``) by strategic merge,
        item by item; the Service as it is afterwards."""
        patch = lb.finalizers_patch(service, present)
        if patch is None:
            return service
        return await self._patch_service(service, patch, PatchType.STRATEGIC)

    async def _patch_service(
        self,
        service: Service,
        patch: Mapping[str, Any],
        patch_type: PatchType,
        subresource: str | None = None,
    ) -> Service:
        """Patch the Service and put the answer in the cache ahead of its watch event."""
        meta = service["metadata"]
        updated = await self.kube.patch(
            SERVICES, meta["name"], patch, meta["namespace"], patch_type=patch_type, subresource=subresource
        )
        self.services.update_if_newer(updated)
        return cast(Service, updated)

    async def _publish_address(self, service: Service, address: str) -> None:
        """The load balancer's address as the Service's EXTERNAL-IP, ``ipMode: Proxy``
        (:data:`lb.IP_MODE_PROXY`).  Only a LoadBalancer Service has one: the API server refuses
        ``status.loadBalancer.ingress`` on other types (seen on 1.37: a ClusterIP Service podgate
        serves by annotation failed every pass with 422)."""
        if (service.get("spec") or {}).get("type") != "LoadBalancer":
            return
        patch = lb.ingress_patch(service, address, ip_mode_kept=self._ip_mode_kept)
        if patch is None:
            return
        moved = _ingress_ip(service) != address
        updated = await self._patch_service(service, patch, PatchType.MERGE, "status")
        if self._ip_mode_kept and (ingress(updated) or [{}])[0].get("ipMode") != lb.IP_MODE_PROXY:
            self._ip_mode_kept = False
            log.warning(
                "the API server dropped status.loadBalancer.ingress[].ipMode (Kubernetes before 1.30, "
                "or LoadBalancerIPMode off): kube-proxy may send in-cluster clients' traffic for "
                "load-balancer addresses straight to the pods"
            )
        if moved:
            self.recorder_emit(service, "Service", "EnsuredLoadBalancer", f"Load balancer at {address}")

    async def _release(self, key: str, service: Service | None = None, *, unbind: bool = True) -> None:
        try:
            for provider in self.providers.values():
                if provider.provisioning is not None:
                    await provider.provisioning.release(key)
                if provider.binding is not None and unbind:
                    await provider.binding.unbind(key)
        finally:
            self.reads.forget_service(key)
            self.unreadable_since.pop(key, None)
            self._forget_service(key)
        if self._addresses is not None:
            self._addresses.pop(key, None)
        ip = _ingress_ip(service) if service else None
        if service is not None and ip and self.net is not None and addresses.contains(self.net, ip):
            status: Service = {"status": {"loadBalancer": {"ingress": None}}}
            await self._patch_service(service, status, PatchType.MERGE, "status")

    def _report_floor(self, key: str, service: Service, policy: GatePolicy, selected: int) -> None:
        """A ``min-healthy-targets`` at or above the pods the Service selects refuses every
        eviction (as a PodDisruptionBudget allowing no disruption): a Warning on the Service,
        once per change, before any drain meets it (the eviction guard's refusals say it too)."""
        why = floor_unreachable(key, policy.min_healthy_targets, selected)
        if why is None:
            self._floor_reported.pop(key, None)
        elif self._floor_reported.get(key) != why:
            self._floor_reported[key] = why
            self.recorder_emit(service, "Service", FLOOR_UNREACHABLE, why, "Warning")

    async def _report_pods_without_gate(self, key: str, service: Service, gate: str) -> None:
        """Pods created before their Service get no gate (injection happens at creation only):
        say so on the Service, once per change of the count."""
        namespace = service["metadata"]["namespace"]
        if not self.injection_enabled(namespace):
            return
        missing = [
            p
            for p in self.selected(namespace, selector_of(service))
            if not is_terminating(p) and not self._gate_types_on(p, service["metadata"]["name"])
        ]
        if len(missing) != self._missing_gate_counts.get(key, 0):
            self._missing_gate_counts[key] = len(missing)
            if missing:
                self.recorder_emit(
                    service,
                    "Service",
                    "PodsWithoutReadinessGate",
                    f"{len(missing)} matching pod(s) were created before this Service "
                    f"and have no {gate} gate; "
                    "restart them (kubectl rollout restart) so rollouts wait for the load balancer",
                    "Warning",
                )

    # -- gate writes --------------------------------------------------------------------------
    def _gate_types_on(self, pod: PodView, service: str) -> list[str]:
        """The pod's gates for this Service: podgate's own and any adopted vendor's."""
        return [
            g
            for g in cond.readiness_gates(pod_spec(pod))
            if gates.service_of_gate(g, self.adopted_prefixes) == service
        ]

    def _gates_open(self, pod: PodView, service: str) -> bool:
        """Every gate of the pod for this Service True, whatever the reason."""
        conditions = pod_conditions(pod)
        return all(
            (c := cond.find(conditions, t)) is not None and c.get("status") == cond.TRUE
            for t in self._gate_types_on(pod, service)
        )

    def _gates_true(self, pod: PodView, service: str) -> bool:
        """Every gate of the pod for this Service True on the load balancer's word (one opened
        by the timeout is still rewritten when the load balancer says healthy)."""
        conditions = pod_conditions(pod)
        return all(
            (c := cond.find(conditions, t)) is not None
            and c.get("status") == cond.TRUE
            and c.get("reason") != TIMED_OUT
            for t in self._gate_types_on(pod, service)
        )

    def set_gate(
        self,
        pod: PodView,
        desired: Condition,
        minimum: float = 0.0,
        policy: GatePolicy | None = None,
        types: Sequence[str] | None = None,
    ) -> None:
        """Submit the Service's gate condition under each gate type the pod carries for it (or
        under ``types``), after the Service's timeout policy (the controller's when the
        Service's cannot be read).  The pass does not wait for the write (see
        :mod:`podgate.controller.gatewriter`); a write that fails queues the Service again
        through ``on_write_failed``."""
        policy = policy or self.policy
        service = gates.service_of_gate(desired["type"]) or ""
        key = f"{pod['metadata']['namespace']}/{service}"

        def failed(_: BaseException) -> None:
            # once per pass: 100 pods' writes failing together are one retry of the Service,
            # not 100 (each would take a token of the queue's shared bucket)
            if key not in self._requeued:
                self._requeued.add(key)
                self.on_write_failed(key)

        for gate_type in types or self._gate_types_on(pod, service) or [desired["type"]]:
            current = self.pods.get(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}") or pod
            typed = with_timeout({**desired, "type": gate_type}, current, policy, time.time())
            self.gates.submit(current, typed, sticky=not policy.continuous, minimum=minimum, on_error=failed)

    def recorder_emit(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.recorder.emit_later(obj, kind, reason, message, type_)


def _targets(targets: Iterable[lb.Target]) -> str:
    return ",".join(map(str, targets)) or "-"


def _ingress_ip(service: Service) -> str | None:
    first = ingress(service)
    ip = first[0].get("ip") if first else None
    try:
        return str(ipaddress.IPv4Address(ip)) if ip else None
    except ValueError:
        return None


def _why_not_target(pod: PodView, selector: Mapping[str, str]) -> str:
    if not gates.selector_matches(selector, labels(pod)):
        return "the Service's selector does not match this pod, so the load balancer will not get it"
    if not pod_ip(pod):
        return "waiting for the pod's IP"
    return "waiting for the pod's containers to be ready before registering it with the load balancer"


def services_for_event(
    pod: PodView, old: PodView | None, services: Iterable[Service], adopted_prefixes: Sequence[str] = ()
) -> set[str]:
    """Service keys a pod event concerns: matching selectors (before or after) and gates."""
    ns = meta_of(pod).get("namespace")
    keys = set()
    label_sets = [labels(pod)] + ([labels(old)] if old else [])
    for s in services:
        if meta_of(s).get("namespace") != ns:
            continue
        if any(gates.selector_matches(selector_of(s), each) for each in label_sets):
            keys.add(f"{ns}/{s['metadata']['name']}")
    for g in cond.readiness_gates(pod_spec(pod)):
        svc = gates.service_of_gate(g, adopted_prefixes)
        if svc:
            keys.add(f"{ns}/{svc}")
    return keys
