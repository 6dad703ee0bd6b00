"""The real node's footprint on the machine: made before the node starts, undone by ``down``.

``prepare`` records the machine first (sysctls, iptables rule sets, mounts, cgroups, host
paths), then makes the node's cgroup, installs the egress guard, creates the bridge and the
service route, and writes the configuration files.  ``teardown`` kills what is left in the
node's cgroups, unmounts what appeared, removes every rule, chain and table that was not there,
deletes the bridge, restores the sysctls, removes the cgroups and host paths the node created,
and wipes the node's runtime state.  The record lives in the node's directory, so a ``down``
from another process (or after a crash) restores the same machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from podgate_sandbox.node import render
from podgate_sandbox.node.render import NodeLayout

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNIFIED = CGROUP_ROOT / "unified"
NODE_CGROUP_NAMES = ("kubepods",)
CNI_RESULTS = Path("/var/lib/cni/results")


class HostError(RuntimeError):
    """The machine is not in a state the node can start from; the message says why."""


def run(
    args: Sequence[str], check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(args), capture_output=True, text=True, check=False, input=input, timeout=60)
    if check and out.returncode != 0:
        raise HostError(f"{' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out


def read_sysctl(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    (Path("/proc/sys") / name.replace(".", "/")).write_text(value + "\n")


def sysctls() -> dict[str, str]:
    return {k: v for k in render.SYSCTLS if (v := read_sysctl(k)) is not None}


def iptables_save(six: bool = False) -> str:
    out = run(["ip6tables-save" if six else "iptables-save"], check=False)
    return render.normalise_save(out.stdout)


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy: the v1 controllers and the unified (v2) one."""
    return sorted(p for p in CGROUP_ROOT.iterdir() if (p / "cgroup.procs").exists())


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir())
    except OSError:
        return []


