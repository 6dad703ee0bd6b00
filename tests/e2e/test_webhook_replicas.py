"""The webhook as a Deployment runs it: several replicas, each with its own certificate directory
(an emptyDir), behind one address the API server calls (the sandbox's webhook front door plays the
Service), all registering the webhook.  Pods created across a forced rotation of the serving
certificate and of the CA all get their gate, and no webhook call fails; ``--no-inject`` injects
nothing and leaves the webhook configuration alone."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podgate_sandbox import processes
from podgate_sandbox.controlplane import CONTROLLER_NAMESPACE, Sandbox

from .conftest import OFFSET, SandboxHandle, podgate, samples, scrape, wait_for
from .test_controller import INJECT, deployment, gate, lb_service

pytestmark = pytest.mark.sandbox
SECRET = "podgate-webhook-certs"
CONFIG = "podgate-sandbox"
#: a serving certificate renewed every ~5 s and a CA every ~11 s (settling 3 s): rotations in seconds
FAST_ROTATION = (
    "--webhook-cert-validity",
    "12",
    "--webhook-ca-validity",
    "24",
    "--webhook-cert-renew-at",
    "0.5",
    "--webhook-cert-check-period",
    "0.5",
)


def health_port(replica: int) -> int:
    return 8081 + 100 * replica + OFFSET


def ready(replica: int) -> bool:
    try:
        return scrape(health_port(replica), "/readyz")[0] == 200
    except OSError:  # not listening yet
        return False


@contextlib.contextmanager
def controller_stopped(sandbox: SandboxHandle) -> Iterator[Sandbox]:
    """The sandbox's controller stopped (it releases its Lease) and the certificate Secret gone, for
    the block; after it, the Secret goes again and the sandbox's controller comes back."""
    pid = json.loads((sandbox.state_dir / "pids.json").read_text())["podgate-controller"]
    os.killpg(pid, signal.SIGTERM)
    wait_for("the sandbox's controller to stop", lambda: not _alive(pid), 20)
    sandbox.kubectl("delete", "secret", SECRET, "-n", CONTROLLER_NAMESPACE, "--ignore-not-found")
    try:
        yield Sandbox(sandbox.state_dir)
    finally:
        sandbox.kubectl("delete", "secret", SECRET, "-n", CONTROLLER_NAMESPACE, "--ignore-not-found")
        assert podgate("sandbox", "up", "--state-dir", str(sandbox.state_dir)).returncode == 0
        wait_for("the sandbox's controller ready", lambda: ready(0), 30)
        wait_for("the front door to send to it", front_door_up, 10)


