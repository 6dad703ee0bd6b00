"""Check gates: run each ReadinessCheck against the pods that carry its gate, write the gate.

One asyncio task per (check, pod), its first run spread over the period by a hash of the pair
(no thundering herd), all bounded by one semaphore, stopped when the pod terminates or goes or
the check changes or goes.  The tasks share nothing with the load-balancer work queue, so a
slow check never delays a load-balancer gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from podgate.controller import metrics
from podgate.controller.gatewriter import GateWriter
from podgate.kube.api import Kube, Obj, PatchType, Resource
from podgate.kube.events import EventRecorder, now_rfc3339
from podgate.kube.informer import EventType, Informer, key_of
from podgate.model import checks as chk
from podgate.model import conditions as cond
from podgate.model.probes import ProbeSpecError, ProbeState, observe, resolve_port
from podgate.model.types import PodView, containers, is_terminating, meta_of, pod_conditions, pod_ip, pod_spec

log = logging.getLogger(__name__)
Pair = tuple[str, str]  # (check key, pod key)


READINESS_CHECKS = Resource(chk.GROUP, chk.VERSION, chk.PLURAL, chk.KIND)


def checks_informer(kube: Kube) -> Informer[Obj]:
    # snapshots: the webhook reads them from its own thread
    return Informer(kube, READINESS_CHECKS, snapshots=True)


def parsed_checks(informer: Informer[Obj]) -> list[chk.CheckSpec]:
    """Every usable ReadinessCheck in the cache (for the webhook's injection, from its thread:
    the informer's immutable snapshot)."""
    out = []
    for obj in informer.snapshot().values():
        with contextlib.suppress(chk.CheckSpecError, KeyError, TypeError, ValueError):
            out.append(chk.parse_check(obj))
    return out


class CheckRunner:
    def __init__(
        self,
        kube: Kube,
        pods: Informer[PodView],
        checks: Informer[Obj],
        gates: GateWriter,
        recorder: EventRecorder,
        concurrency: int = 64,
        prometheus_allow: Sequence[str] = (),
    ) -> None:
        """``prometheus_allow``: the administrator's ``--prometheus-allow`` entries (validated
        at start-up); a Prometheus check outside them is refused without a request."""
        self.kube = kube
        self.prometheus_allow = tuple(chk.parse_allowed(a) for a in prometheus_allow)
        self.pods, self.checks, self.gates, self.recorder = pods, checks, gates, recorder
        self.sem = asyncio.Semaphore(concurrency)
        self.tasks: dict[Pair, tuple[str, asyncio.Task[None]]] = {}  # pair → (check version, task)
        self.ready: dict[Pair, bool] = {}
        self._dirty = asyncio.Event()
        self._status_written: dict[str, tuple[int, int, str]] = {}
        self.http: aiohttp.ClientSession | None = None
        pods.add_handler(self._on_change)
        checks.add_handler(self._on_check)
        # only pods with a check gate are looked at, by the checks they name
        pods.add_index(CHECK_INDEX, _check_keys)

    def _on_change(self, kind: EventType, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        self._dirty.set()

    def _on_check(self, kind: EventType, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        """A check deleted takes its last written status with it (its tasks stop at the next
        sync, as a deleted pod's do)."""
        if kind == "DELETED":
            self._status_written.pop(key_of(obj), None)
        self._dirty.set()

    def tracked(self) -> dict[str, int]:
        """How many entries each of the runner's per-(check, pod) and per-check maps holds
        (leak tests, the churn benchmark)."""
        return {
            "tasks": len(self.tasks),
            "ready": len(self.ready),
            "status_written": len(self._status_written),
        }

    def refusal(self, spec: chk.CheckSpec) -> str | None:
        """Why the check may not run here (a Prometheus URL outside the allowlist), or None."""
        if isinstance(spec.check, chk.PrometheusCheck):
            return chk.prometheus_url_refusal(spec.check.url, self.prometheus_allow)
        return None

    async def run(self) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True, resolver=GuardedResolver())
        )
        try:
            status = asyncio.create_task(self._status_loop())
            while True:
                await self._sync()
                self._dirty.clear()
                await self._dirty.wait()
        finally:
            status.cancel()
            for _, task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*(task for _, task in self.tasks.values()), return_exceptions=True)
            self.tasks.clear()  # a later run (leadership won again) starts every check afresh
            self.ready.clear()
            await self.http.close()

    async def _sync(self) -> None:
        """Start a task per wanted (check, pod); stop the unwanted; report gates whose check is gone."""
        wanted: dict[Pair, str] = {}
        checked = {
            key_of(p): p
            for value in self.pods.index_values(CHECK_INDEX)
            for p in self.pods.by_index(CHECK_INDEX, value)
        }
        for pod_key, pod in checked.items():
            meta = meta_of(pod)
            if is_terminating(pod) or not pod_ip(pod):
                continue
            for gate in cond.readiness_gates(pod_spec(pod)):
                name = chk.check_of_gate(gate)
                if name is None:
                    continue
                check_key = f"{meta['namespace']}/{name}"
                obj = self.checks.get(check_key)
                if obj is None:
                    await self._fail(pod, gate, "CheckNotFound", f"ReadinessCheck {check_key} does not exist")
                    continue
                try:
                    spec = chk.parse_check(obj)
                except (chk.CheckSpecError, KeyError, TypeError, ValueError) as e:
                    await self._fail(pod, gate, "CheckInvalid", f"ReadinessCheck {check_key}: {e}")
                    continue
                refused = self.refusal(spec)
                if refused is not None:
                    await self._fail(pod, gate, chk.URL_NOT_ALLOWED, f"ReadinessCheck {check_key}: {refused}")
                    continue
                wanted[(check_key, pod_key)] = str(
                    obj["metadata"].get("generation") or obj["metadata"].get("resourceVersion")
                )
        for pair, (version, task) in list(self.tasks.items()):
            if wanted.get(pair) != version or task.done():
                task.cancel()
                del self.tasks[pair]
                self.ready.pop(pair, None)
        for pair, version in wanted.items():
            if pair not in self.tasks:
                self.tasks[pair] = (version, asyncio.create_task(self._loop(pair), name=f"check {pair}"))

    async def _fail(self, pod: PodView, gate: str, reason: str, message: str) -> None:
        """A gate whose check cannot run: False with why (sticky: a True gate stays True)."""
        await self.gates.write(
            pod, {"type": gate, "status": cond.FALSE, "reason": reason, "message": message}, sticky=True
        )

    async def _loop(self, pair: Pair) -> None:
        check_key, pod_key = pair
        spec = chk.parse_check(self.checks.cache[check_key])
        pod = self.pods.cache[pod_key]
        offset = int(hashlib.sha1(f"{pair}{meta_of(pod)['uid']}".encode()).hexdigest()[:8], 16) % 1000
        await asyncio.sleep(spec.period * offset / 1000)
        state, sticky = ProbeState(), spec.mode == "startup"
        while True:
            current = self.pods.get(pod_key)
            if current is None or is_terminating(current):
                return
            pod = current
            async with self.sem:
                ok, detail = await self._run(spec, pod)
            state = observe(state, spec, ok)
            self.ready[pair] = state.ready
            desired = chk.condition_for(spec.gate, state.ready, True, detail)
            await self.gates.write(pod, desired, sticky=sticky)
            metrics.CHECK_RUNS.labels(*check_key.split("/", 1)).inc()
            if sticky and state.ready:
                return  # startup mode: True stays True, nothing more to check
            await asyncio.sleep(spec.period)

    async def _run(self, spec: chk.CheckSpec, pod: PodView) -> tuple[bool, str]:
        """One check; (passed, what it saw in words)."""
        ip = pod_ip(pod)
        check = spec.check
        try:
            if isinstance(check, chk.PrometheusCheck):
                return await self._prometheus(check, spec.timeout, pod)
            port = _port(check.port, pod)
            if isinstance(check, chk.TcpCheck):
                async with asyncio.timeout(spec.timeout):
                    _, writer = await asyncio.open_connection(ip, port)
                writer.close()
                return True, f"TCP connect to {ip}:{port} succeeded"
            url = f"{check.scheme.lower()}://{ip}:{port}{check.path}"
            assert self.http is not None
            async with self.http.get(
                url, timeout=aiohttp.ClientTimeout(total=spec.timeout), ssl=False, allow_redirects=False
            ) as resp:
                body = (await resp.content.read(65536)).decode(errors="replace")
                ok, words = chk.http_verdict(check, resp.status, body)
                return ok, f"GET {url} {words}"
        except TimeoutError:
            return False, f"no answer within {spec.timeout:g}s"
        except (OSError, aiohttp.ClientError, ProbeSpecError, chk.CheckSpecError) as e:
            return False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    async def _prometheus(self, check: chk.PrometheusCheck, timeout: float, pod: PodView) -> tuple[bool, str]:
        refused = chk.prometheus_url_refusal(check.url, self.prometheus_allow)
        if refused is not None:  # _sync starts no task for it; never a request, whatever the path
            return False, refused
        query = chk.render_query(check.query, pod)
        assert self.http is not None
        async with self.http.get(
            f"{check.url}/api/v1/query",
            params={"query": query},
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,  # a redirect would leave the allowed server
        ) as resp:
            body = await resp.json(content_type=None)
        if resp.status != 200 or body.get("status") != "success":
            return False, f"query `{query}` failed: {body.get('error') or resp.status}"
        data: dict[str, Any] = body.get("data") or {}
        result: Any = data.get("result")
        if data.get("resultType") == "scalar":
            raw = result[1]
        elif data.get("resultType") == "vector" and result:
            raw = result[0]["value"][1]
        else:
            return False, f"query `{query}` returned no samples"
        value = float(raw)
        ok = chk.compare(value, check.operator, check.value)
        need = f"needs {check.operator} {check.value:g}"
        return ok, f"query `{query}` returned {value:g}, {need}"

    async def _status_loop(self) -> None:
        """Keep each ReadinessCheck's status (passing, pending, Usable) current, writing on change."""
        while True:
            await asyncio.sleep(1.0)
            for key, obj in list(self.checks.cache.items()):
                with contextlib.suppress(Exception):
                    await self._write_status(key, obj)

    async def _write_status(self, key: str, obj: Obj) -> None:
        ns, name = key.split("/", 1)
        gate = chk.check_gate(name)
        passing = pending = 0
        for pod in self.pods.by_index(CHECK_INDEX, key):
            c = cond.find(pod_conditions(pod), gate)
            if c is not None and c.get("status") == cond.TRUE:
                passing += 1
            else:
                pending += 1
        try:
            refused = self.refusal(chk.parse_check(obj))
            usable = (
                {"type": "Usable", "status": "True", "reason": "SpecValid", "message": "the check can run"}
                if refused is None
                else {"type": "Usable", "status": "False", "reason": chk.URL_NOT_ALLOWED, "message": refused}
            )
        except (chk.CheckSpecError, KeyError, TypeError, ValueError) as e:
            usable = {"type": "Usable", "status": "False", "reason": "InvalidSpec", "message": str(e)}
        mark = (passing, pending, usable["status"] + usable["message"])
        if self._status_written.get(key) == mark:
            return
        old: dict[str, Any] = next(
            (c for c in (obj.get("status") or {}).get("conditions") or () if c.get("type") == "Usable"), {}
        )
        usable["lastTransitionTime"] = (
            str(old.get("lastTransitionTime")) if old.get("status") == usable["status"] else now_rfc3339()
        )
        await self.kube.patch(
            READINESS_CHECKS,
            name,
            {"status": {"passing": passing, "pending": pending, "conditions": [usable]}},
            ns,
            patch_type=PatchType.MERGE,
            subresource="status",
        )
        self._status_written[key] = mark
        if usable["status"] == "False":
            self.recorder.emit_later(obj, "ReadinessCheck", usable["reason"], usable["message"], "Warning")


CHECK_INDEX = "check"


class GuardedResolver(AbstractResolver):
    """The system resolver, without link-local and metadata answers: an allowed host name that
    resolves to 169.254.169.254 (a DNS record pointed there, ``2852039166``) is not dialled.
    Literal addresses never reach a resolver; :func:`checks.prometheus_url_refusal` refuses those."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        kept = [a for a in answers if not _forbidden(a["host"])]
        if not kept:
            raise OSError(f"{host} resolves only to link-local or cloud metadata addresses: not queried")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _forbidden(address: str) -> bool:
    ip = chk.host_address(address)
    return ip is None or chk.forbidden_address(ip)


def _check_keys(pod: PodView) -> list[str]:
    """The ReadinessChecks (namespace/name) whose gates the pod carries."""
    ns = meta_of(pod).get("namespace")
    return [f"{ns}/{name}" for g in cond.readiness_gates(pod_spec(pod)) if (name := chk.check_of_gate(g))]


def _port(port: int | str, pod: PodView) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for container in containers(pod):
        with contextlib.suppress(ProbeSpecError):
            return resolve_port(port, container)
    raise chk.CheckSpecError(f"no container of the pod has a port named {port!r}")
