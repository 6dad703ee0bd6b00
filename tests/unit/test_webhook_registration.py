"""Registering the webhook configuration: created once, rewritten only when it differs (every
replica registers), removed under ``--no-inject``; by Service reference exactly as by URL."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pytest

from podgate.kube.api import MUTATING_WEBHOOK_CONFIGURATIONS as MWC
from podgate.kube.api import Conflict, Resource
from podgate.kube.fake import FakeKube
from podgate.webhook.server import covers, register, unregister, webhook_configuration

BY_URL = {"url": "https://127.0.0.1:9443/mutate-pods", "service": None}
BY_SERVICE = {"url": None, "service": ("podgate-system", "podgate", 443)}


def with_server_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores: podgate's body plus the fields it defaults."""
    hook = dict(body["webhooks"][0])
    hook["matchPolicy"] = "Equivalent"
    hook["clientConfig"] = dict(hook["clientConfig"])
    return {**body, "metadata": {**body["metadata"], "generation": 1}, "webhooks": [hook]}


@pytest.mark.parametrize("how", [BY_URL, BY_SERVICE], ids=["url", "service"])
async def test_registered_once_and_rewritten_only_when_the_ca_bundle_changes(how: dict[str, Any]) -> None:
    kube = FakeKube()
    body = webhook_configuration("podgate", b"CA-1", **how)
    assert await register(kube, body) is True
    assert await register(kube, webhook_configuration("podgate", b"CA-1", **how)) is False
    assert [w.verb for w in kube.writes] == ["create"], "a second replica rewrote an equal configuration"

    assert await register(kube, webhook_configuration("podgate", b"CA-1CA-2", **how)) is True
    stored = kube.object(MWC, "podgate")
    assert stored is not None
    config = stored["webhooks"][0]["clientConfig"]
    assert base64.b64decode(config["caBundle"]) == b"CA-1CA-2"
    if how["service"]:
        assert config["service"] == {
            "namespace": "podgate-system",
            "name": "podgate",
            "port": 443,
            "path": "/mutate-pods",
        }
        assert "url" not in config
    else:
        assert config["url"] == how["url"] and "service" not in config
    assert [w.verb for w in kube.writes] == ["create", "replace"]


def test_server_defaults_do_not_count_as_a_difference() -> None:
    body = webhook_configuration("podgate", b"CA", **BY_SERVICE)
    assert covers(with_server_defaults(body), body)
    assert not covers(with_server_defaults(body), webhook_configuration("podgate", b"CB", **BY_SERVICE))
    assert not covers(with_server_defaults(body), webhook_configuration("podgate", b"CA", **BY_URL))
    assert not covers({"webhooks": []}, body)


async def test_no_inject_removes_its_own_configuration_and_tolerates_none() -> None:
    kube = FakeKube()
    await register(kube, webhook_configuration("podgate-sandbox", b"CA", **BY_URL))
    kube.add(MWC, webhook_configuration("someone-else", b"CA", **BY_URL))
    assert await unregister(kube, "podgate-sandbox") is True
    assert kube.object(MWC, "podgate-sandbox") is None
    assert kube.object(MWC, "someone-else") is not None, "another configuration was touched"
    assert await unregister(kube, "podgate-sandbox") is False


async def test_a_replica_that_lost_the_race_reads_again_and_finds_nothing_to_write() -> None:
    newer = webhook_configuration("podgate", b"CA-2", **BY_URL)

    class Raced(FakeKube):
        """Another replica writes CA-2 between this one's read and its write."""

        async def replace(
            self, resource: Resource, name: str, body: Mapping[str, Any], namespace: str | None = None
        ) -> dict[str, Any]:
            if not self.writes[1:]:
                await super().replace(resource, name, newer, namespace)
                raise Conflict("the object has been modified")
            return await super().replace(resource, name, body, namespace)

    kube = Raced()
    await register(kube, webhook_configuration("podgate", b"CA-1", **BY_URL))
    assert await register(kube, newer) is False
    assert [w.verb for w in kube.writes] == ["create", "replace"], "the same configuration written twice"
