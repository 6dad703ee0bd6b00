"""A real sandbox for the integration tests: started once per test session, stopped after.

It runs beside any sandbox a developer has up, on its own state directory, ports (offset) and
loopback ranges, through the real ``podgate sandbox`` CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from podgate_sandbox.controlplane import ControllerSwap, Sandbox

T = TypeVar("T")
PODGATE = [sys.executable, "-m", "podgate"]
OFFSET = 10000
#: inside 198.18.0.0/15, local by the route ``up`` adds (podgate_sandbox.podnet): Endpoints and
#: EndpointSlices accept these addresses, as they refuse loopback ones
POD_CIDR = "198.19.0.0/20"
LB_CIDR = "127.201.0.0/16"
#: The cloud tests' secrets, given to their controllers in the environment; no log may show them.
AWS_SECRET_ACCESS_KEY = "podgate-test-aws-secret-Zq7xK2"
ALIBABA_ACCESS_KEY_SECRET = "podgate-test-secret"  # the Alibaba double's own test key pair
CLOUD_SECRETS = (AWS_SECRET_ACCESS_KEY, ALIBABA_ACCESS_KEY_SECRET)
#: The release the e2e sandboxes run (``1.NN`` or ``1.NN.P``, as ``podgate sandbox up
#: --kubernetes`` takes it); unset, the sandbox's default.  ``make test`` runs the suite on the
#: newest release and a compatibility subset on the oldest supported one.
KUBERNETES = os.environ.get("PODGATE_KUBERNETES") or None


def kubernetes_args() -> list[str]:
    """``--kubernetes V`` for ``podgate sandbox up`` when ``PODGATE_KUBERNETES`` names one."""
    return ["--kubernetes", KUBERNETES] if KUBERNETES else []


def sandbox_kubectl(state: Path) -> Path:
    """The kubectl of the release a sandbox runs (client and server of one release)."""
    return Sandbox(state).binaries.path("kubectl")


@dataclass
class SandboxHandle:
    state_dir: Path
    kubeconfig: Path
    kubectl_path: Path

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(
            [str(self.kubectl_path), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            # the sandbox's own discovery cache (a release on this port before had other APIs)
            env={
                **os.environ,
                "KUBECONFIG": str(self.kubeconfig),
                "KUBECACHEDIR": str(self.state_dir / "kubectl-cache"),
            },
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout if check else proc.stdout + proc.stderr

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", input=text)


def podgate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODGATE, *args], capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxHandle]:
    state = tmp_path_factory.mktemp("sandbox")
    up = podgate(
        "sandbox",
        "up",
        "--state-dir",
        str(state),
        "--port-offset",
        str(OFFSET),
        "--pod-cidr",
        POD_CIDR,
        "--lb-cidr",
        LB_CIDR,
        "--run-commands",
        *kubernetes_args(),
    )
    handle = SandboxHandle(state, state / "kubeconfig", sandbox_kubectl(state))
    try:
        assert up.returncode == 0, f"sandbox up failed:\n{up.stdout}\n{up.stderr}"
        wait_for(
            "the node to be Ready",
            lambda: (
                "True"
                in handle.kubectl(
                    "get", "node", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}"
                )
            ),
        )
        wait_for(
            "the default ServiceAccount",
            lambda: "default" in handle.kubectl("get", "serviceaccount", "-n", "default", check=False),
        )
        yield handle
    finally:
        podgate("sandbox", "down", "--state-dir", str(state))


@pytest.fixture
def namespace(sandbox: SandboxHandle) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    sandbox.kubectl("create", "namespace", name)
    wait_for(
        "the namespace's default ServiceAccount",
        lambda: "default" in sandbox.kubectl("get", "serviceaccount", "-n", name, check=False),
    )
    yield name
    sandbox.kubectl("delete", "namespace", name, "--wait=false", check=False)
    # grants are cluster-scoped: they do not go with the namespace
    sandbox.kubectl("delete", "loadbalancergroupgrants", "-l", f"{GRANTED_TO}={name}", check=False)


#: the label on the grants a test writes, naming the test namespace they go with
GRANTED_TO = "podgate.test/granted-to"


def grant(sandbox: SandboxHandle, provider: str, namespace: str, *groups: str) -> str:
    """What an administrator does before a tenant's Service may bind a group: a
    LoadBalancerGroupGrant giving ``namespace`` the ``groups`` of ``provider``.  Its name."""
    name = f"{namespace}-{provider}-{uuid.uuid4().hex[:6]}"
    sandbox.apply(
        {
            "apiVersion": "podgate.dev/v1alpha1",
            "kind": "LoadBalancerGroupGrant",
            "metadata": {"name": name, "labels": {GRANTED_TO: namespace}},
            "spec": {"provider": provider, "namespaces": [namespace], "groups": list(groups)},
        }
    )
    return name


def server_minor(sandbox: SandboxHandle) -> int:
    """The API server's minor version (what a test of a newer feature checks first)."""
    version = json.loads(sandbox.kubectl("version", "-o", "json"))["serverVersion"]
    return int(version["minor"].rstrip("+"))


