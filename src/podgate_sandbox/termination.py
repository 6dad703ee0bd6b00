"""Pods leaving under load, side by side: what podgate's drain hook changes, measured on the sandbox.

Scenarios: a preStop ``hook`` — ``none``, ``sleep`` (the usual ``preStop: sleep 15`` in the
template) or ``drain`` (podgate's injected drain hook) — on a ``plane``: ``haproxy`` (the
sandbox's HAProxy as podgate provisions it: retries and redispatch on) or ``cloud`` (no
retries or redispatch, and a propagation delay between podgate's drain and HAProxy acting on it:
:mod:`podgate_sandbox.dataplane`).  One namespace per scenario, opted in to podgate's gates,
with a LoadBalancer Service and a Deployment of an app that aborts at SIGTERM (in-flight
requests dropped, as an app without graceful shutdown does) and answers in 0.5-1 s.

A round scales the Deployment down (or restarts it) while keep-alive clients send POSTs through
the Service's EXTERNAL-IP: a POST is never replayed on another target, so a request a leaving
pod drops fails.  Recorded: every request's outcome, and per leaving pod, from the node agent
(``/terminations``) the times from its deletion to SIGTERM and to gone, and from HAProxy's own
state the time until the load balancer had it drained (out of rotation with no session left).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client

from podgate.kube.client import call
from podgate.providers.haproxy_config import target_of_server
from podgate.providers.haproxy_runtime import Runtime
from podgate_sandbox.dataplane import PROPAGATION
from podgate_sandbox.loadgen import LoadGenerator
from podgate_sandbox.rollout import web_container, web_service_spec

HOOKS = ("none", "sleep", "drain")
#: HAProxy's server admin flags of a server out of rotation: maintenance (forced, inherited,
#: from a resolver) or drain (forced, inherited)
OUT_OF_ROTATION = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20
PLANES = ("haproxy", "cloud")
ACTIONS = ("scale-down", "restart")


@dataclass(frozen=True)
class Scenario:
    hook: str
    plane: str

    @property
    def name(self) -> str:
        return f"{self.hook}-{self.plane}"

    def title(self, sleep: float, propagation: float) -> str:
        hook = {
            "none": "no preStop hook",
            "sleep": f"preStop sleep {sleep:g}",
            "drain": "podgate drain hook",
        }[self.hook]
        plane = (
            f"cloud-like data plane ({propagation:g} s propagation, no retries)"
            if self.plane == "cloud"
            else "HAProxy with retries"
        )
        return f"{hook}, {plane}"


@dataclass
class PodTimes:
    pod: str
    #: seconds from the node agent seeing the deletion
    to_sigterm: float | None
    to_gone: float | None
    #: until HAProxy had the pod's target out of rotation with no session (None: never seen so)
    lb_drained: float | None


@dataclass
class RoundResult:
    scenario: str
    action: str
    requests: int
    failed: int
    failures: dict[str, int]
    pods: list[PodTimes] = field(default_factory=list)
    duration_s: float = 0.0


class TerminationLab:
    def __init__(
        self,
        api: client.ApiClient,
        runtime_socket: str,
        agent_url: str,
        *,
        replicas: int = 6,
        down_to: int = 2,
        rate: float = 40.0,
        sleep: float = 15.0,
        propagation: float = 5.0,
        prefix: str = "term",
    ) -> None:
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.runtime = Runtime(runtime_socket)
        self.agent_url = agent_url
        self.replicas, self.down_to, self.rate = replicas, down_to, rate
        self.sleep, self.propagation, self.prefix = sleep, propagation, prefix

    def namespace(self, s: Scenario) -> str:
        return f"{self.prefix}-{s.name}"

    def backend(self, s: Scenario) -> str:
        return f"podgate.{self.namespace(s)}.web.80"

    async def prepare(self, s: Scenario) -> str:
        """Namespace, Service and Deployment; returns the EXTERNAL-IP once every pod is a
        healthy target."""
        ns = self.namespace(s)
        await call(
            self.core.create_namespace,
            {"metadata": {"name": ns, "labels": {"podgate.dev/pod-readiness-gate-inject": "enabled"}}},
        )
        annotations = {
            "podgate.dev/health-check-path": "/healthz",
            "podgate.dev/health-check-interval": "1",
            "podgate.dev/healthy-threshold": "2",
            "podgate.dev/unhealthy-threshold": "2",
        }
        if s.plane == "cloud":
            annotations |= {
                "podgate.dev/load-balancer-retries": "false",
                PROPAGATION: f"{self.propagation:g}",
            }
        await call(
            self.core.create_namespaced_service,
            ns,
            {
                "metadata": {"name": "web", "annotations": annotations},
                "spec": web_service_spec(),
            },
        )
        container = web_container({"PODGATE_APP_ON_SIGTERM": "abort", "PODGATE_APP_RESPONSE_DELAY": "0.5-1"})
        if s.hook == "sleep":
            container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", f"{self.sleep:g}"]}}}
        template = {
            "metadata": {
                "labels": {"app": "web"},
                # none: no hook at all; drain: podgate's (its default, said explicitly here)
                "annotations": {"podgate.dev/prestop": "drain" if s.hook == "drain" else "none"},
            },
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 30},
        }
        await call(
            self.apps.create_namespaced_deployment,
            ns,
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": self.replicas,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": template,
                },
            },
        )
        ip = await _until(lambda: self._external_ip(ns), 60)
        await self.settled(s, self.replicas)
        return str(ip)

    async def settled(self, s: Scenario, replicas: int, limit: float = 120) -> None:
        """The Deployment complete at ``replicas``, no pod left terminating, every target UP."""
        ns = self.namespace(s)

        async def done() -> bool:
            d = await call(self.apps.read_namespaced_deployment, "web", ns)
            st = d.get("status") or {}
            if not (
                st.get("observedGeneration", 0) >= d["metadata"]["generation"]
                and st.get("updatedReplicas") == replicas
                and st.get("availableReplicas") == replicas
                and st.get("replicas") == replicas
            ):
                return False
            pods = (await call(self.core.list_namespaced_pod, ns)).get("items") or []
            if len(pods) != replicas or any(p["metadata"].get("deletionTimestamp") for p in pods):
                return False
            rows = await self.runtime.servers(self.backend(s))
            up = [r for r in rows if target_of_server(r.name, r.address) and r.status.startswith("UP")]
            return len(up) == replicas == len([r for r in rows if target_of_server(r.name, r.address)])

        await _until(done, limit)

    async def round(self, s: Scenario, ip: str, action: str, number: int) -> RoundResult:
        """One scale-down (``replicas`` → ``down_to``, then back, unmeasured) or rollout restart
        under load."""
        ns = self.namespace(s)
        pods = (await call(self.core.list_namespaced_pod, ns)).get("items") or []
        by_ip = {
            p["status"]["podIP"]: p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("podIP")
        }
        load = LoadGenerator(
            f"http://{ip}/orders",
            rate=self.rate,
            timeout=10.0,
            max_seconds=300,
            concurrency=64,
            method="POST",
            keepalive=True,
            status_kinds=True,
        )
        drained: dict[str, float] = {}
        load_task = asyncio.create_task(load.run())
        watcher = asyncio.create_task(self._watch_drains(s, by_ip, drained))
        await asyncio.sleep(2.0)
        t0 = time.monotonic()
        if action == "scale-down":
            await call(
                self.apps.patch_namespaced_deployment_scale, "web", ns, {"spec": {"replicas": self.down_to}}
            )
            after = self.down_to
        else:
            patch = {
                "spec": {"template": {"metadata": {"annotations": {"podgate.dev/restart": str(number)}}}}
            }
            await call(self.apps.patch_namespaced_deployment, "web", ns, patch)
            after = self.replicas
        await asyncio.sleep(0.5)
        await self.settled(s, after, limit=180)
        duration = time.monotonic() - t0
        await asyncio.sleep(1.0)
        load.stop()
        result = await load_task
        watcher.cancel()
        window = result.between(t0 - 2.0, time.monotonic())
        times = self._pod_times(ns, set(by_ip.values()), drained)
        if action == "scale-down":
            await call(
                self.apps.patch_namespaced_deployment_scale, "web", ns, {"spec": {"replicas": self.replicas}}
            )
            await self.settled(s, self.replicas)
        return RoundResult(
            scenario=s.name,
            action=action,
            requests=window.total,
            failed=window.failed,
            failures={k: v for k, v in window.by_kind().items() if k != "ok"},
            pods=times,
            duration_s=duration,
        )

    async def _watch_drains(self, s: Scenario, by_ip: dict[str, str], drained: dict[str, float]) -> None:
        """When (wall clock) HAProxy itself first had each pod's target drained: put out of
        rotation (drain or maintenance, read from its admin state: a server whose checks fail
        shows DOWN in ``show stat`` whatever it was told) with no session, or removed."""
        seen: set[str] = set()
        backend = self.backend(s)
        while True:
            try:
                rows = await self.runtime.servers(backend)
                admin = await self.runtime.admin_states(backend)
            except Exception:
                rows = None
            now = time.time()
            if rows is not None:
                present = {}
                for r in rows:
                    t = target_of_server(r.name, r.address)
                    if t is not None and t.ip in by_ip:
                        present[by_ip[t.ip]] = r
                for name, r in present.items():
                    seen.add(name)
                    if admin.get(r.name, 0) & OUT_OF_ROTATION and r.sessions == 0:
                        drained.setdefault(name, now)
                for name in seen - set(present):
                    drained.setdefault(name, now)
            await asyncio.sleep(0.05)

    def _pod_times(self, ns: str, names: set[str], drained: dict[str, float]) -> list[PodTimes]:
        with urllib.request.urlopen(f"{self.agent_url}/terminations", timeout=5) as r:
            records: dict[str, dict[str, float]] = json.loads(r.read())
        out = []
        for key, steps in records.items():
            pod_key = key.split(" ")[0]
            pod_ns, _, name = pod_key.partition("/")
            if pod_ns != ns or name not in names or "deleting" not in steps:
                continue
            start = steps["deleting"]

            def since(t: float | None, start: float = start) -> float | None:
                return None if t is None else round(t - start, 3)

            out.append(
                PodTimes(
                    name, since(steps.get("sigterm")), since(steps.get("gone")), since(drained.get(name))
                )
            )
        return sorted(out, key=lambda p: p.pod)

    async def _external_ip(self, ns: str) -> str | None:
        svc = await call(self.core.read_namespaced_service, "web", ns)
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return ingress[0].get("ip") if ingress else None


async def _until(fn: Any, limit: float) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = await fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{getattr(fn, '__name__', 'condition')} not reached within {limit:.0f}s")
        await asyncio.sleep(0.1)


def summarise(rounds: list[RoundResult]) -> dict[str, Any]:
    """Per scenario and action: requests, failures (total, by kind, per round), and per leaving
    pod the medians and maxima of deletion → SIGTERM, → gone, → drained by the load balancer,
    and SIGTERM after the load balancer's drain (positive: the pod waited past the drain;
    negative: SIGTERM came first)."""
    out: dict[str, Any] = {}
    for r in rounds:
        entry = out.setdefault(r.scenario, {}).setdefault(
            r.action,
            {
                "rounds": 0,
                "requests": 0,
                "failed": 0,
                "failed_by_kind": {},
                "failed_per_round": [],
                "pods": [],
            },
        )
        entry["rounds"] += 1
        entry["requests"] += r.requests
        entry["failed"] += r.failed
        entry["failed_per_round"].append(r.failed)
        for k, v in r.failures.items():
            entry["failed_by_kind"][k] = entry["failed_by_kind"].get(k, 0) + v
        entry["pods"] += r.pods
    for actions in out.values():
        for entry in actions.values():
            pods: list[PodTimes] = entry.pop("pods")
            entry["pods"] = len(pods)
            for key, values in (
                ("to_sigterm_s", [p.to_sigterm for p in pods if p.to_sigterm is not None]),
                ("to_gone_s", [p.to_gone for p in pods if p.to_gone is not None]),
                ("lb_drained_s", [p.lb_drained for p in pods if p.lb_drained is not None]),
                (
                    "sigterm_after_lb_drain_s",
                    [
                        p.to_sigterm - p.lb_drained
                        for p in pods
                        if p.to_sigterm is not None and p.lb_drained is not None
                    ],
                ),
            ):
                if values:
                    entry[key] = {
                        "p50": round(statistics.median(values), 2),
                        "min": round(min(values), 2),
                        "max": round(max(values), 2),
                    }
            entry["sigterm_before_lb_drain"] = sum(
                1
                for p in pods
                if p.to_sigterm is not None and (p.lb_drained is None or p.to_sigterm < p.lb_drained - 0.05)
            )
    return out
