"""The image ``make image`` builds, run as a user runs it: runc, uid 65532, a read-only root, no
capabilities, emptyDir-like tmpfs for certificates, host network.  It is the sandbox's only
controller: it serves and registers the webhook and reconciles a Service attached to an HAProxy
backend (attach mode: the image holds no haproxy binary, as in a cluster)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podgate.model.lb import HAPROXY_BACKEND
from podgate_sandbox.controlplane import CONTROLLER_NAMESPACE
from podgate_sandbox.image import BUILDAH, TAG, build, lock_path, parse_lock

from .conftest import OFFSET, SandboxHandle, condition, grant, wait_for
from .test_controller import INJECT, deployment, gate, lb_service
from .test_webhook_replicas import CONFIG, controller_stopped, front_door_up, ready

LOCKED_PYTHON = Path(__file__).resolve().parents[2] / "image" / "requirements.txt"

pytestmark = pytest.mark.sandbox
HAPROXY_FRONT = "127.78.0.1"


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("buildah") is None or shutil.which("runc") is None:
        pytest.fail("buildah and runc are needed (make setup installs them)")
    build(tmp_path_factory.mktemp("image") / "podgate-image.tar")
    name = subprocess.run([*BUILDAH, "from", TAG], capture_output=True, text=True, check=True).stdout.strip()
    mounted = subprocess.run([*BUILDAH, "mount", name], capture_output=True, text=True, check=True)
    try:
        yield Path(mounted.stdout.strip())
    finally:
        subprocess.run([*BUILDAH, "umount", name], capture_output=True, check=False)
        subprocess.run([*BUILDAH, "rm", name], capture_output=True, check=False)


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Path]:
    """The user's own HAProxy with a backend podgate attaches pods to; its runtime socket is
    open to the container's user."""
    run = tmp_path / "haproxy-run"
    run.mkdir(mode=0o777)
    run.chmod(0o777)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"global\n    stats socket {run}/rt.sock mode 666 level admin\n"
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
        f"frontend fe\n    bind {HAPROXY_FRONT}:18080\n    default_backend app\n"
        "backend app\n    balance roundrobin\n"
    )
    proc = subprocess.Popen(["haproxy", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the HAProxy socket", lambda: (run / "rt.sock").exists(), 10)
        yield run
    finally:
        proc.terminate()
        proc.wait(10)


def bundle(tmp_path: Path, rootfs: Path, sandbox: SandboxHandle, run: Path, argv: list[str]) -> Path:
    """A runc bundle as a hardened pod would run it."""
    etc = tmp_path / "etc-podgate"
    etc.mkdir(mode=0o755)
    etc.chmod(0o755)
    shutil.copy(sandbox.state_dir / "controller.kubeconfig", etc / "kubeconfig")
    (etc / "kubeconfig").chmod(0o644)
    path = tmp_path / "bundle"
    path.mkdir()
    subprocess.run(["runc", "spec"], cwd=path, check=True)
    spec: dict[str, Any] = json.loads((path / "config.json").read_text())
    spec["root"] = {"path": str(rootfs), "readonly": True}
    process = spec["process"]
    process.update(
        terminal=False,
        user={"uid": 65532, "gid": 65532},
        args=argv,
        cwd="/",
        noNewPrivileges=True,
        capabilities={k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
    )
    process["env"] = [*process["env"], "PYTHONUNBUFFERED=1"]
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    spec["mounts"] += [
        {"destination": "/etc/podgate", "type": "bind", "source": str(etc), "options": ["rbind", "ro"]},
        {"destination": "/run/haproxy", "type": "bind", "source": str(run), "options": ["rbind", "rw"]},
        *(
            {
                "destination": d,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"],
            }
            for d in ("/certs", "/tmp")
        ),
    ]
    (path / "config.json").write_text(json.dumps(spec))
    return path


def test_the_image_runs_as_the_sandboxs_controller(
    sandbox: SandboxHandle, namespace: str, rootfs: Path, haproxy: Path, tmp_path: Path
) -> None:
    port = 9444 + OFFSET
    argv = [
        "podgate",
        "controller",
        "--kubeconfig=/etc/podgate/kubeconfig",
        "--haproxy-runtime-socket=/run/haproxy/rt.sock",
        "--webhook-bind=127.0.0.1",
        f"--webhook-port={port}",
        "--webhook-cert-dir=/certs",
        f"--webhook-url=https://127.0.0.1:{9443 + OFFSET}/mutate-pods",
        f"--webhook-config-name={CONFIG}",
        f"--namespace={CONTROLLER_NAMESPACE}",
        "--leader-elect",
        f"--leader-election-namespace={CONTROLLER_NAMESPACE}",
        "--lease-duration=6",
        "--health-bind=127.0.0.1",
        f"--health-port={8081 + OFFSET}",
        "--drain-bind=127.0.0.1",
        f"--drain-port={8082 + OFFSET}",
    ]
    path = bundle(tmp_path, rootfs, sandbox, haproxy, argv)
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    grant(sandbox, "haproxy", namespace, "app")
    # no --default-provider (as in deploy/): the Service names its provider
    sandbox.apply(
        lb_service("web", "web", **{HAPROXY_BACKEND: "app", "podgate.dev/load-balancer-provider": "haproxy"}),
        namespace,
    )
    name = f"podgate-{uuid.uuid4().hex[:8]}"
    log = sandbox.state_dir / "logs" / "image-controller.log"
    with controller_stopped(sandbox), open(log, "w") as out:
        proc = subprocess.Popen(["runc", "run", "--bundle", str(path), name], stdout=out, stderr=out)
        try:
            wait_for("the image's controller ready", lambda: ready(0), 60)
            wait_for("the front door to send to it", front_door_up, 10)
            sandbox.apply(deployment("web", 1), namespace)

            def ready_pod() -> dict[str, Any] | None:
                items = sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"]
                ok = items and (condition(items[0], "Ready") or {}).get("status") == "True"
                return items[0] if ok else None

            pod = wait_for("the pod Ready through its gate", ready_pod, 60)
            assert (condition(pod, gate("web")) or {}).get("status") == "True"
            state = json.loads(subprocess.run(["runc", "state", name], capture_output=True, text=True).stdout)
            assert state["status"] == "running"
        finally:
            subprocess.run(["runc", "kill", name, "TERM"], capture_output=True, check=False)
            try:
                proc.wait(15)
            finally:
                subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


def test_the_image_is_its_locks_and_holds_no_pip(rootfs: Path) -> None:
    """What ran above is exactly what the repo pins: the runtime base's Debian packages at
    image/debian-runtime.lock's versions, the Python packages at image/requirements.txt's (and
    podgate), and no package installer anywhere in the image."""
    installed: dict[str, str] = {}
    for block in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Status") == "install ok installed":
            installed[fields["Package"]] = fields["Version"]
    assert installed == parse_lock(lock_path("runtime").read_text())

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    locked = {
        canonical(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCKED_PYTHON.read_text(), re.M)
    }
    (site,) = (rootfs / "opt/podgate/lib").glob("python3*/site-packages")
    present = {}
    for meta in site.glob("*.dist-info/METADATA"):
        headers = dict(
            line.split(": ", 1)
            for line in meta.read_text(errors="replace").split("\n\n", 1)[0].splitlines()
            if ": " in line
        )
        present[canonical(headers["Name"])] = headers["Version"]
    assert present.pop("podgate") == "0.1.0"
    assert present == locked

    pips = [
        str(p.relative_to(rootfs))
        for pattern in ("usr/lib/python3*/**/pip", "usr/local/lib/python3*/**/pip", "opt/podgate/lib/*/*/pip")
        for p in rootfs.glob(pattern)
    ]
    pips += [
        str(p) for d in ("usr/bin", "usr/local/bin", "opt/podgate/bin") for p in (rootfs / d).glob("pip*")
    ]
    assert pips == [], pips