class NodeHost:
    def __init__(self, layout: NodeLayout) -> None:
        self.n = layout

    @property
    def cgroup_procs(self) -> Path:
        """Write a PID here to put that process in the node's cgroup (and under the guard)."""
        return UNIFIED / self.n.cgroup / "cgroup.procs"

    def _prefixes(self) -> list[str]:
        return [str(self.n.root), *render.MOUNT_PREFIXES]

    # -- up ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        n = self.n
        if os.geteuid() != 0:
            raise HostError("a real node needs root (cgroups, iptables, a bridge, mounts)")
        if not UNIFIED.is_dir():
            raise HostError(f"no cgroup v2 hierarchy at {UNIFIED}: the egress guard needs one")
        n.root.mkdir(parents=True, exist_ok=True)
        if not n.record.exists():
            self._check_free()
            record = {
                "sysctls": sysctls(),
                "iptables": iptables_save(),
                "ip6tables": iptables_save(six=True),
                "mounts": render.mounts_under(mountinfo(), self._prefixes()),
                "host_paths": [p for p in render.HOST_PATHS if os.path.lexists(p)],
                "cni_results": _listdir(CNI_RESULTS),
                "cgroups": [
                    str(h / name) for h in hierarchies() for name in NODE_CGROUP_NAMES if (h / name).exists()
                ],
            }
            n.record.write_text(json.dumps(record, indent=1))
        for d in (n.containerd_dir, n.cni_conf_dir, n.kubelet_dir):
            d.mkdir(parents=True, exist_ok=True)
        n.containerd_config.write_text(render.containerd_config(n))
        (n.cni_conf_dir / "10-podgate.conflist").write_text(render.cni_conflist(n))
        n.kubelet_config.write_text(render.kubelet_config(n))
        for name, text in render.registry_hosts(n).items():
            (n.registry_hosts_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (n.registry_hosts_dir / name).write_text(text)
        # No DNS server is reachable from here: pods resolve nothing rather than leak queries.
        n.resolv_conf.write_text("nameserver 127.0.0.1\n")
        for name in (n.cgroup, "kubepods"):
            (UNIFIED / name).mkdir(exist_ok=True)
        self._guard()
        self._bridge()

    def _check_free(self) -> None:
        """One real node per machine (the kubelet's host paths and the kubepods cgroups are
        shared), and the bridge's name and range must be ours alone."""
        others = [p.name for p in UNIFIED.glob("podgate-node-*")]
        others += [str(h / "kubepods") for h in hierarchies() if (h / "kubepods").exists()]
        if others:
            raise HostError(
                f"another real node (or kubelet) is on this machine: {', '.join(others)}; "
                "`podgate sandbox down` it first"
            )
        if Path(f"/sys/class/net/{self.n.bridge}").exists():
            raise HostError(f"link {self.n.bridge} already exists and is not recorded as this sandbox's")
        net = ipaddress.ip_network(self.n.pod_cidr)
        for route in json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
            dst = route.get("dst", "")
            if dst in ("default", "") or route.get("type") in ("local", "broadcast"):
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.ip_network(dst, strict=False).overlaps(net):
                    raise HostError(
                        f"node pod CIDR {self.n.pod_cidr} overlaps the route {dst} on this machine"
                    )

    def _guard(self) -> None:
        """The egress guard, before any node process starts (idempotent)."""
        for six, rules in ((False, render.egress_rules(self.n)), (True, render.egress_rules6(self.n))):
            tool = "ip6tables" if six else "iptables"
            if run([tool, "-S", self.n.guard_chain], check=False).returncode == 0:
                continue
            for rule in rules:
                run([tool, "-w", *rule])

    def set_test_rejects(self, addresses: Sequence[str]) -> None:
        """Rebuild the guard's chain so it also rejects these loopback addresses (tests only)."""
        for addr in addresses:
            if not ipaddress.ip_address(addr).is_loopback:
                raise HostError(f"{addr} is not a loopback address: the guard is tested on loopback only")
        chain = self.n.guard_chain
        run(["iptables", "-w", "-F", chain])
        for rule in render.egress_rules(self.n, reject_also=addresses):
            if rule[:2] == ["-A", chain]:
                run(["iptables", "-w", *rule])

    def _bridge(self) -> None:
        n = self.n
        if not Path(f"/sys/class/net/{n.bridge}").exists():
            run(["ip", "link", "add", n.bridge, "type", "bridge"])
            prefix = ipaddress.ip_network(n.pod_cidr).prefixlen
            run(["ip", "addr", "add", f"{n.node_ip}/{prefix}", "dev", n.bridge])
            run(["ip", "link", "set", n.bridge, "up"])
        # The API server's (and the host's) dials to ClusterIPs stay on the bridge, even when a
        # Service has no endpoints yet.
        run(["ip", "route", "replace", n.service_cidr, "dev", n.bridge, "src", n.node_ip])

    def footprint(self) -> list[tuple[str, bool, str]]:
        """The node's non-process parts for ``status``: (name, in place, what it is)."""
        n = self.n
        hook = ["OUTPUT", "-m", "cgroup", "--path", n.cgroup, "-j", n.guard_chain]
        guard = all(
            run([t, "-w", "-C", *hook], check=False).returncode == 0 for t in ("iptables", "ip6tables")
        )
        bridge = Path(f"/sys/class/net/{n.bridge}").exists()
        return [
            ("egress-guard", guard, f"iptables/ip6tables chain {n.guard_chain}, cgroup {n.cgroup}"),
            ("bridge", bridge, f"{n.bridge} {n.node_ip} (pods {n.pod_cidr}, services {n.service_cidr})"),
        ]

    # -- down --------------------------------------------------------------------------------
    def teardown(self) -> list[str]:
        """Undo everything ``prepare`` and the node did; returns what could not be undone."""
        n = self.n
        if not n.record.exists():
            return []
        record = json.loads(n.record.read_text())
        problems: list[str] = []
        self._kill_all(problems)
        self._unmount(record["mounts"], problems)
        for six in (False, True):
            tool = "ip6tables" if six else "iptables"
            commands, tables = render.undo_iptables(record[tool], iptables_save(six))
            for cmd in commands:
                run([tool, "-w", *cmd], check=False)
            for table in tables:
                run(["nft", "delete", "table", "ip6" if six else "ip", table], check=False)
            left = iptables_save(six)
            if left != record[tool]:
                problems.append(f"{tool} rules differ from before up")
        if Path(f"/sys/class/net/{n.bridge}").exists():
            run(["ip", "link", "delete", n.bridge], check=False)
        now = sysctls()
        for name, value in render.sysctls_to_restore(record["sysctls"], now).items():
            try:
                write_sysctl(name, value)
            except OSError as e:
                problems.append(f"sysctl {name}: {e}")
        self._remove_cgroups(record["cgroups"], problems)
        for name in render.cni_results_to_remove(
            record.get("cni_results", []), _listdir(CNI_RESULTS), n.network
        ):
            with contextlib.suppress(OSError):
                (CNI_RESULTS / name).unlink()
        for path in render.HOST_PATHS:
            if path not in record["host_paths"] and os.path.lexists(path):
                if render.mounts_under(mountinfo(), [path]):
                    problems.append(f"{path} still has mounts; left in place")
                else:
                    shutil.rmtree(path, ignore_errors=True)
        if render.mounts_under(mountinfo(), [str(n.root)]):
            problems.append(f"mounts remain under {n.root}; its runtime state is left in place")
        else:
            for d in (n.containerd_dir, n.kubelet_dir, n.root / "cni-ipam"):
                shutil.rmtree(d, ignore_errors=True)
        if not problems:
            n.record.unlink()
        return problems

    def _pids_in_node_cgroups(self) -> set[int]:
        pids: set[int] = set()
        roots = [UNIFIED / self.n.cgroup] + [h / name for h in hierarchies() for name in NODE_CGROUP_NAMES]
        for root in roots:
            if not root.is_dir():
                continue
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids |= {int(p) for p in procs.read_text().split()}
        pids.discard(os.getpid())
        return pids

    def _kill_all(self, problems: list[str]) -> None:
        """Containers, shims and anything else still in the node's cgroups: SIGKILL, until none
        is left, then until each is gone from the process table (reaped, not just dying)."""
        deadline = time.monotonic() + 15
        killed: set[int] = set()
        while pids := self._pids_in_node_cgroups():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed |= pids
            if time.monotonic() > deadline:
                problems.append(f"processes left in the node's cgroups: {sorted(pids)}")
                return
            time.sleep(0.1)
        while killed := {pid for pid in killed if Path(f"/proc/{pid}").exists()}:
            if time.monotonic() > deadline:
                problems.append(f"killed processes not reaped: {sorted(killed)}")
                return
            time.sleep(0.1)

    def _unmount(self, before: list[str], problems: list[str]) -> None:
        for point in render.mounts_to_undo(before, render.mounts_under(mountinfo(), self._prefixes())):
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
        left = render.mounts_to_undo(before, render.mounts_under(mountinfo(), self._prefixes()))
        if left:
            problems.append(f"could not unmount: {', '.join(left)}")

    def _remove_cgroups(self, before: list[str], problems: list[str]) -> None:
        roots = [UNIFIED / self.n.cgroup] + [
            h / name for h in hierarchies() for name in NODE_CGROUP_NAMES if str(h / name) not in before
        ]
        for root in roots:
            if not root.is_dir():
                continue
            for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            try:
                root.rmdir()
            except OSError as e:
                problems.append(f"cgroup {root}: {e}")
