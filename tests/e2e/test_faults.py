"""Faults injected under a gated rollout or scale with load (issue 24): what a user would see
is counted, failed requests and gate writes the load balancer did not vouch for.

- The API server frozen (SIGSTOP) for 20 s in the middle of a rollout, two replicas: every gate
  write the API server took was sent by the holder of the lease while its lease was fresh (by
  the send time podgate stamps in each request's Audit-ID), and taken before the lease could
  expire unless it was in the frozen server's socket; no gate was written True twice, the
  rollout converges after the resume.
- One replica's path to the API server cut (a black hole: a proxy in the test that stops
  forwarding and answers nothing) while it leads: it stops leading within the renew deadline
  plus a retry period, the other takes over, no request fails.
- The ELB API (the moto front) throttling every call for 2 minutes in continuous mode: no open
  gate closes, the pod created meanwhile waits and says why, no request fails; podgate asks
  again within one poll interval of the API answering, and the pod is Ready soon after.
- One HAProxy of an attach-mode pair frozen (SIGSTOP), under each HA policy: ``all`` holds the
  new pod's gate False naming the frozen one; ``reachable`` opens it on the other's word; no
  open gate closes, no gate opens without the load balancer's UP, no request fails.

Who wrote a gate is read from the API server's audit log (the sandbox audits podgate's writes to
pods' status and to Leases; the controller's User-Agent carries its identity, and each request's
``Audit-ID``, which the server records as the event's ``auditID``, when it was sent), not from
the controllers' own account.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from podgate.kube.api import PODS
from podgate.kube.client import ApiKube, api_client, audit_id_time
from podgate.kube.informer import Informer
from podgate.providers.haproxy_runtime import Runtime
from podgate_sandbox.controlplane import Sandbox
from podgate_sandbox.loadgen import LoadGenerator
from podgate_sandbox.rollout import RolloutLab

from . import test_aws_provider as aws_e2e
from . import test_haproxy_pair as pair_e2e
from .conftest import (
    OFFSET,
    STAND_IN_HEALTH_PORT,
    SandboxHandle,
    condition,
    controller_replaced,
    grant,
    reconciled_after,
    samples,
    scrape,
    wait_for,
)
from .test_controller import INJECT, deployment, gate, lb_service
from .test_webhook_replicas import front_door_up

pytestmark = pytest.mark.sandbox

#: the fixtures these scenarios share with the provider tests
elb = aws_e2e.elb
pair = pair_e2e.pair

#: the sandbox's controllers' lease (``--lease-duration 6``): renew deadline 4 s, retry 0.8 s
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 6.0, 4.0, 0.8
LEASE = "podgate-controller"
GATE_PREFIX = "service.readiness.podgate.dev/"


def health_port(replica: int) -> int:
    return 8081 + 100 * replica + OFFSET


def leading(replica: int) -> float | None:
    """The replica's ``podgate_leader`` (None while it does not answer)."""
    try:
        status, text = scrape(health_port(replica))
    except OSError:
        return None
    values = samples(text, "podgate_leader") if status == 200 else []
    return values[0] if values else None


