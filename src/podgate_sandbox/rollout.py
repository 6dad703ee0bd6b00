"""Rolling updates under load, side by side: what podgate changes, measured on the sandbox.

Scenarios (one namespace, LoadBalancer Service and Deployment each; same app, probe and load):

- ``plain``: a readiness probe only — what users have without podgate;
- ``workaround``: the common fix — ``minReadySeconds`` ≥ the load balancer's rise × interval,
  plus a preStop sleep;
- ``podgate``: podgate's readiness gates (namespace opted in), no preStop delay;
- ``podgate-prestop``: the gates plus a preStop delay injected by the webhook.

Each round restarts the Deployment while a load generator sends a steady request rate through
the Service's EXTERNAL-IP, and records every request, the load balancer's healthy targets over
time, the rollout's duration, and (gated scenarios) each new pod's ContainersReady → gate True.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client

from podgate.kube.api import PODS, Kube
from podgate.kube.client import ApiKube, call
from podgate.kube.informer import Informer
from podgate.providers.haproxy_config import target_of_server
from podgate.providers.haproxy_runtime import Runtime
from podgate_sandbox.loadgen import LoadGenerator, LoadResult

GATE_PREFIX = "service.readiness.podgate.dev/"


def web_service_spec() -> dict[str, Any]:
    """The labs' Service in front of their Deployment ``web`` (port 80 to the app's named port)."""
    return {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}


def web_container(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The labs' app container (the sandbox app; ``nginx`` resolves to it), ready on /healthz."""
    container: dict[str, Any] = {
        "name": "app",
        "image": "nginx",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return container


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    gated: bool = False
    min_ready_seconds: int = 0
    prestop_sleep: float = 0.0  # an explicit preStop sleep in the template
    prestop_delay: float = 0.0  # podgate's injected preStop delay (annotation)


def scenarios(
    interval: float, rise: int, registration: tuple[float, float] | None = None, min_ready: int | None = None
) -> dict[str, Scenario]:
    """The four scenarios.  With a ``registration`` delay (the cloud-like data plane's: a new
    target's checks start between its bounds after podgate registered it), the workaround's
    ``minReadySeconds`` must cover its maximum too (or ``min_ready``, when given)."""
    minimum = interval * rise
    ready_for = (
        min_ready
        if min_ready is not None
        else math.ceil(minimum + (registration[1] if registration else 0.0)) + 1
    )
    return {
        s.name: s
        for s in (
            Scenario("plain", "readiness probe only"),
            Scenario(
                "workaround",
                f"minReadySeconds {ready_for} + preStop sleep",
                min_ready_seconds=ready_for,
                prestop_sleep=minimum,
            ),
            Scenario("podgate", "podgate readiness gates", gated=True),
            Scenario(
                "podgate-prestop", "podgate gates + injected preStop delay", gated=True, prestop_delay=2.0
            ),
        )
    }


@dataclass
class RoundResult:
    scenario: str
    requests: int
    failed: int
    failures: dict[str, int]
    rollout_s: float
    gate_latency_s: list[float] = field(default_factory=list)
    #: for plots: (t, healthy targets) and the load's (t, kind) relative to the restart
    healthy: list[tuple[float, int]] = field(default_factory=list)
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    end_s: float = 0.0


class Watch:
    """ContainersReady and gate-True times of the namespace's pods."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.informer: Informer[dict[str, Any]] = Informer(
            kube, PODS, namespace=namespace, name=f"rollout {namespace}"
        )
        self.containers_ready: dict[str, float] = {}
        self.gate_true: dict[str, float] = {}
        self.informer.add_handler(self._on)

    def _on(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        now, name = time.monotonic(), pod["metadata"]["name"]
        for c in (pod.get("status") or {}).get("conditions") or ():
            if c.get("status") != "True":
                continue
            if c["type"] == "ContainersReady":
                self.containers_ready.setdefault(name, now)
            elif c["type"].startswith(GATE_PREFIX):
                self.gate_true.setdefault(name, now)


class RolloutLab:
    def __init__(
        self,
        api: client.ApiClient,
        runtime_socket: str,
        *,
        replicas: int = 6,
        interval: float = 1.0,
        rise: int = 3,
        rate: float = 250.0,
        prefix: str = "rollout",
        registration: tuple[float, float] | None = None,
        min_ready: int | None = None,
        retries: bool = True,
        keepalive: bool = False,
    ) -> None:
        """``registration``: run on the sandbox's cloud-like data plane (no retries, and each new
        target's checks start uniformly within these bounds after registration); podgate's
        scenario then uses its drain hook, as a cloud load balancer without retries needs.
        ``retries=False``: HAProxy neither retries nor redispatches, so a failed connection is
        the client's (podgate's scenario then uses the drain hook too); ``keepalive``: the load
        reuses its connections (the clients a reload's closing of idle connections hurts)."""
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.kube = ApiKube(api)
        self.runtime = Runtime(runtime_socket)
        self.replicas, self.interval, self.rise, self.rate = replicas, interval, rise, rate
        self.prefix = prefix
        self.registration = registration
        self.retries, self.keepalive = retries, keepalive
        self.scenarios = scenarios(interval, rise, registration, min_ready)
        self._watches: dict[str, Watch] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def namespace(self, scenario: str) -> str:
        return f"{self.prefix}-{scenario}"

    @property
    def lb_minimum(self) -> float:
        return self.interval * self.rise

    async def prepare(self, name: str) -> str:
        """Namespace, Service and Deployment for a scenario; returns the EXTERNAL-IP once every
        target is UP in the load balancer."""
        s, ns = self.scenarios[name], self.namespace(name)
        labels = {"podgate.dev/pod-readiness-gate-inject": "enabled"} if s.gated else {}
        await call(self.core.create_namespace, {"metadata": {"name": ns, "labels": labels}})
        watch = Watch(self.kube, ns)
        self._watches[name] = watch
        self._tasks.append(asyncio.create_task(watch.informer.run()))
        await call(
            self.core.create_namespaced_service,
            ns,
            {
                "metadata": {
                    "name": "web",
                    "annotations": {
                        "podgate.dev/health-check-path": "/healthz",
                        "podgate.dev/health-check-interval": f"{self.interval:g}",
                        "podgate.dev/healthy-threshold": str(self.rise),
                        "podgate.dev/unhealthy-threshold": "3",
                        **(
                            {
                                "podgate.dev/load-balancer-retries": "false",
                                "sandbox.podgate.dev/registration-delay": "{:g}-{:g}".format(
                                    *self.registration
                                ),
                            }
                            if self.registration
                            else {}
                        ),
                        **({} if self.retries else {"podgate.dev/load-balancer-retries": "false"}),
                    },
                },
                "spec": web_service_spec(),
            },
        )
        if s.gated:
            # the Service before its pods, as the README asks: a pod admitted before podgate has
            # seen its Service gets no gate and no drain hook (one of four did, in a loaded
            # full-suite run, and stopped at once under an old HAProxy worker's last requests);
            # the EXTERNAL-IP is podgate's word that it has
            await self._until(lambda: self._external_ip(ns), 60)
        container = web_container()
        if s.prestop_sleep:
            container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", f"{s.prestop_sleep:g}"]}}}
        hook = {"podgate.dev/prestop-delay": f"{s.prestop_delay:g}"}
        if (self.registration or not self.retries) and s.name == "podgate":
            # no retries to hide a pod stopping while in rotation: the drain hook's wait
            hook = {"podgate.dev/prestop": "drain"}
        template: dict[str, Any] = {
            "metadata": {"labels": {"app": "web"}, "annotations": hook},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 30},
        }
        await call(
            self.apps.create_namespaced_deployment,
            ns,
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": self.replicas,
                    "minReadySeconds": s.min_ready_seconds,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": template,
                },
            },
        )
        ip = await self._until(lambda: self._external_ip(ns), 60)
        await self._until(lambda: self._complete(ns), 120)
        await self._until(lambda: self._all_up(ns), 60)
        if s.gated:
            pods = (await call(self.core.list_namespaced_pod, ns)).get("items") or []
            ungated = [
                p["metadata"]["name"]
                for p in pods
                if {"conditionType": GATE_PREFIX + "web"} not in (p["spec"].get("readinessGates") or [])
            ]
            if ungated:  # a round with them would measure the lab, not podgate
                raise RuntimeError(f"pods of {ns} admitted without podgate's gate: {ungated}")
        return str(ip)

    async def round(
        self, name: str, ip: str, number: int, during: Callable[[], Coroutine[Any, Any, None]] | None = None
    ) -> RoundResult:
        """One rollout restart under load; ``during`` runs alongside once the rollout began
        (e.g. killing the leading controller in the middle of it)."""
        ns = self.namespace(name)
        watch = self._watches[name]
        load = LoadGenerator(f"http://{ip}/", rate=self.rate, max_seconds=300, keepalive=self.keepalive)
        healthy: list[tuple[float, int]] = []
        load_task = asyncio.create_task(load.run())
        sampler = asyncio.create_task(self._sample(ns, healthy))
        await asyncio.sleep(1.0)
        before = set(watch.containers_ready)
        t0 = time.monotonic()
        patch = {
            "spec": {"template": {"metadata": {"annotations": {"podgate.dev/rollout-round": str(number)}}}}
        }
        await call(self.apps.patch_namespaced_deployment, "web", ns, patch)
        side: asyncio.Task[None] | None = asyncio.create_task(during()) if during else None
        await asyncio.sleep(0.5)
        await self._until(lambda: self._complete(ns), 300)
        rollout = time.monotonic() - t0
        await self._until(lambda: self._old_pods_gone(ns), 120)
        await asyncio.sleep(1.0)
        load.stop()
        if side is not None:
            await side
        result: LoadResult = await load_task
        sampler.cancel()
        end = time.monotonic() - t0
        window = result.between(t0 - 1.0, time.monotonic())
        new = [n for n in watch.containers_ready if n not in before]
        gate = [watch.gate_true[n] - watch.containers_ready[n] for n in new if n in watch.gate_true]
        return RoundResult(
            scenario=name,
            requests=window.total,
            failed=window.failed,
            failures={k: v for k, v in window.by_kind().items() if k != "ok"},
            rollout_s=rollout,
            gate_latency_s=gate,
            healthy=[(t - t0, n) for t, n in healthy],
            outcomes=[(t - t0, kind) for t, kind, _ in window.outcomes],
            end_s=end,
        )

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()

    # -- helpers --------------------------------------------------------------------------
    async def _until(self, fn: Any, limit: float) -> Any:
        deadline = time.monotonic() + limit
        while True:
            value = await fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{getattr(fn, '__name__', 'condition')} not reached within {limit:.0f}s")
            await asyncio.sleep(0.1)

    async def _external_ip(self, ns: str) -> str | None:
        svc = await call(self.core.read_namespaced_service, "web", ns)
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return ingress[0].get("ip") if ingress else None

    async def _complete(self, ns: str) -> bool:
        d = await call(self.apps.read_namespaced_deployment, "web", ns)
        st, n = d.get("status") or {}, self.replicas
        return bool(
            st.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and st.get("updatedReplicas") == n
            and st.get("availableReplicas") == n
            and st.get("replicas") == n
        )

    async def _old_pods_gone(self, ns: str) -> bool:
        pods = (await call(self.core.list_namespaced_pod, ns)).get("items") or []
        return len(pods) == self.replicas and not any(p["metadata"].get("deletionTimestamp") for p in pods)

    async def _all_up(self, ns: str) -> bool:
        return await self._healthy(ns) == self.replicas

    async def _healthy(self, ns: str) -> int:
        rows = await self.runtime.servers(f"podgate.{ns}.web.80")
        return sum(1 for r in rows if target_of_server(r.name, r.address) and r.status.startswith("UP"))

    async def _sample(self, ns: str, out: list[tuple[float, int]]) -> None:
        while True:
            try:
                out.append((time.monotonic(), await self._healthy(ns)))
            except Exception:
                out.append((time.monotonic(), 0))
            await asyncio.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarise(rounds: list[RoundResult], lb_minimum: float) -> dict[str, Any]:
    """Per scenario: requests, failures (total, by kind, rounds with any), rollout durations,
    gate latency and its ratio to the load balancer's minimum."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r.scenario for r in rounds):
        rs = [r for r in rounds if r.scenario == name]
        kinds: dict[str, int] = {}
        for r in rs:
            for k, v in r.failures.items():
                kinds[k] = kinds.get(k, 0) + v
        gate = [g for r in rs for g in r.gate_latency_s]
        entry: dict[str, Any] = {
            "rounds": len(rs),
            "requests": sum(r.requests for r in rs),
            "failed": sum(r.failed for r in rs),
            "failed_by_kind": kinds,
            "rounds_with_failures": sum(1 for r in rs if r.failed),
            "failed_per_round": [r.failed for r in rs],
            "rollout_s": {
                "p50": statistics.median(r.rollout_s for r in rs),
                "max": max(r.rollout_s for r in rs),
            },
        }
        if gate:
            entry["gate_latency_s"] = {
                "n": len(gate),
                "p50": statistics.median(gate),
                "p99": percentile(gate, 99),
            }
            entry["gate_ratio"] = {
                "p50": statistics.median(gate) / lb_minimum,
                "p99": percentile(gate, 99) / lb_minimum,
            }
        out[name] = entry
    return out
