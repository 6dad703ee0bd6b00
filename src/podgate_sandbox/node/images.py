"""The node's local images, built without Docker or a registry and imported into containerd.

The pause image is a tiny static C program (sleep, reap children, exit on SIGTERM); the web
image is Debian's static busybox serving its pod name with ``httpd``; the nginx image is
Debian's nginx: mmdebstrap installs it (minbase, from the host's apt sources) and the image
keeps only the files of nginx and the libraries it links (about 10 MB instead of 140), plus
busybox for ``sh`` and ``sleep`` (preStop hooks).  Archives are cached by content in the
podgate cache (the nginx root file system by its recipe); every ``up`` imports them
(containerd's state is wiped at ``down``) and tags nginx under the names manifests use
(:data:`render.NGINX_ALIASES`), so no pull is ever attempted for those.
"""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

from podgate_sandbox.binaries import cache_root
from podgate_sandbox.image import APT_SOURCES
from podgate_sandbox.node import oci, render

PAUSE_C = r"""
/* The pod sandbox's process: holds the namespaces, reaps orphans, exits on SIGTERM/SIGINT. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction term = {0}, chld = {0};
    term.sa_handler = stop;
    sigaction(SIGTERM, &term, 0);
    sigaction(SIGINT, &term, 0);
    chld.sa_handler = reap;
    chld.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &chld, 0);
    for (;;) pause();
}
"""

BUSYBOX = Path("/bin/busybox")
#: busybox's httpd as PID 1 ignores SIGTERM: a shell traps it and exits, taking httpd along.
WEB_SCRIPT = (
    'mkdir -p /www && echo "podgate-web $HOSTNAME" > /www/index.html && '
    "trap 'exit 0' TERM INT; httpd -f -p \"${PORT:-80}\" -h /www & wait"
)


#: Debian packages whose files make the nginx image: nginx and what /usr/sbin/nginx links
NGINX_PACKAGES = ("nginx", "nginx-common", "libc6", "libcrypt1", "libpcre2-8-0", "libssl3", "zlib1g")
#: parts of those packages a container does not use
NGINX_SKIP = (
    "/usr/share/doc/",
    "/usr/share/man/",
    "/usr/share/lintian/",
    "/usr/share/vim/",
    "/usr/share/apport/",
    "/lib/systemd/",
    "/usr/lib/systemd/",
    "/etc/init.d/",
    "/etc/logrotate.d/",
    "/etc/ufw/",
    "/etc/default/",
    "/usr/share/locale/",
    "/usr/share/zoneinfo/",
    "/usr/lib/x86_64-linux-gnu/gconv/",
    "/etc/nginx/sites-",
    "/usr/bin/",
    "/usr/sbin/iconvconfig",
    "/usr/sbin/zic",
    "/sbin/ldconfig",
)
#: bookworm is merged-/usr: the packages' /lib, /bin, /sbin paths live under /usr
MERGED_USR = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
NGINX_CONF = """\
# Debian's nginx as a container: in the foreground (CMD), logging to stderr, on port 80 and 8080
# (the sandbox's examples name either), /healthz for load-balancer and readiness checks.
user www-data;
worker_processes 2;
pid /run/nginx.pid;
error_log stderr notice;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_timeout 65;
    server {
        listen 80 default_server;
        listen 8080 default_server;
        root /usr/share/nginx/html;
        index index.html;
        add_header X-Pod-Name $hostname always;
        location = /healthz { default_type text/plain; return 200 "ok\\n"; }
    }
}
"""
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "nobody:x:65534:65534:nobody:/:/bin/false\n"
)
GROUP = "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"
BUSYBOX_APPLETS = ("sh", "sleep", "cat", "ls", "kill", "ps", "wget", "echo")


def images_dir() -> Path:
    return cache_root() / "images"