def condition(pod: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c["type"] == ctype:
            return dict(c)
    return None


def wide_row(sandbox: SandboxHandle, namespace: str, pod: str) -> dict[str, str]:
    """``kubectl get pod -o wide`` as the user reads it: column name → value."""
    out = sandbox.kubectl("get", "pod", pod, "-n", namespace, "-o", "wide").splitlines()
    header, row = out[0], out[1]
    starts = [
        i
        for i, ch in enumerate(header)
        if ch != " " and (i == 0 or (header[i - 1] == " " and header[i - 2] == " "))
    ]
    starts = [0] + [i for i in starts if i > 0]
    cols = {}
    for n, s in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else None
        cols[header[s:end].strip()] = row[s:end].strip()
    return cols


@contextlib.contextmanager
def controller_replaced(
    sandbox: SandboxHandle, *flags: str, env: dict[str, str], log: str
) -> Iterator[ControllerSwap]:
    """The sandbox's controller replaced by one with a cloud provider's flags and credentials."""
    with Sandbox(sandbox.state_dir).controller_replaced(*flags, env=env, log=log) as swap:
        yield swap


class GateWatch:
    """The gate of the one pod a test step created, as ``kubectl get`` shows it: each step
    remembers the pods before it (``mark``) and then reads the new pod's gate condition."""

    def __init__(self, sandbox: SandboxHandle, namespace: str, gate: str, label: str) -> None:
        self.sandbox, self.namespace, self.gate, self.label = sandbox, namespace, gate, label
        self.known: set[str] = set()

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.sandbox.get("pods", "-n", self.namespace, "-l", self.label)[
            "items"
        ]
        return items

    def mark(self) -> None:
        self.known = {p["metadata"]["name"] for p in self.pods()}

    def gate_of_new_pod(self) -> tuple[str, str, str] | None:
        new = [
            p
            for p in self.pods()
            if p["metadata"]["name"] not in self.known and not p["metadata"].get("deletionTimestamp")
        ]
        c = condition(new[0], self.gate) if len(new) == 1 else None
        return (c["status"], c.get("reason", ""), c.get("message", "")) if c else None

    async def wait(
        self, what: str, pred: Callable[[tuple[str, str, str]], bool], limit: float = 30
    ) -> tuple[str, str, str]:
        seen: list[Any] = [None]

        def check() -> tuple[str, str, str] | None:
            g = self.gate_of_new_pod()
            seen[0] = g or [(p["metadata"]["name"], p.get("status")) for p in self.pods()]
            return g if g and pred(g) else None

        try:
            return await asyncio.to_thread(wait_for, what, check, limit, 0.1)
        except AssertionError as e:
            pods = [
                (
                    p["metadata"]["name"],
                    p["metadata"].get("deletionTimestamp"),
                    (p.get("status") or {}).get("podIP"),
                    [(c["type"], c["status"]) for c in (p.get("status") or {}).get("conditions") or ()],
                )
                for p in self.pods()
            ]
            raise AssertionError(f"{e}; the new pod's gate was {seen[0]!r}; pods now: {pods}") from None


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, metric_name: str, **labels: str) -> float:
    """Sum of the samples of ``metric_name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(metric_name + "{") and not line.startswith(metric_name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"no sample of {metric_name} {labels}"
    return total


def samples(text: str, metric_name: str, **labels: str) -> list[float]:
    """The values of ``metric_name``'s samples whose labels include ``labels``; unlike
    :func:`metric`, no sample is an answer (an empty list), e.g. for a gauge gone to nothing."""
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if (line.startswith(metric_name + "{") or line.startswith(metric_name + " "))
        and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]


#: the sandbox's controller's health port (/metrics)
CONTROLLER_HEALTH_PORT = 8081 + OFFSET
#: the stand-in's of ``controller_replaced`` (replica 1)
STAND_IN_HEALTH_PORT = 8181 + OFFSET
#: the annotation :func:`reconciled_after` changes to queue a Service (podgate reads no such key)
NUDGE = "e2e.podgate.dev/nudge"


def _counter(port: int, metric_name: str, **labels: str) -> float | None:
    """The counter's value (0 before its first sample), None while the controller does not answer."""
    try:
        status, text = scrape(port)
    except OSError:  # not listening (yet): a controller starting or restarting
        return None
    return sum(samples(text, metric_name, **labels)) if status == 200 else None


