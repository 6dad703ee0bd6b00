"""The eviction guard's and the drain hook's endpoints fuzzed as the admission webhook's is
(tests/unit/test_admission_fuzz.py), in process through aiohttp's own client and the handlers
the controller serves: malformed eviction reviews (a value of the wrong type at every path, a
key missing at every path, truncated at every length, nested deeper than any parser's stack,
random bytes, bodies over the cap) and malformed hook calls (random namespaces and tokens, in
the path and in the header, oversized, other methods).  Each gets a 4xx with a one-line reason
or a well-formed answer, never a 5xx; and afterwards a real eviction is still refused and a
real hook still drains.

Both are on every drain's path: a 5xx from the guard lets the eviction through (failurePolicy
Ignore), one from the drain hook sends SIGTERM at once."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from podgate.app.drain_server import DrainServer
from podgate.kube.api import PODS, SERVICES
from podgate.model import gates, policy
from podgate.model.lb import Health, Target
from podgate.webhook import eviction, isolated
from podgate.webhook.eviction import EvictionGuard
from tests.unit.test_admission_fuzz import CONFUSERS, nested, paths, replaced
from tests.unit.test_drain import draining_pod, world_with
from tests.unit.world import NS, World, pod, service

SEED = 20261205
#: seconds each run may take on a slow 2-core machine (each takes a few seconds)
BUDGET = 60.0
REVIEW: dict[str, Any] = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "0b7d6f0e-3c0a-4b57-a1a4-6c1b8d2f9e11",
        "kind": {"group": "policy", "version": "v1beta1", "kind": "Eviction"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "subResource": "eviction",
        "requestKind": {"group": "policy", "version": "v1", "kind": "Eviction"},
        "name": "p1",
        "namespace": NS,
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:cluster-autoscaler"},
        "object": {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "p1", "namespace": NS},
            "deleteOptions": {"gracePeriodSeconds": 30},
        },
        "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    },
}


def review_mutations(rng: random.Random) -> Iterator[bytes]:
    text = json.dumps(REVIEW)
    for path in list(paths(REVIEW)):
        for confuser in CONFUSERS:
            yield json.dumps(replaced(REVIEW, path, confuser)).encode()
        yield json.dumps(replaced(REVIEW, path, None, delete=True)).encode()
    for cut in range(0, len(text), 3):
        yield text[:cut].encode()
    for depth in (1_000, 20_000):  # deeper than the parser's stack (the body cap ends deeper ones)
        yield ("[" * depth + "]" * depth).encode()
        yield nested(depth).encode()
        yield text.replace('"object": {', f'"object": {{"deep": {nested(depth)}, ', 1).encode()
    yield b'{"kind": "AdmissionReview", "request": {"uid": ' + b"9" * 5000 + b"}}"
    for _ in range(500):
        review: Any = REVIEW
        for _ in range(rng.randint(2, 5)):
            review = replaced(
                review, rng.choice(list(paths(review)) or [("request",)]), rng.choice(CONFUSERS)
            )
        yield json.dumps(review).encode()
    for _ in range(300):
        junk = rng.randbytes(rng.randint(0, 400))
        yield junk
        at = rng.randrange(len(text))
        yield text[:at].encode() + junk + text[at:].encode()


async def test_no_malformed_eviction_review_gets_a_5xx_and_the_guard_still_refuses() -> None:
    world = World()
    world.add(SERVICES, service(annotations={policy.MIN_HEALTHY_TARGETS: "2"}))
    for i in range(1, 4):
        world.add(PODS, pod(f"p{i}", ip=f"10.0.0.{i}"))
        health = Health.HEALTHY if i <= 2 else Health.INITIAL
        world.provider.set_health(Target(f"10.0.0.{i}", 8080), health, "UP" if i <= 2 else "DOWN")
    await world.sync()
    await world.reconciler.reconcile(f"{NS}/web")
    results: list[str] = []
    # settle 0: allowed reviews (of p3, whose target is not healthy) hold up no later one here
    guard = EvictionGuard(world.pods, world.services, world.resolutions, results.append, settle=0.0)
    app = web.Application()
    loop = asyncio.get_running_loop()
    app.router.add_post(eviction.PATH, isolated.on_loop(loop, guard.answer, eviction.MAX_REVIEW_BYTES))
    started, statuses, sent = time.monotonic(), dict[int, int](), 0
    async with TestClient(TestServer(app)) as client:
        bodies = [*review_mutations(random.Random(SEED)), b"{" * (eviction.MAX_REVIEW_BYTES + 1)]
        for body in bodies:
            async with client.post(
                eviction.PATH, data=body, headers={"Content-Type": "application/json"}
            ) as r:
                text = await r.text()
                statuses[r.status] = statuses.get(r.status, 0) + 1
                assert r.status < 500, f"{r.status} for {body[:200]!r}: {text}"
                if r.status == 200:
                    answer = json.loads(text)["response"]
                    assert answer["uid"] == json.loads(body)["request"]["uid"]
                    assert answer["allowed"] in (True, False)
                    if not answer["allowed"]:
                        assert (
                            answer["status"]["code"] == 429 and "Cannot evict" in answer["status"]["message"]
                        )
                elif r.status == 413:
                    assert len(body) > eviction.MAX_REVIEW_BYTES and text.count("\n") == 1, text
                else:
                    assert r.status == 400, f"{r.status} for {body[:200]!r}: {text}"
                    assert text.startswith("bad AdmissionReview: ") and text.count("\n") == 1, text
            sent += 1
            assert time.monotonic() - started < BUDGET, f"{sent} reviews took over {BUDGET:.0f}s"
        assert sent >= 1_500 and statuses.get(400, 0) >= 500 and statuses.get(413, 0) >= 1, (sent, statuses)

        async with client.post(eviction.PATH, json=REVIEW) as r:  # the real one, after all that
            response = (await r.json())["response"]
    assert response["allowed"] is False and "(2 healthy now)" in response["status"]["message"]
    assert results.count("bad_request") == statuses[400] and results[-1] == "refused"
    assert guard.tracked()["refused"] <= 3  # forged reviews remember at most one entry a pod


def hook_mutations(rng: random.Random) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(method, path, headers) of malformed hook calls."""
    alphabet = "".join(chr(c) for c in range(32, 127)) + "é/%?#\u2028"
    for _ in range(400):
        ns = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        token = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        yield "GET", f"/drain/{quote(ns, safe='')}/{quote(token, safe='')}", {}
        yield "GET", f"//drain/{quote(ns, safe='')}", {gates.DRAIN_TOKEN_HEADER: quote(token)}
        yield "GET", f"/drain/{quote(ns)}/{quote(token)}", {}  # slashes left in: other routes
    for n in (1, 2, 50):
        yield "GET", "/" * n + "drain", {}
        yield "GET", f"/drain{'/' * n}{NS}", {}
    yield "GET", f"/drain/{NS}/" + "x" * 6000, {}
    yield "GET", f"/drain/{NS}", {gates.DRAIN_TOKEN_HEADER: "x" * 6000}
    yield "GET", f"/drain/{NS}", {gates.DRAIN_TOKEN_HEADER: ""}
    yield "GET", f"/drain/{NS}/tok-p1?x=" + "y" * 500, {}  # a query string: ignored, still drains
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        yield method, f"/drain/{NS}/tok-p1", {}
    for path in ("/", "/healthz", "/metrics", "/mutate-pods", "/validate-eviction", "/drain/%00/%00"):
        yield "GET", path, {}