# -- what the API server recorded -----------------------------------------------------------
@dataclass(frozen=True)
class Write:
    """One write of podgate's the API server finished (audit stage ResponseComplete)."""

    received: float  # the server's wall clock (epoch seconds)
    completed: float
    writer: str  # the replica's identity, from its User-Agent
    kind: str  # "lease" or "gate"
    namespace: str
    name: str
    #: lease: the holder written; gate: (type, status, reason) of each podgate condition written
    holder: str = ""
    conditions: tuple[tuple[str, str, str], ...] = ()
    #: when podgate sent it (the time in its Audit-ID); None for a request without podgate's ID
    sent: float | None = None
    code: int = 200


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def audited(path: Path, *, refused: bool = False) -> list[Write]:
    """podgate's successful (with ``refused``: also its refused) writes of its leader Lease and
    of gates, in the order the API server completed them."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        ref, code = e.get("objectRef") or {}, (e.get("responseStatus") or {}).get("code", 0)
        if e.get("stage") != "ResponseComplete" or not (refused or 200 <= code <= 299):
            continue
        agent = e.get("userAgent") or ""
        writer = agent[agent.find("(") + 1 : agent.rfind(")")] if "(" in agent else agent
        body = e.get("requestObject") or {}
        common = (_epoch(e["requestReceivedTimestamp"]), _epoch(e["stageTimestamp"]), writer)
        stamp = {"sent": audit_id_time(e.get("auditID") or ""), "code": code}
        if ref.get("resource") == "leases" and ref.get("name") == LEASE:
            holder = (body.get("spec") or {}).get("holderIdentity") or ""
            out.append(Write(*common, "lease", ref.get("namespace", ""), LEASE, holder=holder, **stamp))
        elif ref.get("resource") == "pods" and ref.get("subresource") == "status":
            conds = tuple(
                (c["type"], c.get("status", ""), c.get("reason", ""))
                for c in (body.get("status") or {}).get("conditions") or ()
                if c.get("type", "").startswith(GATE_PREFIX)
            )
            if conds:
                out.append(
                    Write(
                        *common,
                        "gate",
                        ref.get("namespace", ""),
                        ref.get("name", ""),
                        conditions=conds,
                        **stamp,
                    )
                )
    return sorted(out, key=lambda w: w.completed)


#: how much earlier than the test noted a stall's end the API server may have taken a request
#: (the test reads its clock after SIGCONT returns)
STALL_SLACK = 0.2


def in_flight_across(w: Write, stalls: Sequence[tuple[float, float]]) -> bool:
    """Whether the write was sent before a stall of the API server ended and taken at its end:
    it sat in the stopped server's socket, where no client can take it back."""
    return w.sent is not None and any(w.sent < end <= w.received + STALL_SLACK for _, end in stalls)


def lease_violations(
    writes: list[Write], namespace: str, stalls: Sequence[tuple[float, float]] = ()
) -> list[str]:
    """Gate writes in ``namespace`` the lease did not cover, judged by when podgate sent each
    (its Audit-ID) against the Lease writes the API server completed before that:

    - sent by a replica that was not the holder of record (two replicas writing);
    - sent when the writer's last renewal was a renew deadline old or older (past its fence);
    - taken by the server after the writer's write deadline (that renewal + renew deadline +
      retry period, less than a lease duration: the client gives up by then), unless it was in
      flight across a stall of the API server (``stalls``: (start, end) wall times);
    - sent with no time of podgate's (no podgate Audit-ID): nothing vouches for it.
    """
    holders: list[tuple[float, str]] = []  # (completed, holder written)
    renewals: dict[str, list[tuple[float, float]]] = {}  # writer → (completed, received)
    for w in writes:
        if w.kind == "lease":
            holders.append((w.completed, w.holder))
            if w.holder == w.writer:
                renewals.setdefault(w.writer, []).append((w.completed, w.received))
    problems = []
    for w in writes:
        if w.kind != "gate" or w.namespace != namespace:
            continue
        what = f"{w.name} {w.conditions} by {w.writer}"
        if w.sent is None:
            problems.append(f"{what}: no send time (Audit-ID) of podgate's")
            continue
        holder = next((h for done, h in reversed(holders) if done <= w.sent), "")
        if holder != w.writer:
            problems.append(f"{what} sent while {holder or 'nobody'} led")
        renewed = max((r for done, r in renewals.get(w.writer, ()) if done <= w.sent), default=-float("inf"))
        if w.sent - renewed >= RENEW_DEADLINE:
            problems.append(f"{what} sent {w.sent - renewed:.1f}s after the writer's last renewal")
        late = w.received - (renewed + RENEW_DEADLINE + RETRY_PERIOD)
        if late > 0 and not in_flight_across(w, stalls):
            problems.append(f"{what} taken {late:.1f}s after its write deadline, with no stall to excuse it")
    return problems


def trues_written_twice(writes: list[Write], namespace: str) -> list[str]:
    """Gates written True more than once (a writer that did not know it was True already)."""
    seen: dict[tuple[str, str], int] = {}
    for w in writes:
        if w.kind == "gate" and w.namespace == namespace:
            for ctype, status, _ in w.conditions:
                if status == "True":
                    seen[(w.name, ctype)] = seen.get((w.name, ctype), 0) + 1
    return [f"{pod} {ctype} True {n} times" for (pod, ctype), n in seen.items() if n > 1]


