"""The sandbox's node agent: the kubelet's job for pods whose containers are built-in apps.

It registers a Node and renews its Lease, binds unscheduled pods to itself (there is one node,
so it is the scheduler too), gives each pod a loopback IP, runs its containers, probes them,
writes pod status the way the kubelet does (never touching conditions it does not own), and
carries out graceful deletion: preStop, SIGTERM, grace period, kill, final delete.

Per-pod work runs in asyncio tasks; status writes go through a small pool of writers fed by a
deduplicating queue, so a burst of changes to one pod becomes one PATCH.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import re
import resource
import shlex
import time
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client

from podgate import __version__
from podgate.kube.api import PODS, Obj
from podgate.kube.client import STRATEGIC_MERGE, ApiException, ApiKube, api_client, call, status_of
from podgate.kube.events import EventRecorder, now_micro, now_rfc3339
from podgate.kube.informer import EventType, Informer, key_of, resource_version
from podgate.kube.queue import WorkQueue
from podgate.model import addresses
from podgate.model.probes import ProbeSpec, ProbeSpecError, ProbeState, observe, parse_probe, resolve_port
from podgate_sandbox import hooks, podnet, processes, runtime, scheduling
from podgate_sandbox.app import AppConfigError
from podgate_sandbox.podstatus import ContainerView, State, desired_status, needs_write

log = logging.getLogger("podgate.nodeagent")

HOST_IP = "127.0.0.1"
COMPONENT = "podgate-node-agent"
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0


class ContainerSlot:
    """What the agent knows about one container of a pod."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.image: str = spec.get("image") or ""
        self.runtime: runtime.Runtime | None = None
        self.state: State = "waiting"
        self.reason: str | None = "ContainerCreating"
        self.message: str | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.exit_code: int | None = None
        self.ready = False
        self.restart_count = 0
        self.last_terminated: dict[str, Any] | None = None
        self.container_id: str | None = None

    def view(self) -> ContainerView:
        return ContainerView(
            self.name,
            self.image,
            self.state,
            self.reason,
            self.message,
            self.started_at,
            self.finished_at,
            self.exit_code,
            self.ready,
            self.restart_count,
            self.container_id,
            self.last_terminated,
        )

    def set_terminated(self, code: int, reason: str | None = None) -> None:
        self.state, self.exit_code, self.finished_at = "terminated", code, now_rfc3339()
        self.reason = reason or ("Completed" if code == 0 else "Error")
        self.message, self.ready = None, False


