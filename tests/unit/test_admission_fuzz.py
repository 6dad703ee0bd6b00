"""Malformed AdmissionReviews against the webhook app, in process: thousands of mutations of a real
review (a value of the wrong type at every path, a key missing at every path, the text truncated at
every length, nesting deeper than any parser's stack, random bytes), each answered with a 4xx and a
one-line reason or a well-formed answer, never a 5xx; and the webhook still injects afterwards.

With failurePolicy Ignore a 5xx is not loud: the pod is admitted ungated.  So this is a property of
the server a user relies on, driven through aiohttp's own test client (no sandbox)."""

from __future__ import annotations

import base64
import copy
import json
import random
import time
from collections.abc import Iterator
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from podgate.kube.api import SERVICES
from podgate.kube.fake import FakeKube
from podgate.kube.informer import Informer
from podgate.model.gates import DRAIN
from podgate.model.types import Service
from podgate.webhook.admission import InjectionPolicy
from podgate.webhook.server import PATH, make_app

SEED = 20261128
#: seconds the whole run may take on a slow 2-core machine (it takes about 5 s)
BUDGET = 60.0
REVIEW: dict[str, Any] = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "7f3c1a2e-0b8d-4c55-9f6e-2d1b6a9e4c10",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": "shop",
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "generateName": "web-7d5d7f8ffb-",
                "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": "7d5d7f8ffb"},
                "annotations": {"podgate.dev/prestop-delay": "2"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d5d7f8ffb", "controller": True}],
            },
            "spec": {
                "containers": [
                    {"name": "app", "image": "app", "ports": [{"containerPort": 8080}]},
                    {
                        "name": "side",
                        "image": "side",
                        "lifecycle": {"postStart": {"exec": {"command": ["x"]}}},
                    },
                ],
                "readinessGates": [{"conditionType": "example.com/other"}],
            },
        },
        "oldObject": None,
        "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    },
}
#: what a value at any path may be turned into
CONFUSERS: list[Any] = [None, 0, -1, 1.5, True, "", "x", "é" * 300, [], [1, "a"], {}, {"a": None}, [[[]]]]
EXPECTED_PATCH = [
    {
        "op": "replace",
        "path": "/spec/readinessGates",
        "value": [
            {"conditionType": "example.com/other"},
            {"conditionType": "service.readiness.podgate.dev/web"},
        ],
    },
    {
        "op": "add",
        "path": "/spec/containers/0/lifecycle",
        "value": {"preStop": {"exec": {"command": ["sleep", "2"]}}},
    },
    {
        "op": "add",
        "path": "/spec/containers/1/lifecycle/preStop",
        "value": {"exec": {"command": ["sleep", "2"]}},
    },
]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into ``value``: each object key and each list index, at every depth."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield (*prefix, key)
        yield from paths(inner, (*prefix, key))


def replaced(value: Any, path: tuple[Any, ...], new: Any, delete: bool = False) -> Any:
    out = copy.deepcopy(value)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(new)
    return out


def nested(depth: int, inner: str = "{}") -> str:
    return '{"a":' * depth + inner + "}" * depth


def mutations(rng: random.Random) -> Iterator[bytes]:
    text = json.dumps(REVIEW)
    every = list(paths(REVIEW))
    for path in every:  # the wrong type at every path, and every key gone
        for confuser in CONFUSERS:
            yield json.dumps(replaced(REVIEW, path, confuser)).encode()
        yield json.dumps(replaced(REVIEW, path, None, delete=True)).encode()
    for cut in range(0, len(text), 3):  # truncated
        yield text[:cut].encode()
    for depth in (1_000, 100_000):  # deeper than the parser's stack, at the top and inside the pod
        yield ("[" * depth + "]" * depth).encode()
        yield nested(depth).encode()
        yield text.replace('"spec": {', f'"spec": {{"deep": {nested(depth)}, ', 1).encode()
        yield text.replace('"labels": {', f'"labels": {{"deep": {nested(depth, "1")}, ', 1).encode()
    yield b'{"kind": "AdmissionReview", "request": {"uid": ' + b"9" * 5000 + b"}}"  # too many digits
    for _ in range(1_000):  # several wrong values at once
        review = REVIEW
        for _ in range(rng.randint(2, 5)):
            review = replaced(
                review, rng.choice(list(paths(review)) or [("request",)]), rng.choice(CONFUSERS)
            )
        yield json.dumps(review).encode()
    for _ in range(500):  # random bytes, and random bytes inside a real review
        junk = rng.randbytes(rng.randint(0, 400))
        yield junk
        at = rng.randrange(len(text))
        yield text[:at].encode() + junk + text[at:].encode()


def services() -> Informer[Service]:
    informer: Informer[Service] = Informer(FakeKube(), SERVICES)
    informer.cache["shop/web"] = {  # type: ignore[typeddict-item]
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}},
    }
    informer.synced.set()
    return informer


async def test_no_malformed_review_gets_a_5xx_and_injection_still_works() -> None:
    results: list[str] = []
    app = make_app(
        services(),
        lambda s: s["spec"]["type"] == "LoadBalancer",
        InjectionPolicy(prestop=DRAIN, drain_url="http://127.0.0.1:9447"),
        observe=lambda result, seconds: results.append(result),
    )
    started = time.monotonic()
    statuses: dict[int, int] = {}
    async with TestClient(TestServer(app)) as client:
        sent = 0
        for body in mutations(random.Random(SEED)):
            async with client.post(PATH, data=body, headers={"Content-Type": "application/json"}) as r:
                text = await r.text()
                statuses[r.status] = statuses.get(r.status, 0) + 1
                assert r.status < 500, f"{r.status} for {body[:200]!r}: {text}"
                if r.status == 200:
                    answer = json.loads(text)
                    assert answer["kind"] == "AdmissionReview" and answer["response"]["allowed"] is True
                    assert answer["response"]["uid"] == json.loads(body)["request"]["uid"]
                else:
                    assert r.status == 400, f"{r.status} for {body[:200]!r}: {text}"
                    assert text.startswith("bad AdmissionReview: ") and text.count("\n") == 1, text
            sent += 1
            assert time.monotonic() - started < BUDGET, f"{sent} reviews took over {BUDGET:.0f}s"
        assert sent >= 3_000 and statuses.get(400, 0) >= 1_000, (sent, statuses)

        # the real review, after all of that: gates and the preStop sleep as before
        async with client.post(PATH, json=REVIEW) as r:
            assert r.status == 200
            response = (await r.json())["response"]
    assert response["uid"] == REVIEW["request"]["uid"] and response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == EXPECTED_PATCH
    assert results[-1] == "patched" and results.count("bad_request") == statuses[400]