def _pause_binary(cache: Path) -> bytes:
    key = hashlib.sha256(PAUSE_C.encode()).hexdigest()[:12]
    binary = cache / f"pause-{key}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "pause.c"
            src.write_text(PAUSE_C)
            out = subprocess.run(
                ["gcc", "-static", "-Os", "-s", "-o", str(binary) + ".new", str(src)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"could not compile the pause program: {out.stderr.strip()}")
        Path(str(binary) + ".new").replace(binary)
    return binary.read_bytes()


def pause_spec(binary: bytes) -> oci.ImageSpec:
    return oci.ImageSpec(render.PAUSE_IMAGE, {"pause": oci.File(binary, 0o755)}, entrypoint=["/pause"])


def web_spec(busybox: bytes) -> oci.ImageSpec:
    return oci.ImageSpec(
        render.WEB_IMAGE,
        {"bin/busybox": oci.File(busybox, 0o755)},
        entrypoint=["/bin/sh", "-c", WEB_SCRIPT],
        symlinks={f"bin/{applet}": "busybox" for applet in ("sh", "httpd", "mkdir", "echo", "sleep", "wget")},
        dirs=["tmp", "www"],
    )


def _usr(path: str) -> str:
    """A package's path as it is stored in a merged-/usr root file system."""
    top, _, rest = path.strip("/").partition("/")
    return f"{MERGED_USR[top]}/{rest}" if top in MERGED_USR and rest else path.strip("/")


def nginx_spec(rootfs: Path, busybox: bytes) -> oci.ImageSpec:
    """The nginx image from a root file system tar that has :data:`NGINX_PACKAGES` installed:
    their files (dpkg's lists say which) but the parts no container uses, the configuration
    above, and busybox."""
    with tarfile.open(rootfs) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

        def listed(package: str) -> list[str]:
            for name in (f"var/lib/dpkg/info/{package}.list", f"var/lib/dpkg/info/{package}:amd64.list"):
                if name in members:
                    f = tar.extractfile(members[name])
                    assert f is not None
                    return f.read().decode().splitlines()
            raise RuntimeError(f"{rootfs} has no package {package} installed")

        files: dict[str, oci.File] = {}
        symlinks: dict[str, str] = {}
        for package in NGINX_PACKAGES:
            for path in listed(package):
                if any(path.startswith(skip) or path + "/" == skip for skip in NGINX_SKIP):
                    continue
                m = members.get(_usr(path))
                if m is None or m.isdir():
                    continue
                if m.issym():
                    symlinks[_usr(path)] = m.linkname
                elif m.isfile():
                    f = tar.extractfile(m)
                    assert f is not None
                    files[_usr(path)] = oci.File(f.read(), m.mode & 0o7777)
    files |= {
        "etc/nginx/nginx.conf": oci.File(NGINX_CONF.encode()),
        "etc/passwd": oci.File(PASSWD.encode()),
        "etc/group": oci.File(GROUP.encode()),
        "usr/bin/busybox": oci.File(busybox, 0o755),
    }
    symlinks |= dict(MERGED_USR) | {f"usr/bin/{a}": "busybox" for a in BUSYBOX_APPLETS}
    return oci.ImageSpec(
        render.NGINX_IMAGE,
        files,
        entrypoint=["nginx"],
        cmd=["-g", "daemon off;"],
        symlinks=symlinks,
        dirs=["tmp", "run", "var/lib/nginx", "var/log/nginx", "var/www", "root"],
    )


def nginx_rootfs(cache: Path) -> Path:
    """Debian's nginx installed by mmdebstrap into a root file system tar, kept by its recipe."""
    recipe = f"bookworm minbase {','.join(NGINX_PACKAGES)}"
    rootfs = cache / f"nginx-rootfs-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.tar"
    partial = rootfs.with_suffix(".partial.tar")
    if not rootfs.exists():
        out = subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(NGINX_PACKAGES)}",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "bookworm",
                str(partial),  # its format follows the name: .tar
                str(APT_SOURCES),  # the host's own mirrors: no mirror name written here
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if out.returncode != 0:
            tail = "\n".join(out.stderr.strip().splitlines()[-10:])
            raise RuntimeError(f"mmdebstrap could not install nginx for the node's image:\n{tail}")
        partial.replace(rootfs)
    return rootfs


def _archive_name(image: str) -> str:
    return image.rsplit("/", 1)[-1].replace(":", "-") + ".oci.tar"


def _write(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.with_suffix(".new").write_bytes(data)
        path.with_suffix(".new").replace(path)


def archives(cache: Path | None = None) -> list[Path]:
    """The node's image archives, (re)written when their content changed (the nginx one when
    its recipe did: reading its root file system takes seconds)."""
    cache = cache or images_dir()
    cache.mkdir(parents=True, exist_ok=True)
    specs = [pause_spec(_pause_binary(cache))]
    if BUSYBOX.exists():
        specs.append(web_spec(BUSYBOX.read_bytes()))
    paths = []
    for spec in specs:
        path = cache / _archive_name(spec.name)
        _write(path, oci.oci_archive(spec))
        paths.append(path)
    if BUSYBOX.exists():
        busybox = BUSYBOX.read_bytes()
        recipe = repr((NGINX_PACKAGES, NGINX_SKIP, NGINX_CONF, PASSWD, GROUP, BUSYBOX_APPLETS))
        key = hashlib.sha256(recipe.encode() + busybox).hexdigest()
        path, stamp = cache / _archive_name(render.NGINX_IMAGE), cache / "nginx.recipe"
        if not (path.exists() and stamp.exists() and stamp.read_text() == key):
            _write(path, oci.oci_archive(nginx_spec(nginx_rootfs(cache), busybox)))
            stamp.write_text(key)
        paths.append(path)
    return paths


def _ctr(containerd_socket: Path, ctr: str, *args: str) -> str:
    out = subprocess.run(
        [ctr, "--address", str(containerd_socket), "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args[:2])} {args[-1]} failed: {out.stderr.strip()}")
    return out.stdout


def import_all(containerd_socket: Path, ctr: str = "ctr") -> None:
    """Import every archive into containerd's CRI namespace, unpacked for the CRI snapshotter,
    and tag nginx under the names manifests use."""
    for path in archives():
        _ctr(containerd_socket, ctr, "images", "import", "--snapshotter", "overlayfs", str(path))
    for alias in render.NGINX_ALIASES:
        _ctr(containerd_socket, ctr, "images", "tag", "--force", render.NGINX_IMAGE, alias)


def import_archive(containerd_socket: Path, archive: Path, ctr: str = "ctr") -> list[str]:
    """Import one more OCI archive (``make image``'s, say) the way :func:`import_all` does, and
    return the names it gave (ctr prints ``unpacking NAME (sha256:…)``).  The archive's own
    reference is the name: a short one (``podgate:0.1.0``) is Docker Hub's to the CRI."""
    out = _ctr(containerd_socket, ctr, "images", "import", "--snapshotter", "overlayfs", str(archive))
    names = [line.split()[1] for line in out.splitlines() if line.startswith("unpacking ")]
    if not names:
        raise RuntimeError(f"ctr images import {archive} imported no image: {out.strip()}")
    return names
