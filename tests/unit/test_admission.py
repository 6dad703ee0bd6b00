"""The webhook's AdmissionReview handling: answers, patches, and clear errors for bad input."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from podgate.model.gates import DRAIN, PreStop
from podgate.webhook.admission import BadReview, InjectionPolicy, parse_review, review_response

SERVICES = [
    {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}},
    },
    {
        "metadata": {"name": "web", "namespace": "other"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}},
    },
    {
        "metadata": {"name": "internal", "namespace": "shop"},
        "spec": {"type": "ClusterIP", "selector": {"app": "web"}},
    },
]


def handled(s: dict[str, Any]) -> bool:
    return bool(s["spec"]["type"] == "LoadBalancer")


def review(
    labels: dict[str, str], gates: list[str] | None = None, operation: str = "CREATE"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c"}]}
    if gates is not None:
        spec["readinessGates"] = [{"conditionType": g} for g in gates]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "abc",
            "operation": operation,
            "namespace": "shop",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": {"metadata": {"generateName": "web-", "labels": labels}, "spec": spec},
        },
    }


def patch_of(resp: dict[str, Any]) -> list[dict[str, Any]] | None:
    r = resp["response"]
    assert r["uid"] == "abc" and r["allowed"] is True
    if "patch" not in r:
        return None
    assert r["patchType"] == "JSONPatch"
    return list(json.loads(base64.b64decode(r["patch"])))


def test_injects_one_gate_per_handled_service_of_the_namespace() -> None:
    resp = review_response(review({"app": "web"}), SERVICES, handled, InjectionPolicy())
    assert patch_of(resp) == [
        {
            "op": "add",
            "path": "/spec/readinessGates",
            "value": [{"conditionType": "service.readiness.podgate.dev/web"}],
        }
    ]
    assert resp["apiVersion"] == "admission.k8s.io/v1" and resp["kind"] == "AdmissionReview"


@pytest.mark.parametrize(
    ("rev", "policy"),
    [
        (review({"app": "api"}), InjectionPolicy()),  # no Service selects it
        (review({"app": "web"}, ["service.readiness.podgate.dev/web"]), InjectionPolicy()),  # already there
        (review({"app": "web"}), InjectionPolicy(enabled=False)),  # injection turned off
        (review({"app": "web", "podgate.dev/pod-readiness-gate-inject": "disabled"}), InjectionPolicy()),
        (review({"app": "web"}, operation="UPDATE"), InjectionPolicy()),
    ],
)
def test_passes_unchanged(rev: dict[str, Any], policy: InjectionPolicy) -> None:
    assert patch_of(review_response(rev, SERVICES, handled, policy)) is None


def test_removes_vendor_gates_when_migrating() -> None:
    rev = review({"app": "web"}, ["target-health.elbv2.k8s.aws/k8s-shop-web"])
    policy = InjectionPolicy(remove_prefixes=("target-health.elbv2.k8s.aws/",))
    assert patch_of(review_response(rev, SERVICES, handled, policy)) == [
        {
            "op": "replace",
            "path": "/spec/readinessGates",
            "value": [{"conditionType": "service.readiness.podgate.dev/web"}],
        }
    ]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{", "request body is not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"kind": "Pod"}', "kind is 'Pod'"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "has no request"),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}}',
            "request.uid is missing",
        ),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", '
            b'"request": {"uid": "u", "object": 3}}',
            "request.object is missing or not an object",
        ),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", '
            b'"request": {"uid": "u", "object": {"spec": []}}}',
            "request.object.spec is not an object",
        ),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", '
            b'"request": {"uid": "u", "object": {"metadata": {"labels": {"app": ["web"]}}}}}',
            r"request.object.metadata.labels\['app'\] is not a string \(it is an array\)",
        ),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", '
            b'"request": {"uid": "u", "object": {"spec": {"readinessGates": [[]]}}}}',
            r"request.object.spec.readinessGates\[0\] is not an object",
        ),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", '
            b'"request": {"uid": "u", "resource": {"resource": 1}, "object": {}}}',
            "request.resource.resource is not a string",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_bad_reviews_are_explained(raw: bytes, error: str) -> None:
    with pytest.raises(BadReview, match=error):
        parse_review(raw)


SLEEP_3 = InjectionPolicy(prestop=PreStop("sleep", 3))
DRAIN_AT = InjectionPolicy(prestop=DRAIN, drain_url="http://10.96.0.12:8081")


def token() -> str:
    return "tok-0123456789"


def test_a_sleep_is_injected_for_load_balanced_pods_only() -> None:
    ops = patch_of(review_response(review({"app": "web"}), SERVICES, handled, SLEEP_3)) or []
    assert {
        "op": "add",
        "path": "/spec/containers/0/lifecycle",
        "value": {"preStop": {"exec": {"command": ["sleep", "3"]}}},
    } in ops
    assert patch_of(review_response(review({"app": "api"}), SERVICES, handled, SLEEP_3)) is None


def test_the_sleep_is_the_kubelets_own_action_where_the_cluster_has_it() -> None:
    policy = InjectionPolicy(prestop=PreStop("sleep", 2.5), native_sleep=True)
    ops = patch_of(review_response(review({"app": "web"}), SERVICES, handled, policy)) or []
    assert ops[-1]["value"] == {"preStop": {"sleep": {"seconds": 3}}}  # whole seconds, rounded up


def test_the_drain_hook_calls_podgate_with_a_token_the_pod_carries() -> None:
    ops = (
        patch_of(review_response(review({"app": "web"}), SERVICES, handled, DRAIN_AT, new_token=token)) or []
    )
    assert ops[1:] == [
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {"podgate.dev/drain-token": "tok-0123456789"},
        },
        {
            "op": "add",
            "path": "/spec/containers/0/lifecycle",
            "value": {
                "preStop": {
                    "httpGet": {
                        "scheme": "HTTP",
                        "host": "10.96.0.12",
                        "port": 8081,
                        "path": "/drain/shop/tok-0123456789",
                    }
                }
            },
        },
    ]


def test_where_every_kubelet_sends_headers_the_token_is_in_a_header_not_the_path() -> None:
    """The kubelet's FailedPreStopHook Event quotes the hook's path: on a cluster whose kubelets
    all send a hook's headers (API server 1.27+), the path names the namespace only."""
    policy = InjectionPolicy(prestop=DRAIN, drain_url="http://10.96.0.12:8081", drain_token_header=True)
    ops = patch_of(review_response(review({"app": "web"}), SERVICES, handled, policy, new_token=token)) or []
    assert ops[-1]["value"]["preStop"] == {
        "httpGet": {
            "scheme": "HTTP",
            "host": "10.96.0.12",
            "port": 8081,
            "path": "/drain/shop",
            "httpHeaders": [{"name": "Podgate-Drain-Token", "value": "tok-0123456789"}],
        }
    }
    assert "tok-0123456789" not in ops[-1]["value"]["preStop"]["httpGet"]["path"]


