"""`make container`: the Bento as an OCI image, built and run without a Docker engine.

    .venv/bin/python -m tools.container build [--base IMAGE] [--tag spinecast:latest]
    .venv/bin/python -m tools.container run --tag spinecast:latest --port 3000

`build` turns `spinecast:latest` of the BentoML store into an image with buildah (chroot
isolation, vfs storage: no daemon, no privileges beyond root in this machine), from the Dockerfile
BentoML generates. Without `--base`, the base image is built here from Debian's packages
(debootstrap of a minimal bookworm with Python 3.11, about a minute), since no public registry is
reachable; it trusts the same certificate authorities as this machine, so the build can reach the
package index through the same proxy. `run` starts the image's own entrypoint (`bentoml serve`)
with `buildah run`. buildah and debootstrap are installed with apt when missing (root only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tools.demo import stop

BASE = "localhost/spinecast-base:bookworm"
DEBIAN = ("bookworm", "http://deb.debian.org/debian")
PACKAGES = "python3.11,python3-pip,python3.11-venv,ca-certificates"
ENV = {"STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
ENTRYPOINT = "/home/bentoml/bento/env/docker/entrypoint.sh"


def _run(*cmd: str, capture: bool = False) -> str:
    done = subprocess.run(
        cmd,
        check=True,
        text=True,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE if capture else None,
    )
    return (done.stdout or "").strip()


def ensure_tools() -> None:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(
            f"spinecast container: {', '.join(missing)} missing; "
            f"install them (apt install {' '.join(missing)})"
        )
    _run("apt-get", "update", "-q")  # a fresh machine may have no package lists yet
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing)


def image_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", name],
            check=False,
            capture_output=True,
            env={**os.environ, **ENV},
        ).returncode
        == 0
    )


def build_base(name: str = BASE) -> str:
    """A minimal Debian bookworm with Python 3.11 and pip, as image `name` (kept once built)."""
    if image_exists(name):
        return name
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            DEBIAN[0],
            str(root),
            DEBIAN[1],
        )
        for ca in Path("/usr/local/share/ca-certificates").glob(
            "*.crt"
        ):  # this machine's extra CAs
            shutil.copy2(ca, root / "usr/local/share/ca-certificates" / ca.name)
        _run("chroot", str(root), "update-ca-certificates")
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(
            missing_ok=True
        )  # the Bento installs into a venv
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = Path(tmp) / "rootfs.tar"
        _run(
            "tar",
            "-C",
            str(root),
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "-cf",
            str(tar),
            ".",
        )
        ctr = _run("buildah", "from", "scratch", capture=True)
        try:
            _run("buildah", "add", ctr, str(tar), "/")
            _run(
                "buildah",
                "config",
                "--env",
                "LANG=C.UTF-8",
                "--env",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                "--env",
                "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                "--env",
                "UV_NATIVE_TLS=1",
                "--cmd",
                "/bin/bash",
                ctr,
            )
            _run("buildah", "commit", "-q", ctr, name)
        finally:
            _run("buildah", "rm", ctr, capture=True)
    return name


def build(
    bento: str = "spinecast:latest", tag: str = "spinecast:latest", base: str | None = None
) -> dict:
    """The image of `bento`, tagged `tag`; returns its name, size and whether torch is in it."""
    ensure_tools()
    base = base or build_base()
    bentoml = Path(sys.executable).with_name("bentoml")
    _run(
        str(bentoml),
        "containerize",
        bento,
        "--backend",
        "buildah",
        "--opt",
        f"from={base}",
        "--opt",
        "isolation=chroot",
        "-t",
        tag,
    )
    name = tag if "/" in tag else f"localhost/{tag}"
    images = json.loads(_run("buildah", "images", "--json", capture=True))
    size = next(i["size"] for i in images if name in (i.get("names") or []))
    ctr = _run("buildah", "from", tag, capture=True)
    try:
        has_torch = _run(
            "buildah",
            "run",
            ctr,
            "--",
            "/app/.venv/bin/python",
            "-c",
            "import importlib.util as u; print(u.find_spec('torch') is not None)",
            capture=True,
        )
    finally:
        _run("buildah", "rm", ctr, capture=True)
    return {"image": tag, "base": base, "size": size, "torch_in_image": has_torch == "True"}


@contextlib.contextmanager
def running(
    tag: str, port: int, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen]:
    """The image's entrypoint (`bentoml serve`) in a buildah container on the host network."""
    ctr = _run("buildah", "from", tag, capture=True)
    args = [arg for k, v in (env or {}).items() for arg in ("--env", f"{k}={v}")]
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        ["buildah", "run", *args, ctr, "--", ENTRYPOINT, "--port", str(port)],
        env={**os.environ, **ENV},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        inside = _namespaces_under(proc.pid)
        stop(proc)
        _kill_in(inside)
        _run("buildah", "rm", ctr, capture=True)
        if log:
            out.close()


def _namespaces_under(pid: int) -> set[str]:
    """The mount namespaces, other than ours, of `pid`'s descendants: the container's."""
    parents = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():  # "pid (comm) state ppid ..."
                parents[int(proc.name)] = int(
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
        except (OSError, ValueError, IndexError):
            pass  # gone already
    tree = {pid}
    while more := {child for child, parent in parents.items() if parent in tree} - tree:
        tree |= more
    return {ns for ns in map(_mount_namespace, tree) if ns} - {_mount_namespace("self")}


def _mount_namespace(pid) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _kill_in(namespaces: set[str]) -> None:
    """SIGKILL what still runs in the container: BentoML's workers live in sessions of their own
    and outlive `buildah run`."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _mount_namespace(proc.name) in namespaces:
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image")
    b.add_argument("--bento", default="spinecast:latest")
    b.add_argument("--tag", default="spinecast:latest")
    b.add_argument(
        "--base", default=None, help="your own base image (default: a local Debian bookworm)"
    )
    b.add_argument("--out", type=Path, default=None, help="also write the result (JSON) here")
    r = sub.add_parser("run", help="serve the image on the host network")
    r.add_argument("--tag", default="spinecast:latest")
    r.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    if args.command == "build":
        result = json.dumps(build(args.bento, args.tag, args.base), indent=1)
        print(result)
        if args.out:
            args.out.write_text(result + "\n")
    else:
        with running(args.tag, args.port) as proc:
            proc.wait()


if __name__ == "__main__":
    main()
