"""Each Service resolved once, and the same answer for every reader: the reconciler, the drain
endpoint, the eviction guard, the admission webhook and the pending-gate tally."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from podgate.controller.pending import PendingGates
from podgate.kube.api import PODS, SERVICES
from podgate.model import gates, policy, report
from podgate.model.resolution import Settings, resolve
from podgate.providers.fake import FAKE_GROUP

from .world import NS, World, pod, service

SETTINGS = Settings(group_annotations={"fake": (FAKE_GROUP,), "other": ()}, default_provider="fake")


def with_(annotations: dict[str, str] | None = None, lb_class: str | None = None) -> Any:
    s = service(annotations=annotations or {})
    if lb_class:
        s["spec"]["loadBalancerClass"] = lb_class
    return s


@pytest.mark.parametrize(
    ("svc", "provider", "handled", "error"),
    [
        (with_(), "fake", True, None),  # class-less, the default provider
        (with_(lb_class="podgate.dev/other"), "other", True, None),
        (with_(lb_class="service.k8s.aws/nlb"), None, False, None),  # another controller's
        (with_({gates.PROVIDER_ANNOTATION: "none"}), None, False, None),
        (with_({gates.PROVIDER_ANNOTATION: "nope"}), None, True, "names no configured provider"),
        (with_({policy.ON_TIMEOUT: "sideways"}), "fake", True, policy.ON_TIMEOUT),
    ],
)
def test_a_services_provider_pools_and_policy(
    svc: Any, provider: str | None, handled: bool, error: str | None
) -> None:
    r = resolve(svc, SETTINGS)
    assert (r.key, r.provider, r.handled) == (f"{NS}/web", provider, handled)
    if error:
        assert r.error is not None and error in r.error and not r.served
    else:
        assert r.error is None and [p.port for p in r.pools] == ([80] if provider else [])


def test_a_services_annotations_override_the_controllers_policy() -> None:
    r = resolve(with_({policy.GATE_MODE: "continuous", policy.MIN_HEALTHY_TARGETS: "2"}), SETTINGS)
    assert r.policy.continuous and r.policy.min_healthy_targets == 2


async def test_each_version_of_a_service_is_resolved_once_and_forgotten_when_it_goes() -> None:
    world = World()
    world.add(SERVICES, service())
    await world.sync()
    cached = world.services.get(f"{NS}/web")
    assert cached is not None
    first = world.resolutions.of(cached)
    assert world.resolutions.of(cached) is first  # the memo, not a second computation
    changed = service(annotations={policy.GATE_MODE: "continuous"})
    world.add(SERVICES, changed)
    await world.sync()
    second = world.resolutions.get(f"{NS}/web")
    assert second is not None and second is not first and second.policy.continuous
    await world.kube.delete(SERVICES, "web", NS)
    await world.sync()
    assert len(world.resolutions) == 0


async def test_an_invalid_service_reads_the_same_to_every_reader() -> None:
    """The reconciler says why, the eviction guard warns, admission still gates its pods (so
    they hear why), and nothing is drained from a load balancer it was never put in."""
    world = World()
    bad = service(annotations={policy.ON_TIMEOUT: "sideways"})
    world.add(SERVICES, bad)
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert ("Service", "web", "InvalidConfiguration", "Warning") in world.recorder.events
    r = world.resolutions.get(f"{NS}/web")
    assert r is not None and r.handled and not r.served and world.provider.calls == []


async def test_the_pending_tally_follows_pod_events_and_agrees_with_podgate_status() -> None:
    world = World()
    tally = PendingGates(world.pods)
    waiting = pod("p1")
    done = pod("p2", ip="10.0.0.2")
    done["status"]["conditions"].append(
        {"type": gates.service_gate("web"), "status": "True", "reason": "Healthy"}
    )
    no_reason = pod("p3", ip="10.0.0.3")
    no_reason["status"]["conditions"].append({"type": gates.service_gate("web"), "status": "False"})
    world.add(PODS, waiting, done, no_reason)
    await world.sync()
    now = datetime.now(UTC)
    rows = [r for p in (waiting, done, no_reason) for r in report.gate_rows(p, now) if r["status"] != "True"]
    assert tally.by_reason() == {"NoCondition": 1, "": 1}
    assert sorted(tally.by_reason()) == sorted({r["reason"] for r in rows})
    await world.kube.delete(PODS, "p1", NS)
    await world.sync()
    assert tally.by_reason() == {"": 1} and len(tally) == 1