class PodWorker:
    """Runs one pod from first sight to the final delete."""

    def __init__(self, agent: NodeAgent, pod: Obj, ip: str) -> None:
        self.agent, self.pod, self.ip = agent, pod, ip
        self.key = key_of(pod)
        self.uid: str = pod["metadata"]["uid"]
        self.start_time = (pod.get("status") or {}).get("startTime") or now_rfc3339()
        spec = pod["spec"]
        self.slots = {c["name"]: ContainerSlot(c) for c in spec.get("containers") or ()}
        self.init_slots = [ContainerSlot(c) for c in spec.get("initContainers") or ()]
        for s in self.init_slots:  # init containers of the built-in app complete at once
            s.state, s.reason, s.exit_code = "terminated", "Completed", 0
            s.started_at = s.finished_at = self.start_time
        self.terminating = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.done = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"pod {self.key}")

    # -- informer side ----------------------------------------------------------------------
    def update(self, pod: Obj) -> None:
        if resource_version(pod) >= resource_version(self.pod):
            self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.terminating.set()
        self.agent.mark_dirty(self.key)

    def views(self) -> tuple[list[ContainerView], list[ContainerView]]:
        return [s.view() for s in self.slots.values()], [s.view() for s in self.init_slots]

    # -- lifecycle --------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            self.agent.mark_dirty(self.key)
            if not self.terminating.is_set():
                self.tasks = [asyncio.create_task(self._container_loop(s)) for s in self.slots.values()]
                await self.terminating.wait()
            await self._terminate()
        except asyncio.CancelledError:
            self.kill()
            raise
        except Exception:
            log.exception("pod %s: lifecycle failed", self.key)
        finally:
            self.done.set()

    def env_of(self, spec: Mapping[str, Any]) -> dict[str, str]:
        meta = self.pod["metadata"]
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": self.uid,
            "status.podIP": self.ip,
            "status.hostIP": HOST_IP,
            "spec.nodeName": self.agent.node_name,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
        }
        env: dict[str, str] = {}
        for item in spec.get("env") or ():
            if "value" in item:
                env[item["name"]] = _expand(str(item.get("value") or ""), env)
            elif (ref := (item.get("valueFrom") or {}).get("fieldRef")) and ref.get("fieldPath") in fields:
                env[item["name"]] = fields[ref["fieldPath"]]
        return env

    def _make_runtime(self, slot: ContainerSlot) -> runtime.Runtime:
        spec, meta = slot.spec, self.pod["metadata"]
        env = self.env_of(spec)
        command = (
            [_expand(str(a), env) for a in [*spec.get("command", ()), *(spec.get("args") or ())]]
            if spec.get("command")
            else []
        )
        if command and self.agent.run_commands:
            log_path = self.agent.log_dir / "pods" / f"{meta.get('namespace')}_{meta['name']}_{slot.name}.log"
            return runtime.ProcessContainer(command, env, log_path)
        ports = [
            int(p["containerPort"]) for p in spec.get("ports") or () if (p.get("protocol") or "TCP") == "TCP"
        ]
        return runtime.builtin(meta["name"], meta.get("namespace", ""), slot.name, self.ip, ports, env)

    async def _container_loop(self, slot: ContainerSlot) -> None:
        backoff = BACKOFF_START
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        while not self.terminating.is_set():
            probe_task: asyncio.Task[None] | None = None
            try:
                slot.runtime = self._make_runtime(slot)
                slot.runtime.start()
                slot.container_id = f"podgate://{self.uid[:8]}-{slot.name}-{slot.restart_count}"
                slot.state, slot.reason, slot.message = "running", None, None
                slot.started_at, slot.exit_code, slot.ready = now_rfc3339(), None, False
                self.agent.mark_dirty(self.key)
                self.agent.event(self.pod, "Started", f"Started container {slot.name}")
                probe_task = asyncio.create_task(self._readiness(slot, slot.runtime))
                code = await slot.runtime.exited
            except (AppConfigError, OSError) as e:
                reason = (
                    "CreateContainerConfigError" if isinstance(e, AppConfigError) else "CreateContainerError"
                )
                slot.state, slot.reason, slot.message, slot.ready = "waiting", reason, str(e), False
                self.agent.mark_dirty(self.key)
                self.agent.event(self.pod, "Failed", f"Error: {e}", "Warning")
                await self._sleep_unless_terminating(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            finally:
                if probe_task is not None:
                    probe_task.cancel()
            if self.terminating.is_set():
                return  # _terminate records the final state
            slot.set_terminated(code)
            self.agent.mark_dirty(self.key)
            if not (policy == "Always" or (policy == "OnFailure" and code != 0)):
                return
            slot.last_terminated = {k: v for k, v in slot.view().state_body()["terminated"].items()}
            slot.state, slot.reason = "waiting", "CrashLoopBackOff"
            pod_name = self.pod["metadata"]["name"]
            slot.message = f"back-off {int(backoff)}s restarting failed container={slot.name} pod={pod_name}"
            self.agent.mark_dirty(self.key)
            self.agent.event(self.pod, "BackOff", "Back-off restarting failed container", "Warning")
            await self._sleep_unless_terminating(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            slot.restart_count += 1

    async def _sleep_unless_terminating(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.terminating.wait()

    def _set_ready(self, slot: ContainerSlot, ready: bool) -> None:
        if slot.ready != ready:
            slot.ready = ready
            self.agent.mark_dirty(self.key)

    async def _readiness(self, slot: ContainerSlot, rt: runtime.Runtime) -> None:
        raw = slot.spec.get("readinessProbe")
        if not raw:
            await rt.listening.wait()
            self._set_ready(slot, True)
            return
        try:
            spec = parse_probe(raw)
        except ProbeSpecError as e:
            self.agent.event(self.pod, "Unhealthy", f"Readiness probe not runnable: {e}", "Warning")
            return
        state = ProbeState()
        await asyncio.sleep(spec.initial_delay)
        while True:
            ok, detail = await self.agent.probe(spec, slot.spec, self.ip)
            state = observe(state, spec, ok)
            if not ok:
                self.agent.event(self.pod, "Unhealthy", f"Readiness probe failed: {detail}", "Warning")
            self._set_ready(slot, state.ready)
            await asyncio.sleep(spec.period)

    async def _terminate(self) -> None:
        self.agent.termination(self, "deleting")
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        deadline = time.monotonic() + float(grace)
        running = [s for s in self.slots.values() if s.state == "running" and s.runtime is not None]
        for slot in running:
            self.agent.event(self.pod, "Killing", f"Stopping container {slot.name}")
        await asyncio.gather(*(self._stop_container(s, deadline) for s in running))
        for task in self.tasks:
            task.cancel()
        for slot in self.slots.values():
            if slot.state != "terminated":
                slot.set_terminated(
                    137 if slot.state == "running" else 0,
                    "Error" if slot.state == "running" else "ContainerStatusUnknown",
                )
        await self.agent.write_final_status(self)
        await self.agent.delete_pod(self.pod)
        self.agent.termination(self, "gone")

    async def _stop_container(self, slot: ContainerSlot, deadline: float) -> None:
        assert slot.runtime is not None
        hook = (slot.spec.get("lifecycle") or {}).get("preStop")
        if hook:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    await self._pre_stop(slot, hook)
            except TimeoutError:
                pass
            except hooks.HookFailed as e:
                self.agent.event(self.pod, "FailedPreStopHook", str(e), "Warning")
            except Exception as e:
                self.agent.event(self.pod, "FailedPreStopHook", f"PreStopHook failed: {e}", "Warning")
        self.agent.termination(self, "sigterm")
        code = await slot.runtime.terminate(max(deadline - time.monotonic(), 0.0))
        slot.set_terminated(code)
        self.agent.mark_dirty(self.key)

    async def _pre_stop(self, slot: ContainerSlot, hook: Mapping[str, Any]) -> None:
        if hook.get("httpGet"):
            # as the kubelet of the release the agent plays calls it (podgate_sandbox.hooks)
            version = self.agent.kube_version
            h = hook["httpGet"]
            call = hooks.http_hook_call(h, self.ip, slot.spec, version)
            try:
                async with self.agent.http.get(
                    call.url, headers=call.headers, ssl=False, skip_auto_headers=("User-Agent",)
                ) as resp:
                    await resp.read()  # any status will do: only a call with no answer fails
            except aiohttp.ClientError as e:
                raise hooks.HookFailed(
                    hooks.failed_hook_message(
                        version, h, slot.name, self.pod, call.url, str(e) or type(e).__name__
                    )
                ) from e
        elif hook.get("exec"):
            command = list(hook["exec"].get("command") or ())
            seconds = sleep_seconds(command)
            if seconds is not None:
                await asyncio.sleep(seconds)
            elif self.agent.run_commands:
                proc = await asyncio.create_subprocess_exec(*command, env=self.env_of(slot.spec))
                await proc.wait()
            else:
                raise RuntimeError(
                    f"exec {command} not run: the node agent runs only `sleep N` without --run-commands"
                )
        elif hook.get("sleep"):
            await asyncio.sleep(float(hook["sleep"].get("seconds", 0)))

    def kill(self) -> None:
        for task in self.tasks:
            task.cancel()
        for slot in self.slots.values():
            if slot.runtime is not None:
                slot.runtime.kill()


_SLEEP = re.compile(r"^\s*(?:exec\s+)?(?:/bin/|/usr/bin/)?sleep\s+(\d+(?:\.\d+)?)s?\s*$")


def probe_user_agent(kube_version: str) -> str:
    """The kubelet's probe User-Agent: ``kube-probe/1.37`` for v1.37.2 (pure)."""
    major, minor = hooks.release(kube_version)
    return f"kube-probe/{major}.{minor}"


def sleep_seconds(command: list[str]) -> float | None:
    """``N`` when a preStop exec is just ``sleep N`` (directly or via ``sh -c``), else None."""
    if len(command) >= 3 and command[0].rsplit("/", 1)[-1] in ("sh", "bash", "ash") and command[1] == "-c":
        text = command[2]
    else:
        text = shlex.join(command)
    m = _SLEEP.match(text)
    return float(m.group(1)) if m else None


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of earlier env entries."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


class NodeAgent:
    def __init__(
        self,
        api: client.ApiClient,
        node_name: str,
        pod_cidr: str,
        log_dir: Path,
        run_commands: bool = False,
        # each write is an API round trip: at thousands of pods on a busy API server 8 writers
        # left gates True for half a minute before Ready was written
        status_writers: int = 32,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.node_name = node_name
        self.net = podnet.pod_network(pod_cidr)
        self.log_dir = log_dir
        self.run_commands = run_commands
        self.workers: dict[str, PodWorker] = {}
        #: addresses the workers hold (a count: a replaced pod's worker may still hold one)
        self._worker_ips: collections.Counter[str] = collections.Counter()
        self.informer: Informer[Obj] = Informer(ApiKube(api), PODS)
        self.informer.add_index(IP_INDEX, _pod_ips)
        self.informer.add_handler(self._on_pod)
        self.recorder = EventRecorder(ApiKube(api), COMPONENT, node_name)
        # Dedup, and one writer per pod at a time: two concurrent PATCHes of one pod could land
        # out of order and leave an older status (seen: ContainersReady flapping back to False).
        self._dirty = WorkQueue(base_delay=1.0, max_delay=10.0, rate=500, burst=1000, name="pod-status")
        self._binding: set[str] = set()
        self._deleting: set[str] = set()
        self._status_writers = status_writers
        self._background: set[asyncio.Task[Any]] = set()
        self._next_ip = 0
        self.registered = asyncio.Event()
        #: the release this agent plays the kubelet of: the API server's (read at registration)
        self.kube_version = "v0.0.0"
        self.http: aiohttp.ClientSession
        #: "namespace/name uid" → wall-clock times of its termination's steps ("deleting": the
        #: agent saw the deletion, "sigterm": the first container's, "gone": deleted), for the
        #: termination benchmark (``GET /terminations``); the latest 10,000 pods
        self.terminations: dict[str, dict[str, float]] = {}

    def termination(self, worker: PodWorker, step: str) -> None:
        record = self.terminations.setdefault(f"{worker.key} {worker.uid}", {})
        record.setdefault(step, time.time())
        while len(self.terminations) > 10_000:
            del self.terminations[next(iter(self.terminations))]

    # -- node ---------------------------------------------------------------------------------
    def _node_body(self) -> dict[str, Any]:
        mem_kib = _meminfo_kib()
        capacity = {"cpu": "2", "memory": f"{mem_kib}Ki", "pods": "10000", "ephemeral-storage": "100Gi"}
        now = now_rfc3339()
        conds = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHas{r}",
                "message": m,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for t, r, m in (
                ("MemoryPressure", "SufficientMemory", "node agent has sufficient memory"),
                ("DiskPressure", "NoDiskPressure", "node agent has no disk pressure"),
                ("PIDPressure", "SufficientPID", "node agent has sufficient PID available"),
            )
        ]
        conds.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "podgate node agent is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        )
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conds,
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "kubeletVersion": self.kube_version,
                "kubeProxyVersion": self.kube_version,
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": f"podgate://{__version__}",
                "osImage": "podgate sandbox",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    async def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.podgate.dev/sandbox": "true",
        }
        # A node reports its kubelet's release; the agent stands in for the kubelet of the
        # control plane's release, so it reports the API server's (``kubectl get nodes``).
        info = await call(client.VersionApi(self.api).get_code)
        self.kube_version = str(info["gitVersion"])
        try:
            await call(
                self.core.create_node,
                {
                    "metadata": {"name": self.node_name, "labels": labels},
                    "spec": {"podCIDR": str(self.net), "podCIDRs": [str(self.net)]},
                },
            )
        except ApiException as e:
            if e.status != 409:
                raise
        await self._post_node_status()
        self.registered.set()

    async def _post_node_status(self) -> None:
        await call(
            self.core.patch_node_status,
            self.node_name,
            {"status": self._node_body()},
            _content_type=STRATEGIC_MERGE,
        )

    async def _heartbeat(self) -> None:
        coord = client.CoordinationV1Api(self.api)
        ns, last_status = "kube-node-lease", 0.0
        while True:
            try:
                body = {
                    "metadata": {"name": self.node_name, "namespace": ns},
                    "spec": {
                        "holderIdentity": self.node_name,
                        "leaseDurationSeconds": 40,
                        "renewTime": now_micro(),
                    },
                }
                try:
                    await call(
                        coord.replace_namespaced_lease, self.node_name, ns, await self._with_rv(coord, body)
                    )
                except ApiException as e:
                    if e.status != 404:
                        raise
                    await call(coord.create_namespaced_lease, ns, body)
                if time.monotonic() - last_status > 40:
                    await self._post_node_status()
                    last_status = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("node heartbeat failed: %s", e)
            await asyncio.sleep(10)

    async def _with_rv(self, coord: client.CoordinationV1Api, body: dict[str, Any]) -> dict[str, Any]:
        current = await call(coord.read_namespaced_lease, self.node_name, "kube-node-lease")
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return body

    # -- pods ---------------------------------------------------------------------------------
    def _on_pod(self, kind: EventType, pod: Obj, old: Obj | None) -> None:
        key = key_of(pod)
        spec, meta = pod.get("spec") or {}, pod["metadata"]
        worker = self.workers.get(key)
        if worker is not None and worker.uid != meta.get("uid"):
            worker.kill()  # same name, new pod: the old one is gone
            self._drop_worker(key)
            worker = None
        if kind == "DELETED":
            if worker is not None:
                self.termination(worker, "gone")
                worker.kill()
                worker.task.cancel()
                self._drop_worker(key)
            return
        node = spec.get("nodeName")
        if not node:
            if key not in self._binding and not meta.get("deletionTimestamp"):
                self._binding.add(key)
                self._spawn(self._bind(pod))
            return
        if node != self.node_name:
            return
        if worker is not None:
            worker.update(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp") and (
            phase in ("Succeeded", "Failed") or not (pod.get("status") or {}).get("podIP")
        ):
            self._spawn(self.delete_pod(pod))
            return
        if phase in ("Succeeded", "Failed"):
            return
        try:
            ip = self._allocate(pod)
        except addresses.AddressPoolError as e:
            self.event(pod, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {e}", "Warning")
            return
        self.workers[key] = PodWorker(self, pod, ip)
        self._worker_ips[ip] += 1
        if meta.get("deletionTimestamp"):
            self.workers[key].terminating.set()

    def _drop_worker(self, key: str) -> None:
        worker = self.workers.pop(key, None)
        if worker is not None:
            self._worker_ips[worker.ip] -= 1
            if self._worker_ips[worker.ip] <= 0:
                del self._worker_ips[worker.ip]

    def _allocate(self, pod: Obj) -> str:
        # Addresses in use are looked up, never gathered: a scan of every pod for each new one
        # made a burst of 5,000 pods quadratic (the agent's loop busy for minutes).
        previous = (pod.get("status") or {}).get("podIP")
        if previous and previous not in self._worker_ips and addresses.contains(self.net, previous):
            return str(previous)
        ip = addresses.allocate(self.net, _Taken(self), self._next_ip)
        # Next search starts after this one: addresses of deleted pods are reused last, so a
        # load balancer never confuses a new pod with an old one that had the same address.
        self._next_ip = addresses.offset(self.net, ip) + 1
        return ip

    async def _bind(self, pod: Obj) -> None:
        key = key_of(pod)
        try:
            labels = {
                "kubernetes.io/hostname": self.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }
            if not await scheduling.bind_or_refuse(self.core, pod, self.node_name, labels):
                self.event(pod, "FailedScheduling", scheduling.UNSCHEDULABLE, "Warning")
                return
            self.event(pod, "Scheduled", f"Successfully assigned {key} to {self.node_name}")
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("binding %s failed: %s %s", key, e.status, e.reason)
        finally:
            self._binding.discard(key)

    async def delete_pod(self, pod: Obj) -> None:
        meta, key = pod["metadata"], key_of(pod)
        if key in self._deleting:
            return
        self._deleting.add(key)
        try:
            await call(
                self.core.delete_namespaced_pod,
                meta["name"],
                meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("final delete of %s failed: %s %s", key, e.status, e.reason)
        finally:
            self._deleting.discard(key)
            worker = self.workers.get(key)
            if worker is not None and worker.uid == meta["uid"]:
                self._drop_worker(key)

    # -- status -------------------------------------------------------------------------------
    def mark_dirty(self, key: str) -> None:
        self._dirty.add(key)

    async def _status_writer(self) -> None:
        while True:
            key, _ = await self._dirty.get()
            try:
                worker = self.workers.get(key)
                if worker is not None:
                    await self.write_status_now(worker)
                self._dirty.forget(key)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if status_of(e) != 404:
                    log.warning("status of %s not written (%s); retrying", key, e)
                    self._dirty.add_rate_limited(key)
            finally:
                self._dirty.done(key)

    async def write_final_status(self, worker: PodWorker) -> None:
        """The terminated status before the final delete, after any write in flight for the pod."""
        for _ in range(100):
            if not self._dirty.processing(worker.key):
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(ApiException):
            await self.write_status_now(worker)

    async def write_status_now(self, worker: PodWorker) -> None:
        views, init_views = worker.views()
        pod = worker.pod
        desired = desired_status(
            pod,
            views,
            pod_ip=worker.ip,
            host_ip=HOST_IP,
            start_time=worker.start_time,
            now=now_rfc3339(),
            init_views=init_views,
        )
        if not needs_write(pod.get("status") or {}, desired):
            return
        meta = pod["metadata"]
        updated = await call(
            self.core.patch_namespaced_pod_status,
            meta["name"],
            meta["namespace"],
            {"metadata": {"uid": meta["uid"]}, "status": desired},
            _content_type=STRATEGIC_MERGE,
        )
        if worker.uid == updated["metadata"]["uid"] and resource_version(updated) > resource_version(
            worker.pod
        ):
            worker.pod = updated

    # -- probes -------------------------------------------------------------------------------
    async def probe(self, spec: ProbeSpec, container: Mapping[str, Any], pod_ip: str) -> tuple[bool, str]:
        try:
            if spec.kind == "exec":
                if not self.run_commands:
                    return True, "exec probe not run (no --run-commands); counted as success"
                proc = await asyncio.create_subprocess_exec(*spec.command)
                async with asyncio.timeout(spec.timeout):
                    code = await proc.wait()
                return code == 0, f"exit code {code}"
            port = resolve_port(spec.port, container)
            host = spec.host or pod_ip
            if spec.kind == "tcpSocket":
                async with asyncio.timeout(spec.timeout):
                    _, writer = await asyncio.open_connection(host, port)
                writer.close()
                return True, "connected"
            url = f"{spec.scheme.lower()}://{host}:{port}{spec.path}"
            timeout = aiohttp.ClientTimeout(total=spec.timeout)
            headers = {"User-Agent": probe_user_agent(self.kube_version), **dict(spec.headers)}
            async with self.http.get(
                url, timeout=timeout, headers=headers, ssl=False, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 400:
                    return True, f"HTTP probe succeeded with statuscode: {resp.status}"
                return False, f"HTTP probe failed with statuscode: {resp.status}"
        except TimeoutError:
            return False, f"probe timed out after {spec.timeout:g}s"
        except (OSError, aiohttp.ClientError, ProbeSpecError) as e:
            return False, str(e) or type(e).__name__

    # -- events and plumbing ------------------------------------------------------------------
    def event(self, pod: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        self.recorder.emit_later(pod, "Pod", reason, message, type_)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run(self) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, force_close=True))
        try:
            while not self.registered.is_set():
                try:
                    await self.register()
                except (ApiException, OSError, aiohttp.ClientError) as e:
                    log.warning("node registration failed (%s); retrying", e)
                    await asyncio.sleep(1)
            log.info("node %s registered; pod CIDR %s", self.node_name, self.net)
            loops = [
                self._heartbeat(),
                self.informer.run(),
                *(self._status_writer() for _ in range(self._status_writers)),
                self.recorder.run(),
            ]
            await asyncio.gather(*loops)
        finally:
            self.shutdown()
            await self.http.close()

    def shutdown(self) -> None:
        for worker in self.workers.values():
            worker.kill()
            worker.task.cancel()


IP_INDEX = "ip"


def _pod_ips(pod: Obj) -> list[str]:
    ip = (pod.get("status") or {}).get("podIP")
    return [ip] if ip else []


class _Taken(AbstractSet[str]):
    """The addresses in use, looked up rather than listed: the workers' and those in pods'
    status (a pod another agent run gave an address)."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def __contains__(self, ip: object) -> bool:
        return ip in self.agent._worker_ips or (
            isinstance(ip, str) and bool(self.agent.informer.keys_by_index(IP_INDEX, ip))
        )

    def __iter__(self) -> Iterator[str]:
        return iter(set(self.agent._worker_ips) | set(self.agent.informer.index_values(IP_INDEX)))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _meminfo_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 8 * 1024 * 1024


def _healthz_app(agent: NodeAgent) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok = agent.registered.is_set() and agent.informer.synced.is_set()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "starting\n")

    async def pods(_: web.Request) -> web.Response:
        return web.json_response({k: w.ip for k, w in agent.workers.items()})

    async def terminations(_: web.Request) -> web.Response:
        return web.json_response(agent.terminations)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/pods", pods)
    app.router.add_get("/terminations", terminations)
    return app


async def amain(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    api = await api_client(args.kubeconfig)
    api.configuration.connection_pool_maxsize = 64
    agent = NodeAgent(api, args.node_name, args.pod_cidr, Path(args.log_dir), args.run_commands)
    try:
        await processes.serve_until_signalled(
            agent.run(),
            _healthz_app(agent),
            HOST_IP,
            args.healthz_port,
            "node agent stopping: containers killed, pods left for the next start",
        )
    finally:
        await api.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="podgate-node-agent", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="podgate-node")
    parser.add_argument("--pod-cidr", default="198.18.0.0/16", help="local by the sandbox's route (podnet)")
    parser.add_argument("--healthz-port", type=int, default=10248)
    parser.add_argument("--log-dir", default=None, help="where logs of --run-commands containers go")
    parser.add_argument(
        "--run-commands",
        action="store_true",
        help="run containers' explicit `command` as local processes (no isolation: root on the host)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.log_dir is None:
        args.log_dir = str(Path(args.kubeconfig).resolve().parent / "logs")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
