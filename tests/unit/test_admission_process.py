"""Admission in a process of its own (podgate.app.admission): the child's server on its own
caches and the controller's certificate files, eviction reviews handed over the socket pair to
the controller and answered with its answer, observations sent back for the controller's
metrics; the child stops when the controller goes, and one that exits is started again."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from podgate.app.admission import AdmissionProcess, ChildConfig, Parent, serve
from podgate.kube import pki
from podgate.kube.api import SERVICES
from podgate.kube.fake import FakeKube
from podgate.model.resolution import Settings
from podgate.webhook import eviction
from podgate.webhook.admission import InjectionPolicy
from podgate.webhook.isolated import Answer
from podgate.webhook.server import PATH
from tests.unit.test_admission_fuzz import EXPECTED_PATCH, REVIEW
from tests.unit.test_app import until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def certificate(tmp_path: Path) -> tuple[Path, Path, bytes]:
    day = dt.timedelta(days=1)
    ca = pki.new_ca("test-ca", day)
    cert, key = pki.new_serving_cert("admission", ["localhost"], ["127.0.0.1"], ca, day)
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    return tmp_path / "tls.crt", tmp_path / "tls.key", ca[0]


def config(tmp_path: Path) -> tuple[ChildConfig, bytes]:
    """The child's configuration, and the CA that signed its certificate."""
    cert, key, ca = certificate(tmp_path)
    return ChildConfig(
        kubeconfig=None,
        user_agent="podgate/test",
        bind="127.0.0.1",
        port=free_port(),
        cert_file=cert,
        key_file=key,
        cert_check_period=0.2,
        resolution=Settings(group_annotations={"fake": ()}, default_provider="fake"),
        policy=InjectionPolicy(),
    ), ca


async def post(port: int, ca: bytes, path: str, body: bytes) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cadata=ca.decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    raw = await reader.read()
    writer.close()
    status = int(raw.split(b" ", 2)[1])
    return status, json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def test_the_child_admits_from_its_own_caches_and_hands_evictions_to_the_controller(
    tmp_path: Path,
) -> None:
    kube = FakeKube()
    kube.add(
        SERVICES,
        {
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]},
        },
    )
    cfg, ca = config(tmp_path)
    listener = socket.create_server(("127.0.0.1", cfg.port))  # the controller's, in a real child
    cfg = dataclasses.replace(cfg, listen_fd=os.dup(listener.fileno()))
    asked: list[tuple[bytes, str | None]] = []
    observed: list[tuple[str, float]] = []

    async def answer_eviction(raw: bytes, remote: str | None) -> Answer:
        asked.append((raw, remote))
        return Answer(200, b'{"answered": "by the controller"}')

    controller = AdmissionProcess(cfg, answer_eviction, lambda r, s: observed.append((r, s)), print)
    ours, theirs = socket.socketpair()
    r1, w1 = await asyncio.open_unix_connection(sock=ours)
    r2, w2 = await asyncio.open_unix_connection(sock=theirs)
    channel = asyncio.create_task(controller.channel(r1, w1))
    child = asyncio.create_task(serve(cfg, kube, Parent(r2, w2)))
    try:
        await until(controller.up.is_set)
        status, answer = await post(cfg.port, ca, PATH, json.dumps(REVIEW).encode())
        assert status == 200 and answer["response"]["allowed"]
        assert json.loads(base64.b64decode(answer["response"]["patch"])) == EXPECTED_PATCH
        status, answer = await post(cfg.port, ca, eviction.PATH, b'{"kind": "AdmissionReview"}')
        assert (status, answer) == (200, {"answered": "by the controller"})
        assert asked == [(b'{"kind": "AdmissionReview"}', "127.0.0.1")]
        await until(lambda: [r for r, _ in observed] == ["patched"])  # in the controller's metrics
        w1.close()  # the controller goes: the child stops by itself
        async with asyncio.timeout(10):
            await child
    finally:
        child.cancel()
        channel.cancel()
        await asyncio.gather(child, channel, return_exceptions=True)
        listener.close()


async def test_a_child_that_exits_is_started_again_and_stopped_with_the_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real process: one that cannot reach the API server (no kubeconfig there) exits; the
    controller starts another half a second later, then after a second, and leaves none behind
    when it stops; the listening socket is the controller's throughout (a connection made
    between two children waits in its backlog, never refused)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg, _ = config(tmp_path)
    cfg = dataclasses.replace(cfg, kubeconfig=str(tmp_path / "missing-kubeconfig"))

    async def never(raw: bytes, remote: str | None) -> Answer:
        raise AssertionError("no eviction review was sent")

    controller = AdmissionProcess(cfg, never, lambda r, s: None, print)
    running = asyncio.create_task(controller.run())
    try:
        await until(lambda: controller.starts >= 2, seconds=30)
        assert not controller.up.is_set()
        pid = controller.pid
        _, writer = await asyncio.open_connection("127.0.0.1", cfg.port)  # accepted: the backlog
        writer.close()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert controller.pid is None
    if pid is not None:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
