"""The node's registry: a read-only OCI distribution endpoint on loopback serving the local images.

The kubelet pulls whenever the policy says so (``imagePullPolicy: Always``, the default for an
image without a tag or tagged ``latest``, such as ``nginx``).  containerd sends every pull here
(``hosts.toml``: ``_default`` and docker.io), and this registry answers from the node's own
archives under the names :func:`render.local_image_for` maps, with the digests containerd
already has from the import: a "pull" of ``nginx`` transfers a manifest over loopback and nothing
else.  An unknown name gets the registry's ``NAME_UNKNOWN``: the pod shows ErrImagePull at once,
and nothing is ever asked of any other registry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import tarfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from podgate_sandbox.node import oci, render

log = logging.getLogger("podgate.registry")
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


@dataclass(frozen=True)
class Image:
    manifest_digest: str
    manifest_type: str
    blobs: dict[str, bytes]  # digest -> content, the manifest's included


def load(archive: Path) -> tuple[str, Image]:
    """(image name, image) from an OCI archive with one manifest named for containerd."""
    with tarfile.open(archive) as tar:
        blobs: dict[str, bytes] = {}
        index: dict[str, object] = {}
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            if f is None:
                continue
            if m.name.startswith("blobs/sha256/"):
                blobs["sha256:" + m.name.rsplit("/", 1)[1]] = f.read()
            elif m.name == "index.json":
                index = json.loads(f.read())
    manifests = index.get("manifests")
    assert isinstance(manifests, list) and len(manifests) == 1, archive
    entry = manifests[0]
    return entry["annotations"][oci.NAME_ANNOTATION], Image(entry["digest"], entry["mediaType"], blobs)


class Registry:
    def __init__(self, images: dict[str, Image]) -> None:
        self.images = images

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self._root)
        app.router.add_get(r"/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_get(r"/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_get("/healthz", self._healthz)
        return app

    def _image(self, request: web.Request) -> Image | None:
        local = render.local_image_for(request.match_info["name"])
        return self.images.get(local) if local else None

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response({}, headers=API_VERSION)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _manifest(self, request: web.Request) -> web.Response:
        image = self._image(request)
        ref = request.match_info["ref"]
        if image is None or (ref.startswith("sha256:") and ref != image.manifest_digest):
            log.info("unknown: %s:%s", request.match_info["name"], ref)
            return _error(404, "MANIFEST_UNKNOWN" if image else "NAME_UNKNOWN", request.match_info["name"])
        log.info("manifest %s:%s -> %s", request.match_info["name"], ref, image.manifest_digest)
        return web.Response(
            body=image.blobs[image.manifest_digest],
            content_type=image.manifest_type,
            headers={**API_VERSION, "Docker-Content-Digest": image.manifest_digest},
        )

    async def _blob(self, request: web.Request) -> web.Response:
        image = self._image(request)
        digest = request.match_info["digest"]
        if image is None or digest not in image.blobs:
            return _error(404, "BLOB_UNKNOWN", digest)
        return web.Response(
            body=image.blobs[digest],
            content_type="application/octet-stream",
            headers={**API_VERSION, "Docker-Content-Digest": digest},
        )


def _error(status: int, code: str, detail: str) -> web.Response:
    body = {"errors": [{"code": code, "message": f"{code.lower().replace('_', ' ')}: {detail}"}]}
    return web.json_response(body, status=status, headers=API_VERSION)


async def serve(images: dict[str, Image], port: int) -> None:
    runner = web.AppRunner(Registry(images).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    log.info("serving %s on 127.0.0.1:%d", ", ".join(sorted(images)), port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m podgate_sandbox.node.registry", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("images_dir", type=Path, help="the directory of the node's image archives")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    images = dict(load(a) for a in sorted(args.images_dir.glob("*.oci.tar")))
    asyncio.run(serve(images, args.port))


if __name__ == "__main__":
    main()
