"""The webhook's shared certificates: the rotation decision (a table), the Secret every replica
shares (the race to create it, each rotation step, a CA retired only once every live replica
serves its successor), and the server loading a new certificate without a restart."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import pytest
from aiohttp import web

from podgate.kube import pki
from podgate.kube.api import SECRETS, KubeError
from podgate.kube.fake import FakeKube
from podgate.kube.webhookcerts import CertificateSecret, Material, replica_key
from podgate.model.certs import CertState, RotationPolicy, Served, Step, Validity, next_step
from podgate.webhook.server import (
    FileSource,
    ServingTLS,
    SharedSecretSource,
    certificate_names,
    keep_serving,
)

POLICY = RotationPolicy(validity=100, ca_validity=1000, renew_at=0.5, settle=6)
CA = Validity(0, 1000)  # renewal due at 500
SERVING = Validity(0, 100)  # renewal due at 50


def state(**changes: object) -> CertState:
    base = CertState(ca=CA, serving=SERVING, serving_fingerprint="new")
    return CertState(**{**base.__dict__, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cert_state", "now", "step"),
    [
        (state(), 10, Step.NOTHING),
        (state(), 50, Step.RENEW_SERVING),
        (state(), 500, Step.ADD_NEXT_CA),
        # a next CA waits for the bundle holding it to reach the API server, then signs
        (state(next_ca_since=498.0), 503, Step.NOTHING),
        (state(next_ca_since=498.0), 504, Step.PROMOTE_NEXT_CA),
        # the previous CA stays while a live replica still serves a certificate it signed ...
        (
            state(ca=Validity(0, 1000), previous_ca_since=10.0, served={"a": Served("old", 19)}),
            20,
            Step.NOTHING,
        ),
        # ... and not before the change had time to reach every replica, even when all say new
        (state(previous_ca_since=10.0, served={"a": Served("new", 12)}), 14, Step.NOTHING),
        (
            state(previous_ca_since=10.0, served={"a": Served("new", 19), "b": Served("new", 18)}),
            20,
            Step.DROP_PREVIOUS_CA,
        ),
        # a replica silent for a whole settle period is gone: it holds nothing up
        (
            state(previous_ca_since=10.0, served={"a": Served("new", 19), "b": Served("old", 13)}),
            20,
            Step.DROP_PREVIOUS_CA,
        ),
        # no second rotation of the CA while the previous one is still trusted
        (state(previous_ca_since=10.0, served={"a": Served("old", 599)}), 600, Step.RENEW_SERVING),
        # a certificate that lacks a name the replica is reached by is renewed at once
        (state(missing_names=frozenset({"podgate.podgate-system.svc"})), 10, Step.RENEW_SERVING),
    ],
)
def test_next_step(cert_state: CertState, now: float, step: Step) -> None:
    assert next_step(cert_state, now, POLICY) is step


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def replica(kube: FakeKube, name: str, clock: Clock, policy: RotationPolicy = POLICY) -> CertificateSecret:
    return CertificateSecret(
        kube, "podgate-system", "podgate-webhook-certs", name, ["localhost"], ["127.0.0.1"], policy, clock
    )


def cas(m: Material) -> list[bytes]:
    return [b"-----BEGIN CERTIFICATE-----" + c for c in m.bundle.split(b"-----BEGIN CERTIFICATE-----")[1:]]


async def test_replicas_racing_to_create_the_secret_all_serve_the_winners() -> None:
    kube, clock = FakeKube(), Clock()
    a, b, c = (replica(kube, n, clock) for n in "abc")
    materials = await asyncio.gather(a.sync(), b.sync(), c.sync())
    assert len({(m.cert, m.key, m.bundle) for m in materials}) == 1, "replicas serve different certificates"
    assert [w.verb for w in kube.writes].count("create") == 3  # each tried; one won
    assert "replace" not in [w.verb for w in kube.writes]
    assert len(cas(materials[0])) == 1


async def test_a_secret_made_for_other_names_is_renewed_for_every_replicas_names() -> None:
    """Found on the real node: the sandbox's host controller (reached by URL, so its certificate
    was for localhost) had left the Secret; the replicas deployed later, reached through the
    Service, served it as it was and the API server refused every call ("certificate is valid
    for localhost, not podgate.podgate-system.svc"), admitting every pod ungated.  A replica
    missing a name renews the serving certificate (same CA: the registered bundle stays good)
    for its names and the ones already there, so replicas reached both ways converge."""
    kube, clock = FakeKube(), Clock()
    by_url = replica(kube, "host", clock)
    first = await by_url.sync()
    service_names = ["podgate.podgate-system.svc", "podgate.podgate-system.svc.cluster.local"]
    in_cluster = CertificateSecret(
        kube,
        "podgate-system",
        "podgate-webhook-certs",
        "pod",
        ["localhost", *service_names],
        [],
        POLICY,
        clock,
    )
    renewed = await in_cluster.sync()
    assert renewed.fingerprint != first.fingerprint and renewed.bundle == first.bundle
    dns, ips = pki.subject_names(renewed.cert)
    assert (sorted(dns), ips) == (sorted(["localhost", *service_names]), ["127.0.0.1"])
    writes = len(kube.writes)
    for r in (by_url, in_cluster, by_url):
        assert (await r.sync()).fingerprint == renewed.fingerprint
    assert len(kube.writes) == writes, "replicas took turns replacing the certificate"


async def test_a_ca_rotates_in_steps_and_the_old_one_goes_once_every_live_replica_moved() -> None:
    kube, clock = FakeKube(), Clock()
    policy = RotationPolicy(validity=100, ca_validity=200, renew_at=0.5, settle=6)
    a, b, gone = (replica(kube, n, clock, policy) for n in ("a", "b", "gone"))
    first = await a.sync()
    for r in (a, b, gone):
        assert await r.report(await r.sync())
    assert not await a.report(await a.sync()), "reported again with nothing new"

    clock.offset = 50  # the serving certificate is due (its CA is not): same CA, new certificate
    renewed = await a.sync()
    assert renewed.fingerprint != first.fingerprint and renewed.bundle == first.bundle
    secret = kube.object(SECRETS, "podgate-webhook-certs", "podgate-system")
    assert secret is not None
    assert replica_key("gone") not in secret["metadata"]["annotations"], "a silent replica's report stayed"

    clock.offset = 95  # the CA is due: a next CA joins the bundle; nothing served changes yet
    added = await b.sync()
    assert added.fingerprint == renewed.fingerprint and cas(added) == [*cas(first), cas(added)[1]]
    await b.report(added)
    clock.offset = 98
    assert (await a.sync()).bundle == added.bundle, "signed with the next CA before the bundle settled"

    clock.offset = 102  # settled: the next CA signs; both CAs stay trusted
    promoted = await a.sync()
    new_ca, old_ca = cas(promoted)
    assert (new_ca, old_ca) == (cas(added)[1], cas(first)[0])
    await a.report(promoted)
    clock.offset = 107
    await b.report(added)  # b, alive, still serves the certificate of the old CA
    clock.offset = 108
    assert cas(await a.sync()) == [new_ca, old_ca], "old CA dropped while a live replica used it"

    clock.offset = 109
    await b.report(await b.sync())  # b moved
    clock.offset = 110
    assert cas(await a.sync()) == [new_ca]


async def test_the_server_loads_a_new_certificate_without_a_restart(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    failures: list[str] = []
    tls = ServingTLS(tmp_path / "certs", failures.append)
    secret = replica(kube, "a", clock)
    first = await secret.sync()
    assert tls.load(first.cert, first.key, first.bundle)
    assert not tls.load(first.cert, first.key, first.bundle)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    port = runner.addresses[0][1]

    async def served_with(bundle: bytes) -> bool:
        ctx = ssl.create_default_context(cadata=bundle.decode())
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
        except ssl.SSLError:
            return False
        writer.close()
        return True

    try:
        assert await served_with(first.bundle)
        assert (tmp_path / "certs" / "ca.crt").read_bytes() == first.bundle
        # a new CA (fresh Secret): the next handshake is with the new certificate
        kube.objects.clear()
        second = await secret.sync()
        assert tls.load(second.cert, second.key, second.bundle)
        assert await served_with(second.bundle)
        assert not await asyncio.to_thread(_blocking_handshake, port, first.bundle)
        await asyncio.sleep(0.1)
        assert failures == ["TLSV1_ALERT_UNKNOWN_CA"], failures
    finally:
        await runner.cleanup()


def _blocking_handshake(port: int, bundle: bytes) -> bool:
    """A client that, like the API server, tells the server why it refuses the certificate."""
    ctx = ssl.create_default_context(cadata=bundle.decode())
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except ssl.SSLError:
        return False


async def test_mounted_files_are_reloaded_when_cert_manager_renews_them(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    tls = ServingTLS(tmp_path / "unused")
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    source = FileSource(crt, key)
    for expected in range(2):
        kube.objects.clear()
        m = await replica(kube, "a", clock).sync()
        crt.write_bytes(m.cert)
        key.write_bytes(m.key)
        assert await source.refresh(tls) == m.cert
        assert tls.fingerprint == m.fingerprint, f"renewal {expected} not served"


async def test_keep_serving_registers_only_changes_and_survives_an_unreadable_secret(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    tls = ServingTLS(tmp_path)
    registered: list[bytes] = []

    async def registration(bundle: bytes) -> None:
        registered.append(bundle)

    kube.fail(
        "get", SECRETS, "podgate-webhook-certs", KubeError("etcdserver: request timed out", 500), times=2
    )
    first = asyncio.Event()
    task = asyncio.create_task(
        keep_serving(tls, SharedSecretSource(replica(kube, "a", clock)), registration, 0.01, first)
    )
    async with asyncio.timeout(2):
        await first.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert tls.fingerprint is not None and len(set(registered)) == 1


@pytest.mark.parametrize(
    ("url", "service", "bind", "names"),
    [
        (
            None,
            "podgate-system/podgate",
            "0.0.0.0",
            (
                ["localhost", "podgate.podgate-system.svc", "podgate.podgate-system.svc.cluster.local"],
                ["127.0.0.1"],
            ),
        ),
        ("https://127.0.0.1:19443/mutate-pods", None, "127.0.0.1", (["localhost"], ["127.0.0.1"])),
        (
            "https://webhook.example:443/m",
            None,
            "10.0.0.7",
            (["localhost", "webhook.example"], ["127.0.0.1", "10.0.0.7"]),
        ),
    ],
)
def test_certificate_names(
    url: str | None, service: str | None, bind: str, names: tuple[list[str], list[str]]
) -> None:
    assert certificate_names(url, service, bind) == names
