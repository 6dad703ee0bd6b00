"""The seam's pure parts: URLs from resource descriptors, typed errors from the server's answers."""

from __future__ import annotations

import json
import uuid

import pytest

from podgate.controller.checks import READINESS_CHECKS
from podgate.kube.api import (
    LEASES,
    MUTATING_WEBHOOK_CONFIGURATIONS,
    NAMESPACES,
    PODS,
    Conflict,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    error_for,
)
from podgate.kube.client import audit_id, audit_id_time


@pytest.mark.parametrize(
    ("path", "want"),
    [
        (PODS.path(), "/api/v1/pods"),
        (PODS.path("shop", "web-1", "status"), "/api/v1/namespaces/shop/pods/web-1/status"),
        (NAMESPACES.path("ignored", "shop"), "/api/v1/namespaces/shop"),
        (
            LEASES.path("kube-system", "podgate"),
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/podgate",
        ),
        (
            MUTATING_WEBHOOK_CONFIGURATIONS.path(None, "podgate"),
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/podgate",
        ),
        (READINESS_CHECKS.path(), "/apis/podgate.dev/v1alpha1/readinesschecks"),
    ],
)
def test_paths(path: str, want: str) -> None:
    assert path == want


@pytest.mark.parametrize(
    ("status", "kind"),
    [(404, NotFound), (409, Conflict), (410, Gone), (422, Invalid), (500, KubeError), (403, KubeError)],
)
def test_errors_carry_the_status_and_the_servers_message(status: int, kind: type[KubeError]) -> None:
    body = json.dumps({"kind": "Status", "message": f"the words for {status}", "reason": "Why"}).encode()
    e = error_for(status, "HTTP reason", body)
    assert type(e) is kind and e.status == status
    assert (e.message, e.reason) == (f"the words for {status}", "Why")


def test_an_error_body_that_is_not_a_status_is_kept_as_the_message() -> None:
    e = error_for(502, "Bad Gateway", b"<html>proxy error</html>")
    assert (e.status, e.message) == (502, "<html>proxy error</html>")
    assert str(error_for(503, "Service Unavailable")) == "503 Service Unavailable: Service Unavailable"


def test_an_audit_id_is_a_uuid7_that_says_when_it_was_made() -> None:
    at = 1_795_000_000.1234
    made = audit_id(at)
    u = uuid.UUID(made)
    assert (u.version, u.variant) == (7, uuid.RFC_4122)
    assert audit_id_time(made) == pytest.approx(at, abs=0.001)
    assert audit_id(at) != made  # random after the time
    assert audit_id(at + 0.002) > made  # ordered by time, as text too
    assert audit_id_time(str(uuid.uuid4())) is None  # the API server's own IDs
    assert audit_id_time("not-a-uuid") is None