async def test_no_malformed_hook_call_gets_a_5xx_and_the_hook_still_drains() -> None:
    _, endpoint, seen = await world_with(
        draining_pod("p1", token="tok-p1"), draining_pod("p2", "10.0.0.2", "tok-p2")
    )
    started, statuses, sent = time.monotonic(), dict[int, int](), 0
    async with (
        TestServer(DrainServer("127.0.0.1", 0, endpoint).app()) as server,
        aiohttp.ClientSession() as client,
    ):
        base = f"http://{server.host}:{server.port}"
        for method, path, headers in hook_mutations(random.Random(SEED)):
            # the path as sent, verbatim (a kubelet's "//drain/..." included)
            async with client.request(method, URL(base + path, encoded=True), headers=headers) as r:
                text = await r.text()
                statuses[r.status] = statuses.get(r.status, 0) + 1
                assert r.status < 500, f"{r.status} for {method} {path[:200]!r} {headers}: {text}"
                assert r.status in (200, 400, 404, 405), f"{r.status} for {method} {path[:200]!r}: {text}"
                assert text.count("\n") <= 1, text
            sent += 1
            assert time.monotonic() - started < BUDGET, f"{sent} calls took over {BUDGET:.0f}s"
        assert sent >= 1_000 and statuses.get(404, 0) >= 500, (sent, statuses)
        async with client.get(f"{base}/drain/{NS}", headers={gates.DRAIN_TOKEN_HEADER: "tok-p2"}) as r:
            assert r.status == 200 and (await r.text()).startswith("drained: ")
    assert seen[-1] == "drained" and "error" not in seen and len(endpoint._draining) == 0
    assert seen.count("unknown_pod") >= 400  # the rest miss both routes: aiohttp's own 404
