"""The pod webhook's ``matchConditions``: which pods the API server never sends to podgate, and
that none of them is a pod podgate's review would have changed.

``gates.may_need_review`` is the conditions' intent in Python; the e2e test
(tests/e2e/test_match_conditions.py) holds the API server's evaluation of the CEL to it.  Here:
the rendered configurations carry the conditions, the intent on named cases, and the safety
property on thousands of random pods, Services, checks and settings: a pod the conditions skip
gets no patch from the admission code, whatever else the namespace holds."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from podgate.model import gates
from podgate.model.checks import CheckSpec, TcpCheck
from podgate.webhook import server as webhook
from podgate.webhook.admission import InjectionPolicy, review_response

PODGATE_GATE = "service.readiness.podgate.dev/web"
VENDOR_GATE = "target-health.elbv2.k8s.aws/k8s-shop-web-0123456789"
HOOK = {"preStop": {"httpGet": {"path": "/drain/shop/tok", "port": 9447, "host": "127.0.0.1"}}}


@pytest.mark.parametrize("migration", [False, True])
def test_every_pod_webhook_carries_the_conditions(migration: bool) -> None:
    config = webhook.webhook_configuration(
        "podgate", b"", url="https://127.0.0.1:9443/mutate-pods", service=None, migration_labels=migration
    )
    for hook in config["webhooks"]:
        assert hook["matchConditions"] == list(gates.MATCH_CONDITIONS)
        # each named as the API requires (a qualified name, unique), 64 at most per webhook
        names = [c["name"] for c in hook["matchConditions"]]
        assert len(set(names)) == len(names) <= 64
        assert all(not gates.condition_type_errors(n) for n in names)


def pod(
    labels: dict[str, str] | None = None,
    gate_types: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    hooked: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"generateName": "p-"}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    container: dict[str, Any] = {"name": "app", "image": "app"}
    if hooked:
        container["lifecycle"] = HOOK
    spec: dict[str, Any] = {"containers": [container]}
    if gate_types is not None:
        spec["readinessGates"] = [{"conditionType": g} for g in gate_types]
    return {"metadata": meta, "spec": spec}


@pytest.mark.parametrize(
    ("case", "want"),
    [
        (pod({"app": "web"}), True),  # a Deployment's pod: a Service may select it
        (pod({"batch.kubernetes.io/job-name": "x"}), True),  # a Job's pod is labelled too
        (pod(), False),  # no labels: no Service or ReadinessCheck selects it
        (pod({}), False),
        (pod({}, []), False),
        (pod(None, [VENDOR_GATE]), True),  # --remove-gate-prefix may drop that gate
        (pod(None, [PODGATE_GATE]), True),
        # already gated and hooked (a reinvocation after another webhook changed the pod): it
        # may now have labels another Service selects, or a container without the hook
        (pod({"app": "web"}, [PODGATE_GATE], {gates.DRAIN_TOKEN_ANNOTATION: "tok"}, hooked=True), True),
        # the opt-out label is the objectSelector's, not a condition's: still True here
        (pod({gates.INJECT_LABEL: "disabled"}), True),
        (pod({"app": "web"}, None, {gates.MIRROR_ANNOTATION: "0123abcd"}), False),  # a static pod's mirror
        (pod({"app": "web"}, None, {"kubernetes.io/config.source": "api"}), True),
    ],
)
def test_which_pods_reach_the_webhook(case: dict[str, Any], want: bool) -> None:
    assert gates.may_need_review(case) is want  # type: ignore[arg-type]


def _review(p: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "operation": "CREATE",
            "namespace": "shop",
            "dryRun": dry_run,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": p,
        },
    }


KEYS = ["app", "tier", "canary", "batch.kubernetes.io/job-name"]
VALUES = ["web", "fe", "1", ""]
OPERATORS = ["In", "NotIn", "Exists", "DoesNotExist"]


def _labels(rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(VALUES) for k in rng.sample(KEYS, rng.randint(0, len(KEYS)))}


def _selector(rng: random.Random) -> dict[str, Any]:
    expressions = [
        {"key": rng.choice(KEYS), "operator": (op := rng.choice(OPERATORS))}
        | ({"values": rng.sample(VALUES, 2)} if op in ("In", "NotIn") else {})
        for _ in range(rng.randint(0, 2))
    ]
    out: dict[str, Any] = {"matchExpressions": expressions}
    if rng.random() < 0.5:
        out["matchLabels"] = _labels(rng)
    return out


def _check(rng: random.Random, i: int) -> CheckSpec:
    return CheckSpec(name=f"c{i}", namespace="shop", selector=_selector(rng), check=TcpCheck(8080))


def test_a_pod_the_conditions_skip_gets_no_patch_whatever_the_namespace_holds() -> None:
    """The safety property: were the API server to send it anyway, podgate's answer to a pod the
    conditions skip (a mirror pod aside: its gates would be inert) is "unchanged", for any mix of
    Services (served or not, any selector, being deleted), ReadinessChecks (selectors of only
    ``NotIn``/``DoesNotExist`` too), removed prefixes, preStop settings and dry-run."""
    rng = random.Random(20261205)
    skipped = 0
    for _ in range(3000):
        p = pod(
            _labels(rng) if rng.random() < 0.7 else rng.choice([None, {}]),
            rng.choice([None, [], [PODGATE_GATE], [VENDOR_GATE], [PODGATE_GATE, VENDOR_GATE]]),
            rng.choice([None, {}, {"podgate.dev/prestop": "sleep 3"}, {gates.DRAIN_TOKEN_ANNOTATION: "t"}]),
            hooked=rng.random() < 0.3,
        )
        services = [
            {
                "metadata": {"name": f"s{i}", "namespace": "shop"}
                | ({"deletionTimestamp": "2026-01-01T00:00:00Z"} if rng.random() < 0.1 else {}),
                "spec": {"type": rng.choice(["LoadBalancer", "ClusterIP"]), "selector": _labels(rng)},
            }
            for i in range(rng.randint(0, 4))
        ]
        checks = [_check(rng, i) for i in range(rng.randint(0, 3))]
        policy = InjectionPolicy(
            remove_prefixes=rng.choice([(), ("target-health.elbv2.k8s.aws/",)]),
            prestop=rng.choice([gates.DRAIN, gates.NO_PRESTOP, gates.PreStop("sleep", 5)]),
            drain_url=rng.choice([None, "http://127.0.0.1:9447"]),
        )
        answer = review_response(
            _review(p, rng.random() < 0.2), services, lambda s: True, policy, checks, new_token=lambda: "tok"
        )["response"]
        if gates.may_need_review(p):  # type: ignore[arg-type]
            continue
        skipped += 1
        if "patch" in answer:
            raise AssertionError((p, services, checks, policy, json.loads(base64.b64decode(answer["patch"]))))
    assert skipped > 300, "the property was exercised"


def test_a_labelled_pod_a_service_selects_is_sent_and_gated() -> None:
    """The other side: a pod the conditions send gets its gate (the conditions never stand
    between a selected pod and its gate)."""
    p = pod({"app": "web"})
    assert gates.may_need_review(p)  # type: ignore[arg-type]
    services = [{"metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"app": "web"}}}]
    answer = review_response(_review(p, False), services, lambda s: True, InjectionPolicy())["response"]
    ops = json.loads(base64.b64decode(answer["patch"]))
    assert {"op": "add", "path": "/spec/readinessGates", "value": [{"conditionType": PODGATE_GATE}]} in ops
