"""podgate's webhook configurations are the installer's; podgate only keeps their ``caBundle``
current: a patch by name of the stale webhooks' CA bundle, nothing else, written only when it
differs (every replica does it), and a clear error when the configuration is not there."""

from __future__ import annotations

import base64
import copy

import pytest

from podgate.kube.api import MUTATING_WEBHOOK_CONFIGURATIONS as MWC
from podgate.kube.api import VALIDATING_WEBHOOK_CONFIGURATIONS as VWC
from podgate.kube.api import PatchType, Resource
from podgate.kube.fake import FakeKube
from podgate.webhook import eviction
from podgate.webhook.server import ConfigurationMissing, patch_ca_bundle, webhook_configuration

SERVICE = ("podgate-system", "podgate", 443)


def installed(kube: FakeKube) -> None:
    """What deploy/base/webhooks.yaml puts there: no CA bundle yet, three webhooks (the
    migration labels), and a field the API server defaults."""
    for resource, body in (
        (MWC, webhook_configuration("podgate", b"", url=None, service=SERVICE, migration_labels=True)),
        (
            VWC,
            eviction.webhook_configuration("podgate", b"", url=None, service=SERVICE, migration_labels=True),
        ),
    ):
        body = copy.deepcopy(body)
        for hook in body["webhooks"]:
            hook["clientConfig"] = {k: v for k, v in hook["clientConfig"].items() if k != "caBundle"}
            hook["matchPolicy"] = "Equivalent"
        kube.add(resource, body)


@pytest.mark.parametrize("resource", [MWC, VWC], ids=["mutating", "validating"])
async def test_only_the_ca_bundle_is_written_and_only_when_it_differs(resource: Resource) -> None:
    kube = FakeKube()
    installed(kube)
    before = copy.deepcopy(kube.object(resource, "podgate"))
    assert before is not None
    assert await patch_ca_bundle(kube, resource, "podgate", b"CA-1") is True
    assert await patch_ca_bundle(kube, resource, "podgate", b"CA-1") is False
    [write] = kube.writes
    assert write.verb == "patch" and write.patch_type is PatchType.STRATEGIC
    assert write.body == {
        "webhooks": [
            {"name": h["name"], "clientConfig": {"caBundle": base64.b64encode(b"CA-1").decode()}}
            for h in before["webhooks"]
        ]
    }, "the patch names every webhook and holds nothing but its CA bundle"
    after = kube.object(resource, "podgate")
    assert after is not None
    for old, new in zip(before["webhooks"], after["webhooks"], strict=True):
        assert base64.b64decode(new["clientConfig"]["caBundle"]) == b"CA-1"
        assert {k: v for k, v in new["clientConfig"].items() if k != "caBundle"} == old["clientConfig"]
        assert {k: v for k, v in new.items() if k != "clientConfig"} == {
            k: v for k, v in old.items() if k != "clientConfig"
        }

    assert await patch_ca_bundle(kube, resource, "podgate", b"CA-1CA-2") is True
    stored = kube.object(resource, "podgate")
    assert stored is not None
    assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in stored["webhooks"]} == {b"CA-1CA-2"}


async def test_a_missing_configuration_is_named_with_what_to_apply() -> None:
    kube = FakeKube()
    with pytest.raises(
        ConfigurationMissing,
        match=r"MutatingWebhookConfiguration podgate does not exist.*deploy/base/webhooks.yaml",
    ):
        await patch_ca_bundle(kube, MWC, "podgate", b"CA")
    assert kube.writes == [], "podgate never creates one"


async def test_another_configuration_is_never_touched() -> None:
    kube = FakeKube()
    installed(kube)
    other = webhook_configuration("someone-else", b"THEIRS", url="https://x/y", service=None)
    stored = copy.deepcopy(kube.add(MWC, other))
    await patch_ca_bundle(kube, MWC, "podgate", b"CA")
    assert kube.object(MWC, "someone-else") == stored
    assert {w.name for w in kube.writes} == {"podgate"}