# -- what the load balancer said ------------------------------------------------------------
@dataclass
class LBSamples:
    """A backend's servers as HAProxy reports them, every 0.1 s: (wall time, address → status)."""

    runtime: Runtime
    backend: str
    seen: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                rows = await self.runtime.servers(self.backend)
                self.seen.append((time.time(), {r.address.rsplit(":", 1)[0]: r.status for r in rows}))
            await asyncio.sleep(0.1)

    def up_after(self, ip: str, at: float, within: float = 0.5) -> bool:
        """Whether HAProxy reported ``ip`` UP at a sample in ``within`` seconds after ``at``: a
        server UP when its gate was written stays UP for fall × inter (1.5 s here) at least."""
        return any(at <= t <= at + within and status.get(ip, "").startswith("UP") for t, status in self.seen)


def false_trues(writes: list[Write], namespace: str, ips: dict[str, str], lb: LBSamples) -> list[str]:
    """Gates the API server took True while HAProxy did not report the pod's server UP."""
    out = []
    for w in writes:
        if w.kind != "gate" or w.namespace != namespace:
            continue
        for ctype, status, reason in w.conditions:
            if status == "True" and not lb.up_after(ips.get(w.name, "?"), w.completed):
                out.append(f"{w.name} {ctype} True ({reason}) with {ips.get(w.name)} not UP")
    return out


