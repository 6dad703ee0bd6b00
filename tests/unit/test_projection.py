"""The slim projections the controller's caches keep (podgate.model.projection): every reader
answers the same on the projection as on the raw object, at a fraction of its size."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mypy import api as mypy_api

from podgate.controller.reconciler import services_for_event
from podgate.model import conditions as c
from podgate.model import gates, lb, policy, report, types
from podgate.model.projection import slim_namespace, slim_pod, slim_service
from podgate.model.types import Pod

GATE = "service.readiness.podgate.dev/web"
VENDOR = "service.readiness.alibabacloud.com/web"


def raw_pod(**changes: Any) -> dict[str, Any]:
    """A pod as the API server sends it (the parts that make it big included)."""
    pod: dict[str, Any] = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": "web-7d5d7f8ffb-x2k4q",
            "generateName": "web-7d5d7f8ffb-",
            "namespace": "shop",
            "uid": "0b7c1e1a-4a0e-4a43-9c36-6d7c3f1f9f11",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7d5d7f8ffb"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d5d7f8ffb",
                    "uid": "9a1b",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": m,
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-01-01T00:00:01Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {f"f:{k}": {} for k in "abcdefghijklmnopqrstuvwxyz"}},
                }
                for m in ("kube-controller-manager", "podgate", "podgate-node-agent")
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "podgate/app:1",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(10)],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "readinessGates": [{"conditionType": GATE}, {"conditionType": VENDOR}],
            "nodeName": "podgate-node",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
        },
        "status": {
            "phase": "Running",
            "podIP": "127.101.0.7",
            "podIPs": [{"ip": "127.101.0.7"}],
            "hostIP": "127.0.0.1",
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ReadinessGatesNotReady",
                    "message": "corresponding condition of pod readiness gate ... does not exist.",
                    "lastTransitionTime": "2026-01-01T00:00:01Z",
                    "lastProbeTime": None,
                },
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-01-01T00:00:02Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {
                    "type": GATE,
                    "status": "False",
                    "reason": "InitialHealthChecking",
                    "message": "haproxy shop/web:80: DOWN 0/3",
                    "lastTransitionTime": "2026-01-01T00:00:03Z",
                },
            ],
            "containerStatuses": [
                {
                    "name": "app",
                    "ready": True,
                    "restartCount": 0,
                    "image": "podgate/app:1",
                    "imageID": "sha256:" + "0" * 64,
                    "containerID": "podgate://" + "1" * 64,
                    "started": True,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
                }
            ],
        },
    }
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        where = pod
        for p in parents:
            where = where[p]
        where[leaf] = value
    return pod


POD_VARIANTS = {
    "pending gate": raw_pod(),
    "no ip": raw_pod(**{"status.podIP": None}),
    "terminating": raw_pod(**{"metadata.deletionTimestamp": "2026-01-01T00:01:00Z"}),
    "not ready": raw_pod(
        **{"status.conditions": [{"type": "ContainersReady", "status": "False", "lastTransitionTime": "t"}]}
    ),
    "relabelled": raw_pod(**{"metadata.labels": {"app": "api"}}),
    "no gates": raw_pod(**{"spec.readinessGates": None}),
    # the named port on a native sidecar (a proxy in front of the app), after a plain init container
    "sidecar port": raw_pod(
        **{
            "spec.containers": [{"name": "app", "ports": [{"name": "app", "containerPort": 9000}]}],
            "spec.initContainers": [
                {"name": "migrate", "ports": [{"name": "http", "containerPort": 7000}]},
                {
                    "name": "proxy",
                    "restartPolicy": "Always",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                },
            ],
        }
    ),
}


def test_a_named_target_port_of_a_native_sidecar_is_resolved_as_the_endpointslice_controller_does() -> None:
    """The EndpointSlice controller resolves a named targetPort on main containers, then on
    restartable init containers (never on run-to-completion ones): podgate registers the same."""
    for pod in (POD_VARIANTS["sidecar port"], slim_pod(copy.deepcopy(POD_VARIANTS["sidecar port"]))):
        assert lb.target_of(pod, "http") == lb.Target("127.101.0.7", 8080)
        assert lb.target_of(pod, "app") == lb.Target("127.101.0.7", 9000)
    plain = raw_pod(
        **{
            "spec.containers": [{"name": "app"}],
            "spec.initContainers": [{"name": "migrate", "ports": [{"name": "http", "containerPort": 7000}]}],
        }
    )
    assert lb.target_of(plain, "http") is None and lb.target_of(slim_pod(plain), "http") is None


@pytest.mark.parametrize("raw", POD_VARIANTS.values(), ids=POD_VARIANTS.keys())
def test_every_reader_answers_the_same_on_the_projection(raw: dict[str, Any]) -> None:
    slim = slim_pod(copy.deepcopy(raw))
    pool = lb.PoolSpec("shop", "web", 80, "", "http", "TCP", lb.HealthCheck())
    numbered = lb.PoolSpec("shop", "web", 80, "", 8080, "TCP", lb.HealthCheck())
    now = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    service = {"metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"app": "web"}}}
    for reader in (
        lambda p: lb.membership(p, {"app": "web"}),
        lambda p: lb.target_of(p, "http"),
        lambda p: lb.target_of(p, 8080),
        lambda p: lb.plan_targets(pool, {"app": "web"}, [p]),
        lambda p: lb.plan_targets(numbered, {"app": "web"}, [p]),
        lambda p: report.gate_rows(p, now),
        lambda p: report.pending_by_age([p], now),
        lambda p: policy.clock_start(p, GATE),
        lambda p: policy.with_timeout(
            {"type": GATE, "status": "False", "reason": "X", "message": "m"},
            p,
            policy.GatePolicy(timeout=60.0),
            datetime(2026, 1, 1, 0, 5, tzinfo=UTC).timestamp(),
        ),
        lambda p: c.readiness_gates(p.get("spec") or {}),
        lambda p: [
            {
                k: v
                for k, v in (c.find(p["status"].get("conditions"), t) or {}).items()
                if k != "lastProbeTime"
            }
            for t in (c.READY, c.CONTAINERS_READY, GATE, VENDOR)
        ],
        lambda p: sorted(services_for_event(p, None, [service], ("service.readiness.alibabacloud.com/",))),
        lambda p: (p["metadata"]["name"], p["metadata"]["namespace"], p["metadata"]["uid"]),
        lambda p: (p["metadata"].get("resourceVersion"), p["metadata"].get("deletionTimestamp")),
    ):
        assert reader(slim) == reader(raw)


def test_the_projection_keeps_what_podgate_reads_and_nothing_else() -> None:
    slim: Pod = slim_pod(raw_pod())
    assert slim["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-7d5d7f8ffb",
            "uid": "9a1b",
            "controller": True,
        }
    ]
    assert [x["type"] for x in slim["status"]["conditions"]] == ["Ready", "ContainersReady", GATE]
    assert slim["spec"] == {
        "containers": [
            {"name": "app", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}
        ],
        "readinessGates": [{"conditionType": GATE}, {"conditionType": VENDOR}],
        "terminationGracePeriodSeconds": 30,
    }
    assert "managedFields" not in slim["metadata"] and "annotations" not in slim["metadata"]
    # of the annotations, podgate's own stay: the drain hook finds its pod by its token
    raw = raw_pod()
    raw["metadata"]["annotations"][gates.DRAIN_TOKEN_ANNOTATION] = "tok"
    raw["metadata"]["deletionGracePeriodSeconds"] = 5
    kept = slim_pod(raw)["metadata"]
    assert kept["annotations"] == {gates.DRAIN_TOKEN_ANNOTATION: "tok"}
    assert kept["deletionGracePeriodSeconds"] == 5
    raw_size, slim_size = len(json.dumps(raw_pod())), len(json.dumps(slim))
    assert slim_size * 3 < raw_size, (slim_size, raw_size)


def test_a_service_and_a_namespace_keep_what_podgate_reads() -> None:
    raw = {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "annotations": {"podgate.dev/health-check-interval": "2s"},
            "finalizers": [lb.TARGETS_FINALIZER],
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "clusterIP": "10.96.0.7",
            "clusterIPs": ["10.96.0.7"],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "127.201.0.1"}]}},
    }
    slim = slim_service(raw)
    assert "managedFields" not in slim["metadata"] and "clusterIPs" not in slim["spec"]
    assert slim["spec"]["clusterIP"] == "10.96.0.7"  # the drain hook's address, for podgate's own
    assert lb.pools_for(slim) == lb.pools_for(raw)
    assert lb.provider_for(slim, "haproxy", ["haproxy"]) == "haproxy"
    assert slim["status"] == raw["status"] and slim["metadata"]["finalizers"] == [lb.TARGETS_FINALIZER]
    ns = slim_namespace({"metadata": {"name": "shop", "labels": {"a": "b"}, "managedFields": [{}]}})
    assert ns == {"metadata": {"name": "shop", "labels": {"a": "b"}}}


# -- what a pod's projection keeps, and its type ----------------------------------------------
def _full_pod() -> dict[str, Any]:
    """A raw pod with every field the projection keeps present (and more it drops)."""
    raw = raw_pod(**{"metadata.deletionTimestamp": "2026-01-01T00:01:00Z"})
    raw["metadata"]["deletionGracePeriodSeconds"] = 5
    raw["metadata"]["annotations"][gates.DRAIN_TOKEN_ANNOTATION] = "tok"
    raw["metadata"]["finalizers"] = ["example.com/hold"]
    raw["metadata"]["generation"] = 1
    raw["spec"]["initContainers"] = [
        {"name": "migrate", "image": "podgate/app:1"},
        {
            "name": "proxy",
            "image": "proxy:1",
            "restartPolicy": "Always",
            "ports": [{"name": "p", "containerPort": 1}],
        },
    ]
    return raw


def _at(obj: Any, path: tuple[str | int, ...]) -> Any:
    """The value at ``path`` (a list of conditions is entered by ``type=NAME``), or KeyError."""
    for step in path:
        if isinstance(step, str) and step.startswith("type="):
            obj = next((x for x in obj if x.get("type") == step[5:]), None)
            if obj is None:
                raise KeyError(step)
        else:
            obj = obj[step]
    return obj


KEEPS: list[tuple[tuple[str | int, ...], bool]] = [
    (("kind",), False),
    (("apiVersion",), False),
    (("metadata", "name"), True),
    (("metadata", "namespace"), True),
    (("metadata", "uid"), True),
    (("metadata", "resourceVersion"), True),
    (("metadata", "creationTimestamp"), True),
    (("metadata", "labels", "app"), True),
    (("metadata", "deletionTimestamp"), True),
    (("metadata", "deletionGracePeriodSeconds"), True),
    (("metadata", "annotations", gates.DRAIN_TOKEN_ANNOTATION), True),
    (("metadata", "annotations", "kubectl.kubernetes.io/restartedAt"), False),
    (("metadata", "ownerReferences", 0, "controller"), True),
    (("metadata", "ownerReferences", 0, "blockOwnerDeletion"), False),
    (("metadata", "generateName"), False),
    (("metadata", "generation"), True),  # a gate's observedGeneration (1.34+)
    (("metadata", "finalizers"), False),
    (("metadata", "managedFields"), False),
    (("spec", "containers", 0, "name"), True),
    (("spec", "containers", 0, "ports", 0, "name"), True),
    (("spec", "containers", 0, "image"), False),
    (("spec", "containers", 0, "env"), False),
    (("spec", "containers", 0, "readinessProbe"), False),
    (("spec", "readinessGates", 1, "conditionType"), True),
    (("spec", "terminationGracePeriodSeconds"), True),
    (("spec", "nodeName"), False),
    (("spec", "restartPolicy"), False),
    (("spec", "tolerations"), False),
    (("status", "podIP"), True),
    (("status", "conditions", "type=Ready", "reason"), True),
    (("status", "conditions", "type=Ready", "lastProbeTime"), False),
    (("status", "conditions", "type=ContainersReady", "lastTransitionTime"), True),
    (("status", "conditions", f"type={GATE}", "message"), True),
    (("status", "conditions", "type=PodScheduled"), False),
    (("status", "conditions", "type=Initialized"), False),
    (("status", "phase"), False),
    (("status", "podIPs"), False),
    (("status", "hostIP"), False),
    (("status", "startTime"), False),
    (("status", "containerStatuses"), False),
]


@pytest.mark.parametrize(("path", "kept"), KEEPS, ids=["/".join(map(str, p)) for p, _ in KEEPS])
def test_what_a_pods_projection_keeps(path: tuple[str | int, ...], kept: bool) -> None:
    raw = _full_pod()
    value = _at(raw, path)  # the raw pod has it: the row means something
    slim = slim_pod(copy.deepcopy(raw))
    if kept:
        assert _at(slim, path) == value
    else:
        with pytest.raises((KeyError, IndexError)):
            _at(slim, path)


def test_the_pod_view_type_declares_exactly_what_the_projection_keeps() -> None:
    """``PodView`` and its parts name every key ``slim_pod`` gives a full pod and no other; each
    is also declared by the raw type, so a raw ``Pod`` is a ``PodView``."""
    slim = slim_pod(_full_pod())
    for kept, view_type, raw_type in (
        (slim, types.PodView, types.Pod),
        (slim["metadata"], types.PodViewMeta, types.ObjectMeta),
        (slim["spec"], types.PodViewSpec, types.PodSpec),
        (slim["status"], types.PodViewStatus, types.PodStatus),
        (slim["spec"]["containers"][0], types.ContainerView, types.Container),
        (slim["spec"]["initContainers"][0], types.SidecarView, types.Container),
    ):
        assert set(kept) == set(view_type.__annotations__), view_type.__name__
        assert set(view_type.__annotations__) <= set(raw_type.__annotations__), view_type.__name__
    for cond in slim["status"]["conditions"]:
        assert set(cond) <= set(types.Condition.__annotations__)
    for owner in slim["metadata"]["ownerReferences"]:
        assert set(owner) <= set(types.OwnerReference.__annotations__)


def test_mypy_rejects_reading_what_the_projection_drops(tmp_path: Path) -> None:
    """mypy on ``pod_view_misuse.py``: an error on exactly the lines marked ``# error: CODE``,
    with that code (reading a dropped field from a ``PodView``), none on the raw ``Pod``'s reads."""
    snippet = Path(__file__).with_name("pod_view_misuse.py")
    config = tmp_path / "mypy.ini"
    src = Path(__file__).resolve().parents[2] / "src"
    config.write_text(f"[mypy]\nstrict = True\npython_version = 3.11\nmypy_path = {src}\n")
    out, err, status = mypy_api.run(
        [
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            str(snippet),
        ]
    )
    assert not err, err
    found = re.findall(r"^[^:\n]+:(\d+): error: .*\[([a-z-]+)\]$", out, re.MULTILINE)
    expected = [
        (str(n), m.group(1))
        for n, line in enumerate(snippet.read_text().splitlines(), 1)
        if (m := re.search(r"# error: ([a-z-]+)$", line))
    ]
    assert len(expected) >= 10
    assert sorted(found) == sorted(expected), out
    assert status == 1