def test_the_drain_token_joins_existing_annotations_and_replaces_a_copied_one() -> None:
    rev = review({"app": "web"})
    rev["request"]["object"]["metadata"]["annotations"] = {"podgate.dev/drain-token": "copied-token"}
    ops = patch_of(review_response(rev, SERVICES, handled, DRAIN_AT, new_token=token)) or []
    assert ops[1] == {
        "op": "add",
        "path": "/metadata/annotations/podgate.dev~1drain-token",
        "value": "tok-0123456789",
    }


def test_no_drain_hook_without_an_address_the_kubelet_can_reach() -> None:
    policy = InjectionPolicy(prestop=DRAIN)
    ops = patch_of(review_response(review({"app": "web"}), SERVICES, handled, policy)) or []
    assert [op["path"] for op in ops] == ["/spec/readinessGates"]


def test_the_pods_annotation_overrides_the_setting() -> None:
    rev = review({"app": "web"})
    pod = rev["request"]["object"]
    for value, want in (
        ("none", None),
        ("sleep 4", {"exec": {"command": ["sleep", "4"]}}),
        ("bogus", "drain"),
    ):
        pod["metadata"]["annotations"] = {"podgate.dev/prestop": value}
        ops = patch_of(review_response(rev, SERVICES, handled, DRAIN_AT, new_token=token)) or []
        hooks = [op["value"]["preStop"] for op in ops if op["path"].endswith("/lifecycle")]
        if want is None:
            assert hooks == []
        elif want == "drain":  # a value podgate cannot read counts as the setting
            assert "httpGet" in hooks[0]
        else:
            assert hooks == [want]


