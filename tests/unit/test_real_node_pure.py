"""Pure pieces of the real node: configuration text, the egress guard's rules, image archives,
and the bookkeeping ``down`` uses to put the machine back (iptables, mounts, sysctls)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from podgate_sandbox.controlplane import DEPLOYED_BACKEND, NODE_RUNTIME_PORT, Sandbox, SandboxConfig
from podgate_sandbox.node import images, oci, render
from podgate_sandbox.node.render import NodeLayout

LAYOUT = NodeLayout(
    root=Path("/state/node"),
    node_name="podgate-node",
    pod_cidr="10.244.0.0/24",
    service_cidr="10.96.0.0/16",
    port_offset=12000,
    kubeconfig=Path("/state/node.kubeconfig"),
    ca_file=Path("/state/pki/ca.crt"),
)


def test_layout_names_follow_the_offset_and_the_gateway_is_the_node() -> None:
    assert LAYOUT.bridge == "pgbr12000" and len("pgbr50000") <= 15  # IFNAMSIZ
    assert LAYOUT.node_ip == "10.244.0.1"
    assert LAYOUT.cgroup == "podgate-node-12000"
    assert LAYOUT.kubelet_healthz_port == 22348 and LAYOUT.kubelet_port == 22350


@pytest.mark.parametrize(
    ("cidr", "ok"),
    [
        ("10.244.0.0/24", True),
        ("192.168.77.0/28", True),
        ("127.100.0.0/16", False),  # loopback: the kubelet refuses it
        ("8.8.8.0/24", False),  # not private
        ("10.96.0.0/24", False),  # inside the service range
        ("10.244.0.0/30", False),  # no room
    ],
)
def test_pod_cidr_validation(cidr: str, ok: bool) -> None:
    if ok:
        render.validate_pod_cidr(cidr, "10.96.0.0/16")
    else:
        with pytest.raises(ValueError, match=cidr.split("/")[0]):
            render.validate_pod_cidr(cidr, "10.96.0.0/16")


def test_containerd_config_has_the_settings_this_machine_needs() -> None:
    conf = tomllib.loads(render.containerd_config(LAYOUT))
    assert conf["root"] == "/state/node/containerd/root" and conf["state"] == "/state/node/containerd/state"
    assert conf["grpc"]["address"] == "/state/node/containerd/containerd.sock"
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True and cri["disable_apparmor"] is True
    assert cri["sandbox_image"] == render.PAUSE_IMAGE
    assert cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2" and runc["options"]["SystemdCgroup"] is False
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/state/node/cni", "max_conf_num": 1}
    assert cri["registry"] == {"config_path": "/state/node/containerd/certs.d"}


def test_every_registry_is_the_nodes_loopback_registry() -> None:
    hosts = render.registry_hosts(LAYOUT)
    assert sorted(hosts) == ["_default/hosts.toml", "docker.io/hosts.toml"]
    for text in hosts.values():
        conf = tomllib.loads(text)
        url = f"http://127.0.0.1:{LAYOUT.registry_port}"
        assert conf["server"] == url
        # containerd 1.6 ignores a hosts.toml without a host table, and pulls from the internet
        assert conf["host"] == {url: {"capabilities": ["pull", "resolve"]}}


@pytest.mark.parametrize(
    ("repository", "image"),
    [
        ("library/nginx", render.NGINX_IMAGE),  # `nginx`, `nginx:1.25`: Docker Hub's short name
        ("openanolis/nginx", render.NGINX_IMAGE),  # seed 000's, any registry
        ("podgate/nginx", render.NGINX_IMAGE),
        ("podgate/pause", render.PAUSE_IMAGE),
        ("podgate/web", render.WEB_IMAGE),
        ("library/web", None),
        ("library/nginx-ingress", None),
        ("foo/bar", None),
    ],
)
def test_registry_names(repository: str, image: str | None) -> None:
    assert render.local_image_for(repository) == image


def test_nginx_aliases_name_nginx_and_the_seed_image() -> None:
    assert (
        "anolis-registry.cn-zhangjiakou.cr.aliyuncs.com/openanolis/nginx:1.14.1-8.6" in render.NGINX_ALIASES
    )
    for alias in render.NGINX_ALIASES:
        path = alias.split("/", 1)[1].rsplit(":", 1)[0]
        assert render.local_image_for(path) == render.NGINX_IMAGE


def test_cni_gives_pods_no_default_route_and_no_masquerade() -> None:
    conf = json.loads(render.cni_conflist(LAYOUT))
    bridge = conf["plugins"][0]
    assert (
        bridge["bridge"] == "pgbr12000" and bridge["isDefaultGateway"] is False and bridge["ipMasq"] is False
    )
    assert bridge["ipam"]["routes"] == [{"dst": "10.96.0.0/16"}]
    (rng,) = bridge["ipam"]["ranges"][0]
    assert rng["gateway"] == "10.244.0.1" and rng["rangeStart"] == "10.244.0.2"
    assert bridge["ipam"]["dataDir"] == "/state/node/cni-ipam"


def test_kubelet_serves_on_the_bridge_and_loopback_with_a_loopback_resolver() -> None:
    conf = yaml.safe_load(render.kubelet_config(LAYOUT))
    assert conf["address"] == "10.244.0.1" and conf["healthzBindAddress"] == "127.0.0.1"
    assert conf["authentication"]["anonymous"] == {"enabled": False}
    assert conf["cgroupDriver"] == "cgroupfs" and conf["failSwapOn"] is False
    assert conf["resolvConf"] == "/state/node/resolv.conf" and conf["readOnlyPort"] == 0
    args = render.kubelet_args(LAYOUT, Path("/bin/kubelet"))
    assert "--node-ip=10.244.0.1" in args and "--root-dir=/state/node/kubelet" in args


@pytest.mark.parametrize(
    ("release", "fail_cgroup_v1", "removed_flags"),
    [
        # 1.20: --container-runtime=remote picks CRI; no failCgroupV1 field yet
        ("1.20.2", None, ()),
        # 1.34: the pause image flag is still there; cgroup v1 is tolerated when told
        ("1.34.4", False, ("--container-runtime",)),
        # 1.37: both flags gone (an unknown flag stops the kubelet)
        ("1.37.2", False, ("--container-runtime", "--pod-infra-container-image")),
    ],
)
def test_kubelet_flags_and_fields_follow_its_release(
    release: str, fail_cgroup_v1: bool | None, removed_flags: tuple[str, ...]
) -> None:
    layout = dataclasses.replace(LAYOUT, kubernetes=release)
    conf = yaml.safe_load(render.kubelet_config(layout))
    assert conf.get("failCgroupV1") is fail_cgroup_v1
    names = {a.split("=", 1)[0] for a in render.kubelet_args(layout, Path("/bin/kubelet"))}
    assert "--container-runtime-endpoint" in names
    for flag in ("--container-runtime", "--pod-infra-container-image"):
        assert (flag in names) is (flag not in removed_flags)


def test_kube_proxy_leaves_conntrack_sysctls_alone() -> None:
    args = render.kube_proxy_args(LAYOUT, Path("/bin/kube-proxy"))
    assert "--proxy-mode=iptables" in args
    for flag in ("max-per-core", "min", "tcp-timeout-established", "tcp-timeout-close-wait"):
        assert f"--conntrack-{flag}=0" in args


def test_egress_guard_allows_only_loopback_and_the_sandbox_ranges() -> None:
    rules = render.egress_rules(LAYOUT)
    chain = LAYOUT.guard_chain
    body = [r[2:] for r in rules if r[:2] == ["-A", chain]]
    assert body == [
        ["-d", "127.0.0.0/8", "-j", "RETURN"],
        ["-d", "10.244.0.0/24", "-j", "RETURN"],
        ["-d", "10.96.0.0/16", "-j", "RETURN"],
        ["-j", "REJECT"],  # everything else: the cloud metadata address, the LAN, the internet
    ]
    hooks = [r for r in rules if r[0] == "-I"]
    assert ["-I", "OUTPUT", "1", "-m", "cgroup", "--path", "podgate-node-12000", "-j", chain] in hooks
    assert ["-I", "FORWARD", "1", "-i", "pgbr12000", "!", "-o", "pgbr12000", "-j", chain] in hooks
    six = render.egress_rules6(LAYOUT)
    assert [r[2:] for r in six if r[:2] == ["-A", chain]] == [
        ["-d", "::1/128", "-j", "RETURN"],
        ["-j", "REJECT"],
    ]


def test_egress_guard_test_rejects_come_first() -> None:
    rules = render.egress_rules(LAYOUT, reject_also=["127.77.0.1"])
    assert rules[1] == ["-A", LAYOUT.guard_chain, "-d", "127.77.0.1", "-j", "REJECT"]


BEFORE = """*filter
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
-A INPUT -s 192.0.2.9/32 -j DROP
COMMIT
"""
AFTER = """*filter
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:KUBE-FIREWALL -
:PODGATE-EGRESS-1 -
-A INPUT -s 192.0.2.9/32 -j DROP
-A INPUT -j KUBE-FIREWALL
-A INPUT -s 192.0.2.9/32 -j DROP
-A OUTPUT -m cgroup --path podgate-node-1 -j PODGATE-EGRESS-1
-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -j DROP
-A PODGATE-EGRESS-1 -j REJECT
COMMIT
*nat
:PREROUTING ACCEPT
:KUBE-SERVICES -
-A PREROUTING -j KUBE-SERVICES
COMMIT
"""


def test_undo_iptables_removes_exactly_what_was_added() -> None:
    commands, tables = render.undo_iptables(BEFORE, AFTER)
    assert tables == ["nat"]
    assert commands == [
        ["-t", "filter", "-F", "KUBE-FIREWALL"],
        ["-t", "filter", "-F", "PODGATE-EGRESS-1"],
        # one of two identical rules was added: one is removed (-D takes the first match)
        ["-t", "filter", "-D", "INPUT", "-s", "192.0.2.9/32", "-j", "DROP"],
        ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        [
            "-t",
            "filter",
            "-D",
            "OUTPUT",
            "-m",
            "cgroup",
            "--path",
            "podgate-node-1",
            "-j",
            "PODGATE-EGRESS-1",
        ],
        ["-t", "filter", "-X", "KUBE-FIREWALL"],
        ["-t", "filter", "-X", "PODGATE-EGRESS-1"],
    ]
    assert render.undo_iptables(BEFORE, BEFORE) == ([], [])


def test_normalise_save_drops_comments_and_counters() -> None:
    text = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [12:345]\n-A INPUT -j DROP\nCOMMIT\n# done"
    assert render.normalise_save(text) == "*filter\n:INPUT ACCEPT\n-A INPUT -j DROP\nCOMMIT"


MOUNTINFO = """22 1 0:21 / / rw - ext4 /dev/vda rw
30 22 0:40 / /state/node/kubelet/pods/x/volumes/tok rw - tmpfs tmpfs rw
31 22 0:41 / /state/node/containerd/state/netns/cni-1 rw - nsfs nsfs rw
32 22 0:42 / /var/lib/kubelet2 rw - tmpfs tmpfs rw
33 22 0:43 / /state/node/with\\040space rw - tmpfs tmpfs rw
"""


def test_mounts_under_prefixes_and_newest_first() -> None:
    now = render.mounts_under(MOUNTINFO, ["/state/node", "/var/lib/kubelet"])
    assert now == [
        "/state/node/kubelet/pods/x/volumes/tok",
        "/state/node/containerd/state/netns/cni-1",
        "/state/node/with space",
    ]
    assert render.mounts_to_undo(["/state/node/with space"], now) == [
        "/state/node/containerd/state/netns/cni-1",
        "/state/node/kubelet/pods/x/volumes/tok",
    ]


def test_sysctls_to_restore_are_the_changed_ones() -> None:
    before = {"kernel.panic": "1", "vm.overcommit_memory": "0", "net.bridge.x": "1"}
    now = {"kernel.panic": "10", "vm.overcommit_memory": "0"}
    assert render.sysctls_to_restore(before, now) == {"kernel.panic": "1"}


SPEC = oci.ImageSpec(
    "localhost/podgate/test:1",
    {"bin/tool": oci.File(b"\x7fELF...", 0o755), "etc/motd": oci.File(b"hi\n")},
    entrypoint=["/bin/tool"],
    symlinks={"bin/sh": "tool"},
)


def test_oci_archive_is_a_valid_deterministic_layout() -> None:
    data = oci.oci_archive(SPEC)
    assert data == oci.oci_archive(SPEC)  # same input, same digests: the cache recognises it
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    for name, blob in blobs.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(blob).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(blobs["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"][oci.NAME_ANNOTATION] == "localhost/podgate/test:1"
    manifest = json.loads(blobs["blobs/sha256/" + entry["digest"].split(":")[1]])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]


def test_layer_has_parents_first_modes_and_symlinks() -> None:
    with tarfile.open(fileobj=io.BytesIO(oci.layer_tar(SPEC))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        order = [m.name for m in tar.getmembers()]
    assert order.index("bin") < order.index("bin/tool")
    assert members["bin/tool"].mode == 0o755 and members["etc/motd"].mode == 0o644
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "tool"
    assert all(m.mtime == 0 and m.uid == 0 for m in members.values())


def _rootfs(tmp_path: Path) -> Path:
    """A merged-/usr root file system with dpkg lists, as mmdebstrap leaves it."""
    entries: dict[str, bytes | str | None] = {
        "lib": "usr/lib",  # symlink
        "usr/sbin/nginx": b"NGINX",
        "usr/share/doc/nginx/copyright": b"doc",
        "etc/nginx/mime.types": b"types",
        "usr/lib/x86_64-linux-gnu/libc.so.6": b"LIBC",
        "usr/lib/x86_64-linux-gnu/libz.so.1": "libz.so.1.2.13",
        "usr/lib/x86_64-linux-gnu/libz.so.1.2.13": b"ZLIB",
        "lib/systemd/system/nginx.service": b"unit",
        "usr/bin/perl": b"PERL",  # installed, but in no package the image takes
    }
    lists = {
        "nginx": ["/usr/sbin/nginx", "/usr/share/doc/nginx/copyright"],
        "nginx-common": ["/etc/nginx", "/etc/nginx/mime.types", "/lib/systemd/system/nginx.service"],
        "libc6:amd64": ["/lib/x86_64-linux-gnu/libc.so.6"],
        "zlib1g:amd64": ["/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1.2.13"],
        "libcrypt1:amd64": [],
        "libpcre2-8-0:amd64": [],
        "libssl3:amd64": [],
    }
    for pkg, paths in lists.items():
        entries[f"var/lib/dpkg/info/{pkg}.list"] = "\n".join(["/.", *paths]).encode()
    path = tmp_path / "rootfs.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(_dir("./etc/nginx"))
        for name, data in entries.items():
            info = tarfile.TarInfo("./" + name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size, info.mode = len(data or b""), 0o755 if name.endswith("nginx") else 0o644
                tar.addfile(info, io.BytesIO(data or b""))
    return path


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_nginx_image_holds_the_packages_files_its_config_and_busybox(tmp_path: Path) -> None:
    spec = images.nginx_spec(_rootfs(tmp_path), b"BUSYBOX")
    assert spec.name == render.NGINX_IMAGE
    assert spec.files["usr/sbin/nginx"] == oci.File(b"NGINX", 0o755)
    assert spec.files["usr/lib/x86_64-linux-gnu/libc.so.6"].data == b"LIBC"  # /lib is /usr/lib
    assert spec.symlinks["usr/lib/x86_64-linux-gnu/libz.so.1"] == "libz.so.1.2.13"
    assert spec.files["etc/nginx/mime.types"].data == b"types"
    for gone in ("usr/share/doc/nginx/copyright", "usr/lib/systemd/system/nginx.service", "usr/bin/perl"):
        assert gone not in spec.files
    assert spec.symlinks["lib"] == "usr/lib" and spec.symlinks["usr/bin/sleep"] == "busybox"
    assert b"listen 80 default_server;" in spec.files["etc/nginx/nginx.conf"].data
    assert b"www-data:x:33:" in spec.files["etc/group"].data
    assert [*spec.entrypoint, *spec.cmd] == ["nginx", "-g", "daemon off;"]


def test_nginx_image_needs_its_packages(tmp_path: Path) -> None:
    path = tmp_path / "empty.tar"
    with tarfile.open(path, "w"):
        pass
    with pytest.raises(RuntimeError, match="no package nginx installed"):
        images.nginx_spec(path, b"")


def test_cni_results_left_by_the_node_are_its_own_only() -> None:
    a, b = "a" * 64, "b" * 64
    before = [f"other-{b}-eth0", f"cni-loopback-{b}-lo"]
    now = [*before, f"podgate-12000-{a}-eth0", f"cni-loopback-{a}-lo", f"podgate-1-{a}-eth0"]
    assert render.cni_results_to_remove(before, now, LAYOUT.network) == [
        f"podgate-12000-{a}-eth0",
        f"cni-loopback-{a}-lo",
    ]


def test_with_a_real_node_pods_reach_the_api_server_and_haproxy_on_the_bridge(tmp_path: Path) -> None:
    """The API server listens on loopback only; with a real node it advertises the bridge's
    address (the ``kubernetes`` Service's endpoint), where HAProxy forwards to it, and HAProxy's
    runtime API listens there too for podgate in pods.  With the node agent, none of it."""
    node = Sandbox(tmp_path / "node", SandboxConfig(port_offset=12000, node="kubelet"))
    cfg = node.base_haproxy_config()
    assert f"stats socket ipv4@10.244.0.1:{NODE_RUNTIME_PORT} level admin" in cfg
    assert "bind 10.244.0.1:18443" in cfg and "server apiserver 127.0.0.1:18443" in cfg
    assert (
        f"backend {DEPLOYED_BACKEND}\n    balance roundrobin" in cfg
        and "server-template podgate- 1-32" in cfg
    )
    apiserver = next(c for c in node.components() if c.name == "kube-apiserver").argv
    assert "--bind-address=127.0.0.1" in apiserver and "--advertise-address=10.244.0.1" in apiserver
    assert not any(a.startswith("--endpoint-reconciler-type") for a in apiserver)

    agent = Sandbox(tmp_path / "agent", SandboxConfig(port_offset=12000))
    assert "10.244.0.1" not in agent.base_haproxy_config()
    apiserver = next(c for c in agent.components() if c.name == "kube-apiserver").argv
    assert "--advertise-address=127.0.0.1" in apiserver and "--endpoint-reconciler-type=none" in apiserver


def _sandbox_cli(*argv: str) -> int:
    from podgate_sandbox import cli

    parser = argparse.ArgumentParser(prog="podgate")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sandbox", "import"], "podgate: sandbox import needs an image archive (OCI)"),
        (["sandbox", "status", "x.tar"], "podgate: sandbox status takes no argument (got 'x.tar')"),
        (
            ["sandbox", "import", "x.tar"],
            "podgate: import needs a running real node: podgate sandbox up --node kubelet",
        ),
    ],
)
def test_sandbox_import_refuses_what_it_cannot_do_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """``podgate sandbox import ARCHIVE`` puts an image (``make image``'s) on the real node; asked
    of a sandbox without one, or without an archive, it says so and exits 2, starting nothing."""
    assert _sandbox_cli(*argv, "--state-dir", str(tmp_path / "state")) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