class PodIPs:
    """Every pod's IP in a namespace as it was seen (pods that went are remembered)."""

    def __init__(self, kube: ApiKube, namespace: str) -> None:
        self.ips: dict[str, str] = {}
        self.informer: Informer[dict[str, Any]] = Informer(kube, PODS, namespace=namespace, name="pod ips")
        self.informer.add_handler(self._on)

    def _on(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        if ip := (pod.get("status") or {}).get("podIP"):
            self.ips[pod["metadata"]["name"]] = ip


@contextlib.asynccontextmanager
async def running(*coros: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def second_replica(sandbox: SandboxHandle, replica: int, *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    sb = Sandbox(sandbox.state_dir)
    with open(sandbox.state_dir / "logs" / f"faults-replica-{replica}.log", "a") as log:
        proc = subprocess.Popen(
            sb.controller_argv(replica, *flags), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
    try:
        wait_for(f"replica {replica} up", lambda: leading(replica) is not None, 30)
        yield proc
    finally:
        proc.terminate()
        proc.wait(15)


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block, continued after whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def lab_for(sandbox: SandboxHandle, api: Any, prefix: str) -> RolloutLab:
    """The rollout lab of test_rollout's short form (4 replicas, checks every 0.5 s, rise 3)."""
    return RolloutLab(
        api,
        str(sandbox.state_dir / "haproxy" / "runtime.sock"),
        replicas=4,
        interval=0.5,
        rise=3,
        prefix=prefix,
    )


# -- 1. the API server frozen -----------------------------------------------------------------
FREEZE = 20.0


async def test_the_api_server_frozen_mid_rollout(sandbox: SandboxHandle) -> None:
    """Two replicas, a rollout under load, the API server stopped for 20 s in the middle of it.
    The leader cannot renew: it sends no write once its last renewal is a renew deadline old,
    gives up on a write it sent once that renewal is renew deadline + retry period old (less than
    a lease duration), and leads no more; after the resume one replica leads and finishes.  A
    write sent before or during the freeze is taken by the server only at the resume: the send
    time in its Audit-ID tells it from a stale leader's."""
    audit = Sandbox(sandbox.state_dir).audit_log
    pids = json.loads((sandbox.state_dir / "pids.json").read_text())
    api = await api_client(str(sandbox.kubeconfig))
    lab = lab_for(sandbox, api, f"freeze-{uuid.uuid4().hex[:4]}")
    ns = lab.namespace("podgate")
    try:
        with second_replica(sandbox, 1):
            ip = await lab.prepare("podgate")
            ips = PodIPs(ApiKube(api), ns)
            lb = LBSamples(
                Runtime(str(sandbox.state_dir / "haproxy" / "runtime.sock")), f"podgate.{ns}.web.80"
            )
            stalls: list[tuple[float, float]] = []

            async def freeze() -> None:
                await asyncio.sleep(1.5)  # the first new pods are registering
                at = time.time()
                with frozen(pids["kube-apiserver"]):
                    await asyncio.sleep(FREEZE)
                stalls.append((at, time.time()))

            async with running(ips.informer.run(), lb.run()):
                result = await lab.round("podgate", ip, 1, during=freeze)
            leaders = [leading(0), leading(1)]
    finally:
        await lab.close()
        await api.close()
        await asyncio.to_thread(
            wait_for, "the sandbox's controller leading again", lambda: leading(0) == 1.0, 30
        )
    writes = audited(audit)
    gates_written = [w for w in writes if w.kind == "gate" and w.namespace == ns]
    # what the freeze caught in flight: gate writes sent before the resume and taken at it, by
    # the server's answer (a client that gave up has closed its connection: the server may
    # still finish the write, or fail it)
    caught = [
        w
        for w in audited(audit, refused=True)
        if w.kind == "gate" and w.namespace == ns and in_flight_across(w, stalls)
    ]
    caught_text = ", ".join(
        f"{w.name} answered {w.code}, sent {w.sent - stalls[0][0]:+.2f}s into the freeze"  # type: ignore[operator]
        for w in caught
    )
    print(f"gate writes: {len(gates_written)} taken; in flight across the freeze: {caught_text or 'none'}")
    assert stalls and result.requests >= 200
    assert result.failed == 0, result.failures
    assert len(result.gate_latency_s) == 4, "every new pod's gate converged after the resume"
    assert sorted(x or 0.0 for x in leaders) == [0.0, 1.0] and None not in leaders, (
        f"one leader after the resume: {leaders}"
    )
    assert sum(1 for w in gates_written for c in w.conditions if c[1] == "True") >= 4, gates_written
    assert lease_violations(writes, ns, stalls) == []
    assert trues_written_twice(writes, ns) == []
    assert false_trues(writes, ns, ips.ips, lb) == []


# -- 2. one replica's path to the API server cut ----------------------------------------------
class BlackHole:
    """A TCP proxy to the API server for one replica; :meth:`cut` makes it a black hole (what a
    partition looks like: bytes go nowhere, nothing answers, no connection is refused)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.is_cut = upstream, False
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def cut(self) -> None:
        self.is_cut = True

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            if self.is_cut:
                await self._pump(reader, None)
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self.writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
        while data := await reader.read(65536):
            if writer is None or self.is_cut:
                continue  # swallowed
            writer.write(data)
            await writer.drain()


async def test_one_replicas_path_to_the_api_server_cut(sandbox: SandboxHandle, tmp_path: Path) -> None:
    """The leader reaches the API server through a proxy; mid-rollout the proxy becomes a black
    hole.  The leader stops leading within the renew deadline plus a retry period of the cut
    (its fence), the other replica takes over once it has seen the Lease unchanged for a lease
    duration, the rollout completes and no request fails."""
    sb = Sandbox(sandbox.state_dir)
    proxy = BlackHole(("127.0.0.1", 6443 + OFFSET))
    port = await proxy.start()
    config = yaml.safe_load((sandbox.state_dir / "controller.kubeconfig").read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    kubeconfig = tmp_path / "through-proxy.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    kubeconfig.chmod(0o600)
    api = await api_client(str(sandbox.kubeconfig))
    lab = lab_for(sandbox, api, f"cut-{uuid.uuid4().hex[:4]}")
    ns = lab.namespace("podgate")
    stepped_down: list[float] = []
    took_over: list[float] = []
    try:
        with sb.controller_replaced("--kubeconfig", str(kubeconfig), env={}, log="faults-cut-replica-1.log"):
            await asyncio.to_thread(wait_for, "replica 1 leading", lambda: leading(1) == 1.0, 30)
            with second_replica(sandbox, 2):
                await asyncio.to_thread(wait_for, "the front door up", front_door_up, 15)
                ip = await lab.prepare("podgate")
                ips = PodIPs(ApiKube(api), ns)
                lb = LBSamples(Runtime(str(sb.haproxy_runtime_socket)), f"podgate.{ns}.web.80")

                async def cut() -> None:
                    await asyncio.sleep(1.0)
                    proxy.cut()
                    t0 = time.monotonic()
                    while leading(1) != 0.0 or leading(2) != 1.0:
                        if leading(1) == 0.0 and not stepped_down:
                            stepped_down.append(time.monotonic() - t0)
                        if leading(2) == 1.0 and not took_over:
                            took_over.append(time.monotonic() - t0)
                        await asyncio.sleep(0.05)
                    stepped_down.append(time.monotonic() - t0)
                    took_over.append(time.monotonic() - t0)

                async with running(ips.informer.run(), lb.run()):
                    result = await lab.round("podgate", ip, 1, during=cut)
    finally:
        await proxy.close()
        await lab.close()
        await api.close()
    writes = audited(sb.audit_log)
    assert stepped_down[0] <= RENEW_DEADLINE + RETRY_PERIOD + 0.2, (
        f"stepped down {stepped_down[0]:.1f}s after the cut"
    )
    assert took_over[0] <= LEASE_DURATION + 2 * RETRY_PERIOD + 0.5, (
        f"took over {took_over[0]:.1f}s after the cut"
    )
    assert result.requests >= 200
    assert result.failed == 0, result.failures
    assert len(result.gate_latency_s) == 4, "every new pod's gate converged"
    assert lease_violations(writes, ns) == []
    assert trues_written_twice(writes, ns) == []
    assert false_trues(writes, ns, ips.ips, lb) == []


# -- 3. the ELB API throttling ----------------------------------------------------------------
THROTTLED_FOR = 120.0
#: how late past a poll interval a retry may start on this busy 2-core machine (event loop lag)
SCHEDULING_SLACK = 0.25
AWS_POLL = 0.5


class ReadyPodsLoad:
    """Requests to the namespace's Ready pods, round robin, as a Service's endpoints carry them
    (kube-proxy's view): a request fails when no pod is Ready or the pod does not answer."""

    def __init__(self, kube: ApiKube, namespace: str, rate: float = 50.0) -> None:
        self.informer: Informer[dict[str, Any]] = Informer(kube, PODS, namespace=namespace, name="ready pods")
        self.rate, self.ok, self.failed = rate, 0, list[str]()
        self._stop = asyncio.Event()

    def ready(self) -> list[str]:
        return sorted(
            (p.get("status") or {}).get("podIP", "")
            for p in self.informer.cache.values()
            if (condition(p, "Ready") or {}).get("status") == "True"
            and not p["metadata"].get("deletionTimestamp")
        )

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while not self._stop.is_set():
                ips = self.ready()
                if not ips:
                    self.failed.append("no Ready pod")
                else:
                    try:
                        async with s.get(f"http://{random.choice(ips)}:8080/") as r:
                            await r.read()
                        if r.status >= 500:
                            self.failed.append(f"HTTP {r.status}")
                        else:
                            self.ok += 1
                    except (aiohttp.ClientError, TimeoutError) as e:
                        self.failed.append(type(e).__name__)
                await asyncio.sleep(1 / self.rate)

    def stop(self) -> None:
        self._stop.set()


async def test_a_throttled_elb_api_closes_no_gate(
    sandbox: SandboxHandle, namespace: str, elb: tuple[Any, str]
) -> None:
    """Continuous mode, three pods serving; the ELB API throttles every call for 2 minutes (240
    poll periods) while the Deployment scales to four.  No open gate closes (its
    lastTransitionTime stays), the new pod's gate is False saying podgate cannot read the load
    balancer, no request to the Ready pods fails.  Once the API answers, podgate's next call
    comes within one poll interval however long the throttling lasted (no back-off, the
    provider's or the work queue's, grew past it), and the new pod is Ready soon after."""
    double, arn = elb
    ctype = gate("web")
    log = f"faults-aws-{namespace}.log"
    with controller_replaced(
        sandbox,
        "--aws-provider",
        "aws",
        "--aws-rate",
        "50",
        "--aws-poll-period",
        str(AWS_POLL),
        env=aws_e2e.AWS_ENV,
        log=log,
    ):
        grant(sandbox, "aws", namespace, arn)
        await aws_e2e.tag_for(arn, f"{namespace}/web")  # the administrator's ownership tags
        annotations = {
            "podgate.dev/load-balancer-provider": "aws",
            "podgate.dev/aws-target-group-arn": arn,
            "podgate.dev/gate-mode": "continuous",
        }
        sandbox.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "annotations": annotations},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
            namespace,
        )
        sandbox.apply(deployment("web", 3, gates=[ctype]), namespace)

        def ready_pods(n: int) -> list[dict[str, Any]] | None:
            ps = [p for p in sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"]]
            ok = len(ps) == n and all((condition(p, "Ready") or {}).get("status") == "True" for p in ps)
            return ps if ok else None

        before = await asyncio.to_thread(wait_for, "three pods Ready", lambda: ready_pods(3), 60)
        opened = {p["metadata"]["name"]: condition(p, ctype) for p in before}
        api = await api_client(str(sandbox.kubeconfig))
        load = ReadyPodsLoad(ApiKube(api), namespace)
        try:
            async with running(load.informer.run()):
                await asyncio.to_thread(wait_for, "the load's pods", lambda: len(load.ready()) == 3, 10)
                load_task = asyncio.create_task(load.run())
                double.script.throttle_next = 10**9
                sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=4")
                await asyncio.sleep(THROTTLED_FOR)
                # several failed reads, however slow the machine made the provider's retries
                await asyncio.to_thread(
                    wait_for, "20 throttled calls", lambda: double.script.throttled >= 20, 30
                )
                pods = sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"]
                new = [p for p in pods if p["metadata"]["name"] not in opened]
                throttled = double.script.throttled
                double.script.throttle_next = 0
                answering = time.monotonic()
                await asyncio.to_thread(wait_for, "four pods Ready", lambda: ready_pods(4), 60, 0.05)
                recovered = time.monotonic() - answering
                asked_again = min((t for t in double.script.answered if t >= answering), default=None)
                after = {p["metadata"]["name"]: condition(p, ctype) for p in ready_pods(4) or ()}
                load.stop()
                await load_task
        finally:
            await api.close()
    assert throttled >= 20, f"the ELB API refused only {throttled} calls"
    assert len(new) == 1
    waiting = condition(new[0], ctype) or {}
    assert (waiting.get("status"), waiting.get("reason")) == ("False", "ProviderError"), waiting
    assert "cannot read the load balancer since" in waiting.get("message", ""), waiting
    for name, c in opened.items():
        assert after[name] == c, f"{name}'s open gate changed under throttling: {c} → {after[name]}"
    assert load.failed == [], f"{len(load.failed)} failed of {load.ok + len(load.failed)}: {load.failed[:5]}"
    assert load.ok >= 500
    assert asked_again is not None
    print(
        f"throttled {throttled} calls; podgate asked again {asked_again - answering:.2f}s and the "
        f"pod was Ready {recovered:.2f}s after the API answered again"
    )
    assert asked_again - answering <= AWS_POLL + SCHEDULING_SLACK, (
        f"asked again {asked_again - answering:.2f}s after the API answered (poll interval {AWS_POLL}s)"
    )
    assert recovered <= 3 * AWS_POLL + 2.0, f"Ready {recovered:.1f}s after the API answered again"


# -- 4. one HAProxy of a pair frozen ----------------------------------------------------------
@pytest.mark.parametrize("policy", ["all", "reachable"])
async def test_one_haproxy_of_a_pair_frozen(
    sandbox: SandboxHandle, namespace: str, pair: tuple[list[str], list[subprocess.Popen[bytes]]], policy: str
) -> None:
    """Two pods served through the pair; one HAProxy frozen (SIGSTOP, so its socket accepts and
    never answers); the Deployment scales to three under load through the other.  ``all``: the
    new pod's gate stays False naming the frozen HAProxy until it is continued, then opens;
    ``reachable``: it opens on the live HAProxy's UP.  Either way no open gate closes, no gate
    opens before the live HAProxy says UP, and no request fails."""
    sockets, procs = pair
    ctype = gate("web")
    sb = Sandbox(sandbox.state_dir)
    with sb.controller_replaced(env={}, log=f"faults-pair-{policy}-{namespace}.log") as swap:
        await asyncio.to_thread(pair_e2e.attach_to, swap, sockets, policy)
        grant(sandbox, "haproxy", namespace, "app")
        sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
        annotations = {"podgate.dev/load-balancer-provider": "haproxy", "podgate.dev/haproxy-backend": "app"}
        sandbox.apply(lb_service("web", "web", "ClusterIP", **annotations), namespace)
        sandbox.apply(deployment("web", 2), namespace)

        def pods_ready(n: int) -> list[dict[str, Any]] | None:
            ps = [
                p
                for p in sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"]
                if not p["metadata"].get("deletionTimestamp")
            ]
            ok = len(ps) == n and all((condition(p, "Ready") or {}).get("status") == "True" for p in ps)
            return ps if ok else None

        before = await asyncio.to_thread(wait_for, "two pods Ready", lambda: pods_ready(2), 60)
        opened = {p["metadata"]["name"]: condition(p, ctype) for p in before}
        log_start = sb.audit_log.stat().st_size
        api = await api_client(str(sandbox.kubeconfig))
        ips = PodIPs(ApiKube(api), namespace)
        live = LBSamples(Runtime(sockets[0]), "app")
        load = LoadGenerator(f"http://{pair_e2e.FRONTENDS[0]}:{pair_e2e.PORT}/", rate=100, max_seconds=120)
        try:
            async with running(ips.informer.run(), live.run()):
                load_task = asyncio.create_task(load.run())
                with frozen(procs[1].pid):
                    sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=3")
                    if policy == "all":
                        pending = await asyncio.to_thread(
                            wait_for,
                            "the new pod's containers ready",
                            lambda: [
                                p
                                for p in sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"]
                                if p["metadata"]["name"] not in opened
                                and (condition(p, "ContainersReady") or {}).get("status") == "True"
                            ],
                            30,
                        )
                        name = pending[0]["metadata"]["name"]
                        await asyncio.to_thread(
                            reconciled_after, sandbox, f"{namespace}/web", port=STAND_IN_HEALTH_PORT
                        )
                        held = condition(sandbox.get("pod", name, "-n", namespace), ctype) or {}
                        assert held.get("status") == "False", held
                        assert sockets[1] in held.get("message", ""), f"names the frozen HAProxy: {held}"
                    else:
                        await asyncio.to_thread(wait_for, "three pods Ready", lambda: pods_ready(3), 60)
                # continued: every pod is Ready (under ``all`` the new one only now), and the
                # continued HAProxy serves the new pod too
                after_pods = await asyncio.to_thread(wait_for, "three pods Ready", lambda: pods_ready(3), 60)
                new_ip = next(p["status"]["podIP"] for p in after_pods if p["metadata"]["name"] not in opened)
                await asyncio.to_thread(
                    wait_for,
                    "the continued HAProxy to hold the new pod",
                    lambda: new_ip in {addr for _, addr, _ in pair_e2e.servers(sockets[1])},
                    20,
                )
                await asyncio.sleep(1.0)
                load.stop()
                result = await load_task
        finally:
            await api.close()
    with sb.audit_log.open() as f:
        f.seek(log_start)
        tail = f.read()
    tmp = sb.log_dir / f"audit-{namespace}.json"
    tmp.write_text(tail)
    writes = audited(tmp)
    tmp.unlink()
    after = {p["metadata"]["name"]: condition(p, ctype) for p in after_pods}
    for n, c in opened.items():
        assert after[n] == c, f"{n}'s open gate changed while an HAProxy was frozen: {c} → {after[n]}"
    assert result.total >= 300
    assert result.failed == 0, result.by_kind()
    assert false_trues(writes, namespace, ips.ips, live) == []
    assert [c[1] for w in writes if w.kind == "gate" for c in w.conditions].count("True") == 1, writes