def test_the_older_prestop_delay_annotation_still_works_and_own_hooks_win() -> None:
    rev = review({"app": "web"})
    pod = rev["request"]["object"]
    pod["metadata"]["annotations"] = {"podgate.dev/prestop-delay": "1.5"}
    pod["spec"]["containers"] = [
        {"name": "a"},
        {"name": "b", "lifecycle": {"postStart": {}}},
        {"name": "c", "lifecycle": {"preStop": {"exec": {"command": ["/drain"]}}}},
    ]
    ops = patch_of(review_response(rev, SERVICES, handled, DRAIN_AT)) or []
    hook = {"exec": {"command": ["sleep", "1.5"]}}
    assert ops[1:] == [
        {"op": "add", "path": "/spec/containers/0/lifecycle", "value": {"preStop": hook}},
        {"op": "add", "path": "/spec/containers/1/lifecycle/preStop", "value": hook},
    ]
    pod["metadata"]["annotations"] = {"podgate.dev/prestop-delay": "0"}
    ops = patch_of(review_response(rev, SERVICES, handled, DRAIN_AT)) or []
    assert [op["path"] for op in ops] == ["/spec/readinessGates"]  # 0 turns it off for this pod
    # the new annotation wins over the older one
    pod["metadata"]["annotations"] = {"podgate.dev/prestop-delay": "9", "podgate.dev/prestop": "none"}
    ops = patch_of(review_response(rev, SERVICES, handled, DRAIN_AT)) or []
    assert [op["path"] for op in ops] == ["/spec/readinessGates"]


def test_a_pod_whose_containers_all_have_hooks_gets_no_token_either() -> None:
    """Also what makes a second review of the pod (reinvocation) add nothing more."""
    rev = review({"app": "web"})
    first = patch_of(review_response(rev, SERVICES, handled, DRAIN_AT, new_token=token)) or []
    pod = rev["request"]["object"]
    pod["metadata"]["annotations"] = first[1]["value"]
    pod["spec"]["containers"][0]["lifecycle"] = first[2]["value"]
    pod["spec"]["readinessGates"] = first[0]["value"]
    assert patch_of(review_response(rev, SERVICES, handled, DRAIN_AT, new_token=token)) is None


def with_sidecar(rev: dict[str, Any], sidecar_lifecycle: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pod given a native sidecar (a proxy in front of the main container) and a plain init
    container before it."""
    proxy: dict[str, Any] = {"name": "proxy", "restartPolicy": "Always", "ports": [{"containerPort": 8080}]}
    if sidecar_lifecycle is not None:
        proxy["lifecycle"] = sidecar_lifecycle
    rev["request"]["object"]["spec"]["initContainers"] = [{"name": "migrate"}, proxy]
    return rev


@pytest.mark.parametrize("policy", [DRAIN_AT, SLEEP_3], ids=["drain", "sleep"])
def test_a_native_sidecar_gets_no_hook_its_main_containers_do(policy: InjectionPolicy) -> None:
    """The kubelet stops a restartable init container only after the main containers exited: it
    keeps proxying through their drain and needs no hook; a plain init container may have none."""
    rev = with_sidecar(review({"app": "web"}))
    ops = patch_of(review_response(rev, SERVICES, handled, policy, new_token=token)) or []
    hooked = [op["path"] for op in ops if "lifecycle" in op["path"]]
    assert hooked == ["/spec/containers/0/lifecycle"], ops
    assert not any(op["path"].startswith("/spec/initContainers") for op in ops), ops


def test_a_native_sidecars_own_lifecycle_is_left_alone() -> None:
    own = {"preStop": {"exec": {"command": ["/bin/flush"]}}, "postStart": {"sleep": {"seconds": 1}}}
    rev = with_sidecar(review({"app": "web"}), own)
    ops = patch_of(review_response(rev, SERVICES, handled, DRAIN_AT, new_token=token)) or []
    assert not any(op["path"].startswith("/spec/initContainers") for op in ops), ops
    assert rev["request"]["object"]["spec"]["initContainers"][1]["lifecycle"] == own
    # a sidecar without a hook does not make a pod whose main containers have theirs hooked again
    bare = with_sidecar(review({"app": "web"}))
    bare["request"]["object"]["spec"]["containers"][0]["lifecycle"] = {"preStop": {"sleep": {"seconds": 5}}}
    ops = patch_of(review_response(bare, SERVICES, handled, DRAIN_AT, new_token=token)) or []
    assert [op["path"] for op in ops] == ["/spec/readinessGates"]


def test_check_gates_injected_for_selected_pods() -> None:
    from podgate.model.checks import CheckSpec, TcpCheck

    checks = [
        CheckSpec("warm", "shop", {"matchLabels": {"app": "web"}}, TcpCheck(8080)),
        CheckSpec("other-ns", "else", {"matchLabels": {"app": "web"}}, TcpCheck(8080)),
        CheckSpec("api-only", "shop", {"matchLabels": {"app": "api"}}, TcpCheck(8080)),
    ]
    ops = (
        patch_of(review_response(review({"app": "web"}), SERVICES, handled, InjectionPolicy(), checks)) or []
    )
    assert ops == [
        {
            "op": "add",
            "path": "/spec/readinessGates",
            "value": [
                {"conditionType": "service.readiness.podgate.dev/web"},
                {"conditionType": "check.podgate.dev/warm"},
            ],
        }
    ]
