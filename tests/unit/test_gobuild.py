"""Kubernetes from Go modules, the pure part: the release's go.mod read, the consumer's written,
the version stamped, a request matched to a served release, a request matched to the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from podgate_sandbox import gobuild
from podgate_sandbox.gobuild import (
    GoBuildError,
    ReleaseModule,
    consumer_gomod,
    go_version_tuple,
    parse_release_gomod,
    pick_release,
    staging_version,
    version_ldflags,
)

# The shape of k8s.io/kubernetes's go.mod (v1.37.2's, shortened): a generated header, go and
# godebug lines, two require blocks with the staging modules at v0.0.0, and the staging replaces.
RELEASE_GOMOD = """\
// This is a generated file. Do not edit directly.
// Run hack/update-vendor.sh to update go.mod files and the vendor directory.

module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
	github.com/spf13/cobra v1.10.2
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
	k8s.io/klog/v2 v2.140.0
	k8s.io/streaming v0.0.0
)

require (
	cel.dev/expr v0.25.1 // indirect
	sigs.k8s.io/kustomize/kyaml v0.21.1 // indirect
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go // the client
	k8s.io/sample-controller => ./staging/src/k8s.io/sample-controller
	k8s.io/streaming => ./staging/src/k8s.io/streaming
)
"""


def test_release_gomod_gives_go_godebug_and_every_staging_module() -> None:
    release = parse_release_gomod(RELEASE_GOMOD)
    assert release.go == "1.26.0"
    assert release.godebug == ("default=go1.26",)
    # replaced into ./staging/ (required or not: sample-controller is only replaced)
    assert release.staging == (
        "k8s.io/api",
        "k8s.io/client-go",
        "k8s.io/sample-controller",
        "k8s.io/streaming",
    )


def test_release_gomod_godebug_block_single_replaces_and_foreign_replaces() -> None:
    text = (
        "module k8s.io/kubernetes\n\ngo 1.24.0\n\n"
        "godebug (\n\tdefault=go1.24\n\twinsymlink=0 // windows\n)\n\n"
        "replace k8s.io/api => ./staging/src/k8s.io/api\n"
        # a pin to another module, or to a version, is no staging module
        "replace github.com/x/y => github.com/x/z v1.2.3\n"
        "replace (\n\tk8s.io/kubelet v0.0.0 => ./staging/src/k8s.io/kubelet\n)\n"
    )
    release = parse_release_gomod(text)
    assert release.go == "1.24.0"
    assert release.godebug == ("default=go1.24", "winsymlink=0")
    assert release.staging == ("k8s.io/api", "k8s.io/kubelet")


@pytest.mark.parametrize(
    "text",
    [
        "module k8s.io/kubernetes\n\nreplace k8s.io/api => ./staging/src/k8s.io/api\n",
        "module m\n\ngo 1.26.0\n",
    ],
    ids=["no go line", "no staging"],
)
def test_release_gomod_without_go_line_or_staging_is_refused(text: str) -> None:
    with pytest.raises(GoBuildError):
        parse_release_gomod(text)


def test_consumer_gomod_requires_the_release_and_pins_staging_to_published_tags() -> None:
    release = parse_release_gomod(RELEASE_GOMOD)
    text = consumer_gomod("1.37.2", release, ("kube-apiserver", "kubectl"))
    lines = text.splitlines()
    assert "go 1.26.0" in lines
    assert "godebug default=go1.26" in lines
    assert "require k8s.io/kubernetes v1.37.2" in lines
    assert [ln.strip() for ln in lines if ln.startswith("\tk8s.io/kubernetes/cmd/")] == [
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kubectl",
    ]
    replaces = [" ".join(ln.split()) for ln in lines if "=>" in ln]
    assert replaces == [
        "k8s.io/api => k8s.io/api v0.37.2",
        "k8s.io/client-go => k8s.io/client-go v0.37.2",
        "k8s.io/sample-controller => k8s.io/sample-controller v0.37.2",
        "k8s.io/streaming => k8s.io/streaming v0.37.2",
    ]
    # no staging directory and no v0.0.0 anywhere: nothing the proxy cannot serve
    assert "./staging" not in text
    assert "v0.0.0" not in text
    assert lines[1].startswith("module ") and "." not in lines[1].split()[1].split("/")[0]


def test_consumer_gomod_without_godebug_and_refusing_a_go_line_before_tool_directives() -> None:
    bare = ReleaseModule(go="1.24.0", godebug=(), staging=("k8s.io/api",))
    assert "godebug" not in consumer_gomod("v1.34.0", bare)
    assert "require k8s.io/kubernetes v1.34.0" in consumer_gomod("v1.34.0", bare)
    with pytest.raises(GoBuildError, match="tool directives"):
        consumer_gomod("1.30.0", ReleaseModule(go="1.22.0", godebug=(), staging=("k8s.io/api",)))


def test_ldflags_stamp_both_version_packages_as_upstream() -> None:
    flags = version_ldflags("1.37.2", "2026-12-04T16:00:00Z", commit="abc123").split()
    assert flags[:2] == ["-s", "-w"]
    stamped = dict(f.split("=", 1) for f in flags[2:] if f != "-X")
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        assert stamped[f"{package}.gitVersion"] == "v1.37.2"
        assert stamped[f"{package}.gitMajor"] == "1"
        assert stamped[f"{package}.gitMinor"] == "37"
        assert stamped[f"{package}.gitCommit"] == "abc123"
        assert stamped[f"{package}.gitTreeState"] == "archive"
        assert stamped[f"{package}.buildDate"] == "2026-12-04T16:00:00Z"
    assert len(stamped) == 12
    # an unknown commit is stamped empty rather than left at the source's placeholder
    assert "-X k8s.io/component-base/version.gitCommit= " in version_ldflags("1.34.0", "d")


SERVED = ["v1.13.0", "v1.33.13", "v1.34.0", "v1.34.4", "v1.34.2", "v1.37.2", "v1.36.3", "v1.38.0-beta.0"]


@pytest.mark.parametrize(
    ("requested", "release"),
    [
        ("1.34", "1.34.4"),
        ("v1.34", "1.34.4"),
        ("1.34.2", "1.34.2"),
        ("1.37", "1.37.2"),
        ("latest", "1.37.2"),  # the newest release, never the beta
    ],
)
def test_pick_release(requested: str, release: str) -> None:
    assert pick_release(requested, SERVED) == release


@pytest.mark.parametrize("requested", ["1.35", "1.34.1", "1.38", "2.0"])
def test_pick_release_refuses_what_is_not_served(requested: str) -> None:
    with pytest.raises(GoBuildError, match="no served release"):
        pick_release(requested, SERVED)


@pytest.mark.parametrize("requested", ["one.two", "1.2.3.4", "1", ""])
def test_pick_release_refuses_what_is_no_version(requested: str) -> None:
    with pytest.raises(GoBuildError):
        pick_release(requested, SERVED)


def test_versions() -> None:
    assert staging_version("v1.37.2") == "v0.37.2"
    assert staging_version("1.34.0") == "v0.34.0"
    with pytest.raises(GoBuildError):
        staging_version("1.38.0-beta.0")
    assert go_version_tuple("go1.26.8") > go_version_tuple("1.26.0") > go_version_tuple("1.24")
    assert go_version_tuple("go1.27rc1") == (1, 27)


def test_requests_older_than_the_oldest_supported_release_are_refused() -> None:
    for ok in ("1.34", "1.34.4", "v1.37.2", "1.38", "latest"):
        gobuild.check_supported(ok)
    for old in ("1.20", "1.33.9", "v1.20.2"):
        with pytest.raises(GoBuildError, match=r"older than the oldest release podgate supports \(1\.34\)"):
            gobuild.check_supported(old)


def test_binaries_for_a_request_take_the_newest_cached_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "podgate" / "kubernetes"
    for version in ("1.37.1", "1.37.2", "1.34.0"):
        (root / version).mkdir(parents=True)
    (root / "1.36.3-partial").mkdir()
    # no request: the newest patch of the default minor
    assert gobuild.binaries_for(None).root == root / "1.37.2"
    newest = gobuild.binaries_for("1.37")
    assert (newest.root, newest.version, newest.recipe) == (root / "1.37.2", "1.37.2", gobuild.RECIPE)
    assert gobuild.binaries_for("1.34").version == "1.34.0"
    # nothing cached for 1.36: a directory that does not exist, whose binaries are all broken
    missing = gobuild.binaries_for("1.36")
    assert missing.root == root / "1.36"
    assert missing.broken(("kubectl",)) == ["kubectl"]
