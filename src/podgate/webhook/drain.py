"""The drain endpoint: a pod's preStop ``httpGet`` lands here and is answered only once every
load-balancer target of the pod is out of rotation and drained by the provider's own account,
or when the pod's drain budget (below its grace period) has passed.

Every replica serves it, and answers from the load balancer itself, never from the leader's
memory: the pod and its Services come from this replica's informers, the targets' state from
``TargetPool.targets``.  The call also *starts* the drain: a target still in rotation is drained
through the pool right here (idempotent with the leader's own drain at the pod's
deletionTimestamp), so deregistration begins at whichever comes first, wherever the hook lands.

What "drained" means is the provider's: HAProxy, in DRAIN or MAINT with no current sessions
(``TargetState.drained``); ELB, once the target has been ``draining`` for the propagation
allowance (``aws_elbv2.DRAIN_PROPAGATION``), not the whole deregistration delay; Alibaba,
weight 0 for the drain delay, then removed by the leader.  A target gone from the pool is
drained whatever the provider.

The hook names its pod by the drain token the webhook gave it: in the ``Podgate-Drain-Token``
header (``/drain/NAMESPACE``) where every kubelet the API server allows sends a hook's
``httpHeaders`` (1.25+, ConsistentHTTPGetHandlers; an API server of 1.27+ admits no older
kubelet), else in the path (``/drain/NAMESPACE/TOKEN``).  The path form puts the token in the
kubelet's ``FailedPreStopHook`` Event when the call fails (the Event quotes the hook's path and
the URL), so it is used only where it must be; both forms are always served, for pods made
before an upgrade.  The kubelet's httpGet hook before 1.25 is plain HTTP whatever its
``scheme`` and puts a second ``/`` before the path; the routes accept that.  When podgate cannot
be reached the hook fails, the kubelet records ``FailedPreStopHook`` and sends SIGTERM at once:
podgate being down never holds a pod, it only loses the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from podgate.kube.api import PODS, Kube, KubeError, NotFound
from podgate.kube.events import EventRecorder
from podgate.kube.informer import Informer
from podgate.model import gates, lb
from podgate.model.types import (
    PodView,
    Service,
    annotations_of,
    is_terminating,
    labels,
    meta_of,
    pod_spec,
    selector_of,
)
from podgate.providers.base import Provider, ProviderError, TargetState
from podgate.providers.reads import PoolReads
from podgate.resolutions import ServiceResolutions
from podgate.webhook.isolated import Answer

log = logging.getLogger(__name__)

#: aiohttp route: ``/drain/NAMESPACE/TOKEN``, also with the kubelet's leading ``//``
ROUTE = "/{lead:/*}drain/{namespace}/{token}"
#: aiohttp route: ``/drain/NAMESPACE``, the token in :data:`gates.DRAIN_TOKEN_HEADER`
HEADER_ROUTE = "/{lead:/*}drain/{namespace}"
#: a hook is a GET with no body: anything larger than this is not one
MAX_REQUEST_BYTES = 1024
TIMED_OUT = "DrainTimedOut"

DRAINED, TIMEOUT, NO_TARGETS, NOT_TERMINATING, UNKNOWN_POD = (
    "drained",
    "timeout",
    "no_targets",
    "not_terminating",
    "unknown_pod",
)
BUSY = "busy"
#: every answer's result, for the metric (``error``: podgate failed and answered anyway;
#: ``busy``: more pods waiting at once than ``max_waiting``, answered 429 at once)
RESULTS = (DRAINED, TIMEOUT, NO_TARGETS, NOT_TERMINATING, UNKNOWN_POD, BUSY, "error")
#: pods whose drain one replica waits for at once (a mass restart of a large cluster stays well
#: within it; a flood of calls does not make the replica hold a task and a poll each without end)
MAX_WAITING = 20_000
#: the longest a hook is held, whatever the pod's grace period (an hour-long grace period must
#: not hold a connection and a poll for an hour)
MAX_BUDGET = 600.0


@dataclass
class DrainOutcome:
    result: str
    message: str
    waited: float = 0.0
    targets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _PoolRef:
    provider: Provider
    pool: lb.PoolSpec

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.provider.name, self.pool.service_key, self.pool.port)


class DrainEndpoint:
    def __init__(
        self,
        kube: Kube,
        pods: Informer[PodView],
        services: Informer[Service],
        resolutions: ServiceResolutions,
        recorder: EventRecorder,
        *,
        observe: Callable[[str, float], None] = lambda result, seconds: None,
        poll: float = 0.1,
        redrain: float = 1.0,
        reads: PoolReads | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        """``reads``: the controller's shared pool reads (the reconciler's and the eviction
        guard's too), so a pool waited on by hooks and polled by its Service is read once.
        ``clock`` and ``sleep`` measure and wait out the drain budget (a test's own time)."""
        self.kube, self.pods, self.services = kube, pods, services
        self.resolutions = resolutions
        self.recorder = recorder
        #: told every answer: result (one of RESULTS) and the seconds the call took
        self.observe = observe
        #: seconds between reads of a pool while a hook waits (at least the provider's interval)
        self.poll = poll
        #: seconds before a target seen back in rotation is drained again
        self.redrain = redrain
        self.reads = reads if reads is not None else PoolReads()
        self.clock, self.sleep = clock, sleep
        self.max_waiting = max_waiting
        #: one drain per pod (by uid), however many calls wait for it: the kubelet calls the
        #: hook of each container, and a caller may call again
        self._draining: dict[str, asyncio.Task[DrainOutcome]] = {}
        # A hook names its pod by token: found through an index, not a scan of the namespace's
        # pods (a mass restart sends a hook per pod, each of which would read every pod)
        pods.add_index(TOKEN_INDEX, _token_keys)

    async def _read(self, ref: _PoolRef) -> dict[lb.Target, TargetState]:
        """Hooks waiting on one pool share its reads: a scale-down of many pods of one Service
        costs one ``targets`` call per interval, not one per pod."""
        return await self.reads.read(ref.provider, ref.pool, max(self.poll, ref.provider.pool.poll_interval))

    async def handle(self, request: web.Request) -> web.Response:
        """A hook call on either route: the token from the path, else from the header."""
        match = request.match_info
        token = match.get("token") or request.headers.get(gates.DRAIN_TOKEN_HEADER) or ""
        answer = await self.answer({"namespace": match["namespace"], "token": token})
        return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)

    async def answer(self, match: Mapping[str, str]) -> Answer:
        """The answer to one hook call, from the route's ``namespace`` and ``token``, as plain data:
        the webhook's server thread hands calls to the controller's loop, where this runs."""
        t0 = time.monotonic()
        namespace, token = match["namespace"], match["token"]
        if not token:
            self.observe(UNKNOWN_POD, 0.0)
            message = f"{UNKNOWN_POD}: the call names no drain token (header {gates.DRAIN_TOKEN_HEADER})\n"
            return Answer(404, message.encode(), "text/plain")
        try:
            outcome = await self.drain_token(namespace, token)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the kubelet must always get an answer, and SIGTERM its due
            log.exception("drain hook of a pod in %s failed", namespace)  # the token is a secret
            outcome = DrainOutcome("error", f"podgate could not drain the pod: {e}")
        took = time.monotonic() - t0
        self.observe(outcome.result, took)
        status = {UNKNOWN_POD: 404, BUSY: 429}.get(outcome.result, 200)
        return Answer(status, f"{outcome.result}: {outcome.message}\n".encode(), "text/plain")

    async def drain_token(self, namespace: str, token: str) -> DrainOutcome:
        """Find the pod by its drain token, then :meth:`drain` it."""
        if not (self.pods.synced.is_set() and self.services.synced.is_set()):
            # a replica just started: answering from empty caches would find no pod or no target
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(self.pods.synced.wait(), self.services.synced.wait())
        pod = self._by_token(namespace, token)
        if pod is None:
            return DrainOutcome(UNKNOWN_POD, f"no pod in namespace {namespace} holds this drain token")
        if not is_terminating(pod):
            # the kubelet saw the deletion before this replica's watch did, or the container is
            # restarted (liveness) and the pod stays: ask the API server which
            with contextlib.suppress(NotFound):
                try:
                    fresh = await self.kube.get(PODS, meta_of(pod)["name"], namespace)
                except KubeError as e:
                    log.warning("drain: cannot read pod %s/%s: %s", namespace, meta_of(pod).get("name"), e)
                else:
                    pod = fresh  # type: ignore[assignment]
        if not is_terminating(pod):
            return DrainOutcome(
                NOT_TERMINATING,
                "the pod is not being deleted (a container restart?): it stays a target, nothing drained",
            )
        return await self._one_drain(pod)

    async def _one_drain(self, pod: PodView) -> DrainOutcome:
        """The pod's drain, shared by every call that waits for it; a new one only while fewer
        than ``max_waiting`` pods are being waited for."""
        uid = meta_of(pod).get("uid") or f"{meta_of(pod).get('namespace')}/{meta_of(pod).get('name')}"
        task = self._draining.get(uid)
        if task is None:
            if len(self._draining) >= self.max_waiting:
                return DrainOutcome(BUSY, f"podgate waits for {self.max_waiting} pods' drains already")
            task = asyncio.create_task(self.drain(pod), name="drain")
            self._draining[uid] = task
            task.add_done_callback(lambda _: self._draining.pop(uid, None))
        return await asyncio.shield(task)

    def _by_token(self, namespace: str, token: str) -> PodView | None:
        found = self.pods.by_index(TOKEN_INDEX, f"{namespace}/{token}")
        found.sort(key=lambda p: not is_terminating(p))
        return found[0] if found else None

    def targets_of(self, pod: PodView) -> list[tuple[_PoolRef, lb.Target]]:
        """The pod's targets in every pool of every handled Service that selects it."""
        namespace = meta_of(pod).get("namespace")
        out: list[tuple[_PoolRef, lb.Target]] = []
        for service in self.services.cache.values():
            if meta_of(service).get("namespace") != namespace or not gates.selector_matches(
                selector_of(service), labels(pod)
            ):
                continue
            resolution = self.resolutions.of(service)
            provider = self.resolutions.provider(resolution)
            if provider is None or resolution.error is not None:
                # podgate puts no pod of an invalid Service in a load balancer: nothing to drain
                continue
            pools = resolution.pools
            for pool in pools:
                target = lb.target_of(pod, pool.target_port)
                if target is not None:
                    out.append((_PoolRef(provider, pool), target))
        return out

    async def drain(self, pod: PodView) -> DrainOutcome:
        """Drain the pod's targets and wait until the load balancer says they are drained, at
        most the pod's drain budget; then a Warning Event says which were not."""
        meta = meta_of(pod)
        pod_key = f"{meta.get('namespace')}/{meta.get('name')}"
        grace = _grace_of(pod)
        budget = min(gates.drain_budget(grace), MAX_BUDGET)
        t0 = self.clock()
        deadline = t0 + budget
        wanted = self.targets_of(pod)
        if not wanted:
            return DrainOutcome(NO_TARGETS, f"{pod_key} is no load-balancer target")
        by_pool: dict[tuple[str, str, int], tuple[_PoolRef, list[lb.Target]]] = {}
        for ref, target in wanted:
            by_pool.setdefault(ref.key, (ref, []))[1].append(target)
        drained_at: dict[tuple[str, str, int], float] = {}
        while True:
            pending: list[str] = []
            problems: list[str] = []
            try:
                # the load balancer's answers count against the budget too: a drain seen after
                # it is too late for the kubelet, which stops the container at the grace period
                async with asyncio.timeout(max(deadline - self.clock(), 0.0)):
                    for key, (ref, targets) in by_pool.items():
                        try:
                            present = await self._read(ref)
                            in_rotation = [
                                t
                                for t in targets
                                if (st := present.get(t)) is not None and st.admin == "ready"
                            ]
                            if in_rotation and self.clock() - drained_at.get(key, -1e9) >= self.redrain:
                                drained_at[key] = self.clock()
                                try:
                                    await ref.provider.pool.drain(ref.pool, in_rotation)
                                finally:
                                    self.reads.forget(ref.provider, ref.pool)
                                present = await self._read(ref)
                        except ProviderError as e:
                            problems.append(f"{ref.provider.name}: {e}")
                            pending += [f"{t} ({ref.pool.service_key} port {ref.pool.port})" for t in targets]
                            continue
                        pending += [
                            f"{t} ({ref.pool.service_key} port {ref.pool.port}: {_state(present[t])})"
                            for t in targets
                            if t in present and not present[t].drained
                        ]
            except TimeoutError:
                problems.append("the load balancer did not answer within the budget")
                pending = [
                    f"{t} ({ref.pool.service_key} port {ref.pool.port})"
                    for ref, targets in by_pool.values()
                    for t in targets
                ]
            now = self.clock()
            if not pending:
                waited = now - t0
                log.info("drained %s in %.2fs", pod_key, waited)
                return DrainOutcome(
                    DRAINED, f"{pod_key} drained in {waited:.2f}s", waited, [str(t) for _, t in wanted]
                )
            if now >= deadline:
                waited = now - t0
                message = (
                    f"the load balancer had not drained {', '.join(pending)} after {budget:g}s "
                    f"(the drain budget of a {grace:g}s grace period); the container stops now"
                    + (f"; errors: {'; '.join(problems)}" if problems else "")
                )
                log.warning("drain of %s timed out: %s", pod_key, message)
                self.recorder.emit_later(pod, "Pod", TIMED_OUT, message, "Warning")
                return DrainOutcome(TIMEOUT, message, waited, [str(t) for _, t in wanted])
            await self.sleep(min(self.poll, max(deadline - now, 0.0)))


#: the pods' index by ``namespace/drain token``
TOKEN_INDEX = "drain-token"


def _token_keys(pod: PodView) -> list[str]:
    meta = meta_of(pod)
    token = annotations_of(pod).get(gates.DRAIN_TOKEN_ANNOTATION)
    return [f"{meta.get('namespace')}/{token}"] if token else []


def _grace_of(pod: PodView) -> float:
    """The grace period the kubelet gives this deletion: the delete call's, else the pod's."""
    meta = meta_of(pod)
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = pod_spec(pod).get("terminationGracePeriodSeconds")
    try:
        return float(grace) if grace is not None else 30.0
    except (TypeError, ValueError):
        return 30.0


def _state(st: TargetState) -> str:
    if st.admin == "ready":
        return "in rotation"
    state = f"{st.admin}, {st.connections} connection(s)" if st.connections else st.admin
    return f"{state}; {st.held}" if st.held else state
