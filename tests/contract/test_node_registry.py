"""The real node's loopback registry, asked as containerd asks it: the manifest of ``nginx`` (any
registry, any tag) is the local nginx image's, with the digest containerd already has from the
import; blobs by digest; anything else is the registry API's "unknown"."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from podgate_sandbox.node import oci, registry, render


def archive(tmp_path: Path, name: str, payload: bytes) -> Path:
    spec = oci.ImageSpec(name, {"bin/tool": oci.File(payload, 0o755)}, entrypoint=["/bin/tool"])
    path = tmp_path / (name.rsplit("/", 1)[1].replace(":", "-") + ".oci.tar")
    path.write_bytes(oci.oci_archive(spec))
    return path


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[object, object]]:
    images = dict(
        registry.load(archive(tmp_path, name, name.encode()))
        for name in (render.NGINX_IMAGE, render.PAUSE_IMAGE)
    )
    async with TestClient(TestServer(registry.Registry(images).app())) as c:
        yield c


@pytest.mark.parametrize(
    "path",
    ["library/nginx/manifests/latest", "openanolis/nginx/manifests/1.14.1-8.6", "podgate/nginx/manifests/1"],
)
async def test_every_nginx_name_gets_the_local_nginx(client: TestClient[object, object], path: str) -> None:
    assert (await client.get("/v2/")).status == 200
    head = await client.head(f"/v2/{path}")
    assert head.status == 200
    digest = head.headers["Docker-Content-Digest"]
    got = await client.get(f"/v2/{path}")
    body = await got.read()
    assert got.content_type == oci.MANIFEST and "sha256:" + hashlib.sha256(body).hexdigest() == digest
    manifest = json.loads(body)
    layer = await client.get(f"/v2/library/nginx/blobs/{manifest['layers'][0]['digest']}")
    assert layer.status == 200
    assert render.NGINX_IMAGE.encode() in await layer.read()  # the nginx archive's own layer
    by_digest = await client.get(f"/v2/library/nginx/manifests/{digest}")
    assert by_digest.status == 200


async def test_other_names_and_digests_are_unknown(client: TestClient[object, object]) -> None:
    for path, code in (
        ("foo/bar/manifests/1", "NAME_UNKNOWN"),
        ("library/nginx/manifests/sha256:" + "0" * 64, "MANIFEST_UNKNOWN"),
        ("library/nginx/blobs/sha256:" + "0" * 64, "BLOB_UNKNOWN"),
    ):
        r = await client.get(f"/v2/{path}")
        assert r.status == 404
        assert (await r.json())["errors"][0]["code"] == code