@contextlib.contextmanager
def replicas(
    sandbox: SandboxHandle, n: int, *flags: str, config: str = CONFIG
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The sandbox's controller replaced by ``n`` replicas, every one keeping the caBundle of the
    webhook configurations ``config`` current (as deploy/base's all do), starting from no
    certificate Secret."""
    procs = []
    with controller_stopped(sandbox) as sb:
        try:
            for r in range(n):
                argv = sb.controller_argv(
                    r, "--webhook-url", sb.webhook_url, "--webhook-config-name", config, *flags
                )
                with open(sandbox.state_dir / "logs" / f"replica-{r}.log", "a") as log:
                    procs.append(
                        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
                    )
            wait_for(f"{n} replicas ready", lambda: all(ready(r) for r in range(n)), 40)
            wait_for("the front door to send to them", front_door_up, 10)
            yield procs
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(15)


def front_door_up(offset: int = OFFSET) -> bool:
    """Whether the webhook front door (HAProxy, checking every second) of the sandbox at
    ``offset`` sends to a replica again: as a Service's endpoints hold only Ready pods, it must
    before pods are created (the API server would otherwise see the door close and admit them
    ungated)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for _ in range(3):
        try:
            with socket.create_connection(("127.0.0.1", 9443 + offset), 2) as raw, ctx.wrap_socket(raw):
                pass
        except OSError:  # ssl.SSLError too: the door closed on us
            return False
    return True


def _alive(pid: int) -> bool:
    """Whether the controller still runs.  A zombie does not: a controller the sandbox restarted
    from this very process (``controller_replaced``) is this process's child, and once it exits
    only a reap (which ``processes.alive`` does) makes it go; ``kill(pid, 0)`` would still see it."""
    return processes.alive(pid, "controller")


def fingerprint(pem_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(pem_b64)).hexdigest()[:12]


class SecretWatch:
    """What the certificate Secret went through, read every 0.3 s: (CA, serving certificate,
    whether a previous CA was still trusted) as each was seen."""

    def __init__(self, sandbox: SandboxHandle) -> None:
        self.sandbox, self.seen = sandbox, list[tuple[str, str, bool]]()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            out = self.sandbox.kubectl(
                "get", "secret", SECRET, "-n", CONTROLLER_NAMESPACE, "-o", "json", check=False
            )
            with contextlib.suppress(ValueError, KeyError):
                data = json.loads(out)["data"]
                state = (fingerprint(data["ca.crt"]), fingerprint(data["tls.crt"]), "ca-previous.crt" in data)
                if not self.seen or self.seen[-1] != state:
                    self.seen.append(state)
            time.sleep(0.3)

    def __enter__(self) -> SecretWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def failed_webhook_calls(log: Path, since: int) -> list[str]:
    """The API server's own word on calls to podgate's webhook that failed (it fails open)."""
    lines = log.read_text(errors="replace").splitlines()[since:]
    return [ln for ln in lines if "readiness-gates.podgate.dev" in ln and "ailed calling webhook" in ln]


@pytest.mark.parametrize("n", [2, 3])
def test_pods_created_across_a_rotation_all_get_their_gate(
    sandbox: SandboxHandle, namespace: str, n: int
) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("web", "web"), namespace)
    apiserver_log = sandbox.state_dir / "logs" / "kube-apiserver.log"
    log_start = len(apiserver_log.read_text(errors="replace").splitlines())
    with replicas(sandbox, n, *FAST_ROTATION), SecretWatch(sandbox) as secret:
        sandbox.apply(deployment("web", 0), namespace)
        for count in range(25, 201, 25):  # 200 pods over about 24 s: across several rotations
            sandbox.kubectl("scale", "deployment/web", "-n", namespace, f"--replicas={count}")
            time.sleep(3)
        pods = wait_for(
            "200 pods",
            lambda: (
                (p := sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"]) and len(p) >= 200 and p
            ),
            90,
            1.0,
        )
        wait_for(
            "a CA rotation to complete",
            lambda: len({ca for ca, _, _ in secret.seen}) >= 2 and not secret.seen[-1][2],
            30,
        )
        texts = [scrape(health_port(r))[1] for r in range(n)]
    ungated = [
        p["metadata"]["name"]
        for p in pods
        if gate("web") not in [g["conditionType"] for g in p["spec"].get("readinessGates") or ()]
    ]
    assert not ungated, f"{len(ungated)} of {len(pods)} pods have no gate: {ungated[:5]}"
    cas = {ca for ca, _, _ in secret.seen}
    certs = {crt for _, crt, _ in secret.seen}
    assert len(cas) >= 2 and len(certs) >= 3, f"no rotation happened: {secret.seen}"
    assert any(previous for _, _, previous in secret.seen), "the old CA was never kept beside the new"
    assert failed_webhook_calls(apiserver_log, log_start) == []
    for r, text in enumerate(texts):
        assert sum(samples(text, "podgate_webhook_tls_handshake_failures_total")) == 0, f"replica {r}"
        assert sum(samples(text, "podgate_webhook_requests_total", result="bad_request")) == 0
    patched = sum(sum(samples(t, "podgate_webhook_requests_total", result="patched")) for t in texts)
    assert patched >= 200, f"the replicas patched {patched} pods"
    assert sum(1 for t in texts if sum(samples(t, "podgate_webhook_requests_total")) > 0) == n, (
        "a replica got no admission: the front door did not spread them"
    )


def test_no_inject_injects_nothing_and_leaves_the_configuration_to_the_installer(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """podgate may only patch its configurations' caBundle: with --no-inject it leaves the
    mutating one alone (the installer leaves it out) and answers every pod unchanged."""
    before = sandbox.get("mutatingwebhookconfiguration", CONFIG)
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("web", "web"), namespace)
    with replicas(sandbox, 1, "--no-inject"):
        sandbox.apply(deployment("web", 1), namespace)
        pod = wait_for("the pod", lambda: sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"], 30)[
            0
        ]
        assert not pod["spec"].get("readinessGates"), "a pod got a gate with injection off"
        after = sandbox.get("mutatingwebhookconfiguration", CONFIG)
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], (
            "the mutating configuration was written with injection off"
        )


def test_a_replica_that_loses_the_lease_keeps_answering_admissions(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """The leader loses its Lease (taken over by another holder for 20 s): it stops only the
    leader's work and keeps serving the webhook, so pods created meanwhile all get their gate
    and the API server sees no failed call."""
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("web", "web"), namespace)
    apiserver_log = sandbox.state_dir / "logs" / "kube-apiserver.log"
    with replicas(sandbox, 2) as procs:

        def leader() -> list[int]:
            """[the leading replica's index], or [] while none leads (a list: replica 0 is falsy)."""
            for r in range(2):
                with contextlib.suppress(OSError):
                    if samples(scrape(health_port(r))[1], "podgate_leader") == [1.0]:
                        return [r]
            return []

        [led] = wait_for("a leader", leader, 30)
        log_start = len(apiserver_log.read_text(errors="replace").splitlines())
        sandbox.apply(deployment("web", 0), namespace)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        sandbox.kubectl(
            "patch",
            "lease",
            "podgate-controller",
            "-n",
            CONTROLLER_NAMESPACE,
            "--type=merge",
            "-p",
            json.dumps(
                {"spec": {"holderIdentity": "someone-else", "renewTime": now, "leaseDurationSeconds": 20}}
            ),
        )
        wait_for(
            "the leader to step down",
            lambda: samples(scrape(health_port(led))[1], "podgate_leader") == [0.0],
            20,
        )
        for count in range(10, 41, 10):  # 40 pods over about 6 s, while nobody leads
            sandbox.kubectl("scale", "deployment/web", "-n", namespace, f"--replicas={count}")
            time.sleep(1.5)
        pods = wait_for(
            "40 pods",
            lambda: (
                (p := sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"]) and len(p) >= 40 and p
            ),
            60,
        )
        assert all(p.poll() is None for p in procs), "a replica exited on losing the lease"
        assert ready(led), "the replica that lost the lease stopped serving"
        texts = [scrape(health_port(r))[1] for r in range(2)]
    ungated = [
        p["metadata"]["name"]
        for p in pods
        if gate("web") not in [g["conditionType"] for g in p["spec"].get("readinessGates") or ()]
    ]
    assert not ungated, f"{len(ungated)} of {len(pods)} pods have no gate: {ungated[:5]}"
    assert failed_webhook_calls(apiserver_log, log_start) == []
    assert sum(sum(samples(t, "podgate_webhook_requests_total", result="patched")) for t in texts) >= 40
