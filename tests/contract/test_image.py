"""``make image``: the Dockerfile built with buildah on a Debian base, as the OCI archive a user
imports (``ctr images import``, ``skopeo copy``): it runs ``podgate`` as uid 65532 and holds the
cloud SDKs and no sandbox code."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podgate_sandbox.image import BUILDAH, TAG, build


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("image") / "podgate-image.tar")


def blob(tar: tarfile.TarFile, digest: str) -> Any:
    algorithm, hexdigest = digest.split(":", 1)
    f = tar.extractfile(f"blobs/{algorithm}/{hexdigest}")
    assert f is not None
    return json.load(f)


def test_the_archive_is_an_oci_image_running_podgate_as_65532(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        (desc,) = index["manifests"]
        assert desc["annotations"]["org.opencontainers.image.ref.name"] == "localhost/podgate:0.1.0"
        config = blob(tar, blob(tar, desc["digest"])["config"]["digest"])["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["podgate"]


@pytest.fixture(scope="module")
def container(archive: Path) -> Iterator[str]:
    name = subprocess.run([*BUILDAH, "from", TAG], capture_output=True, text=True, check=True).stdout.strip()
    yield name
    subprocess.run([*BUILDAH, "rm", name], capture_output=True, check=False)


def run(container: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BUILDAH, "run", "--isolation", "chroot", container, "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_image_runs_podgate_with_the_cloud_sdks_and_no_sandbox(container: str) -> None:
    out = run(container, "id -u && podgate controller --help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "65532"
    assert "--webhook-cert-secret" in out.stdout
    sdks = run(
        container, 'python3 -c "import aiobotocore, alibabacloud_slb20140515, alibabacloud_nlb20220430"'
    )
    assert sdks.returncode == 0, sdks.stderr
    sandbox = run(container, 'python3 -c "import podgate_sandbox"')
    assert sandbox.returncode != 0 and "No module named 'podgate_sandbox'" in sandbox.stderr