def passes_after(
    what: str,
    port: int,
    metric_name: str,
    labels: dict[str, str],
    change: Callable[[], object] | None = None,
    *,
    nudge: Callable[[], None] | None = None,
    timeout: float = 60.0,
) -> float:
    """Do ``change`` (the test's step; None: the step is done and was seen), then return once
    a pass that *began after it* has completed, by a per-object pass counter of the controller's
    ``/metrics`` on ``port``; fail loudly after ``timeout``.  This is the positive signal a
    negative check waits for before asserting that nothing was written.

    The rule: the counter is read once ``change`` has returned (the API server has the change;
    read before it, a whole pass could begin and end before the change lands).  At that moment
    at most one pass of the object is running (the controller never runs one object's passes
    at once), and it may have begun before the change and finish without having seen it: the
    counter's first step may be that pass.  Its second step is a pass that began after the
    read, so after the change: wait for the counter to advance by two.

    ``nudge`` makes a pass happen (at once, each time the counter moves short of the goal, and
    after a second without any move), for objects the controller would otherwise not look at
    again until its next resync.  A counter that goes back (the controller restarted under the
    test) fails the wait: the reading before it says nothing about the new process."""
    if change is not None:
        change()
    deadline = time.monotonic() + timeout
    start = _counter(port, metric_name, **labels)
    while start is None and time.monotonic() < deadline:  # the controller is (re)starting
        time.sleep(0.1)
        start = _counter(port, metric_name, **labels)
    if start is None:
        raise AssertionError(f"{what}: no answer from the controller's /metrics on port {port}")
    goal, seen, moved = start + 2, start, time.monotonic()
    if nudge is not None:
        nudge()
    while True:
        now = _counter(port, metric_name, **labels)
        if now is not None and now < seen:
            raise AssertionError(f"{what}: {metric_name} {labels} went back from {seen} to {now}")
        if now is not None and now >= goal:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}: {metric_name} {labels} went "
                f"from {start} to {now}, needs {goal} (two passes: the second began after the change)"
            )
        if now is not None and (now > seen or time.monotonic() - moved > 1.0):
            seen, moved = now, time.monotonic()
            if nudge is not None:
                nudge()
        time.sleep(0.05)


def reconciled_after(
    sandbox: SandboxHandle,
    service: str,
    change: Callable[[], object] | None = None,
    *,
    port: int = CONTROLLER_HEALTH_PORT,
    timeout: float = 60.0,
) -> None:
    """Do ``change``, then return once a reconcile pass of ``service`` ("namespace/name") that
    began after it has completed and the gate writes it submitted have been sent
    (``podgate_service_reconciles_total``, ``podgate_gate_writes_pending``; the rule is
    :func:`passes_after`'s).  The Service must exist: between passes it is nudged (an annotation
    of the test's own, which queues it as any annotation change does).

    What a pass decides is then in the API server, but for two short tails the controller does
    not count: a gate write taken by a writer and not yet answered (the gauge counts wishes
    until a writer takes them), and an Event queued for the recorder's senders.  Both are one
    loopback call, which the check's own ``kubectl`` (a process started afterwards) outlasts."""
    ns, name = service.split("/", 1)
    n = iter(range(1_000_000))

    def nudge() -> None:
        sandbox.kubectl("annotate", "service", name, "-n", ns, f"{NUDGE}={next(n)}", "--overwrite")

    passes_after(
        f"a reconcile of {service} after the change",
        port,
        "podgate_service_reconciles_total",
        {"namespace": ns, "service": name},
        change,
        nudge=nudge,
        timeout=timeout,
    )

    def writes_sent() -> bool:
        try:
            status, text = scrape(port)
        except OSError:
            return False
        return status == 200 and samples(text, "podgate_gate_writes_pending") == [0.0]

    wait_for("the gate writes the passes submitted sent", writes_sent, timeout, 0.05)


def checked_after(
    check: str,
    change: Callable[[], object] | None = None,
    *,
    port: int = CONTROLLER_HEALTH_PORT,
    timeout: float = 30.0,
) -> None:
    """Do ``change``, then return once a run of ReadinessCheck ``check`` ("namespace/name") that
    began after it has completed, its gate written or found unchanged
    (``podgate_check_runs_total``; the rule is :func:`passes_after`'s: one pod's runs of a check
    follow one another, so for a check of one pod at most one run is in flight at a time).  A
    check runs every period by itself: no nudge."""
    ns, name = check.split("/", 1)
    passes_after(
        f"a run of check {check} after the change",
        port,
        "podgate_check_runs_total",
        {"namespace": ns, "check": name},
        change,
        timeout=timeout,
    )


def assert_not_logged(log: Path, secrets: Iterable[str]) -> None:
    """No secret in the log, which must have something in it: an empty or missing log would
    let the check pass without having looked at anything."""
    assert log.is_file(), f"{log} was not written"
    text = log.read_text(errors="replace")
    assert text.strip(), f"{log.name} is empty: nothing was checked"
    for secret in secrets:
        assert secret, "an empty secret is in every text"
        assert secret not in text, f"a secret appears in {log.name}"
