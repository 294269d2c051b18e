"""Test helper: tiny OCI images built locally from Debian's busybox-static (nothing downloaded).

``build_busybox_layout(path)`` makes an OCI layout with two tags:

- ``latest``: Env GREETING=hello, WorkingDir /work, Cmd ["/bin/sh", "-c", "echo $GREETING"]
- ``ep``: the same plus Entrypoint ["/bin/echo"] and Cmd ["from-cmd"]

``busybox_images`` is a session fixture with the layout and archives made from it by skopeo.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

APPLETS = ("sh", "cat", "echo", "ls", "env", "sleep", "pwd", "id")
TOOLS = ("umoci", "skopeo", "bwrap")


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError("busybox not found: install busybox-static (make system-deps)")


def build_busybox_layout(layout: Path) -> Path:
    """An OCI layout at ``layout`` with tags ``latest`` and ``ep`` (see the module doc)."""
    bundle = layout.parent / f"{layout.name}-bundle"
    _run("umoci", "init", "--layout", str(layout))
    _run("umoci", "new", "--image", f"{layout}:latest")
    _run("umoci", "unpack", "--image", f"{layout}:latest", str(bundle))
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "work").mkdir()
    shutil.copy2(busybox_binary(), rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    _run("umoci", "repack", "--image", f"{layout}:latest", str(bundle))
    shutil.rmtree(bundle)
    config = ["umoci", "config", "--image", f"{layout}:latest"]
    common = ["--config.env=GREETING=hello", "--config.workingdir=/work"]
    _run(*config, *common, "--config.cmd=/bin/sh", "--config.cmd=-c", "--config.cmd=echo $GREETING")
    _run(*config, "--tag", "ep", "--config.entrypoint=/bin/echo", "--config.cmd=from-cmd")
    return layout


@dataclass(frozen=True)
class BusyboxImages:
    """One image in every local format the store accepts."""

    layout: Path  # OCI layout directory (tags latest, ep)
    oci_archive: Path  # oci-archive of latest, tagged latest
    docker_archive: Path  # docker-archive (docker save format) of latest


def layout_digest(layout: Path, tag: str) -> str:
    """The manifest digest ``tag`` names in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry["annotations"]["org.opencontainers.image.ref.name"] == tag:
            return str(entry["digest"])
    raise AssertionError(tag)


@pytest.fixture(scope="session")
def busybox_images(tmp_path_factory: pytest.TempPathFactory) -> BusyboxImages:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (make system-deps)")
    root = tmp_path_factory.mktemp("oci")
    layout = build_busybox_layout(root / "layout")
    oci_archive, docker_archive = root / "image-oci.tar", root / "image-docker.tar"
    _run("skopeo", "copy", "--quiet", f"oci:{layout}:latest", f"oci-archive:{oci_archive}:latest")
    _run(
        "skopeo",
        "copy",
        "--quiet",
        f"oci:{layout}:latest",
        f"docker-archive:{docker_archive}:sylphx/busybox:latest",
    )
    open_to_shards(root)  # a root control plane runs only images the shards' user can read
    return BusyboxImages(layout, oci_archive, docker_archive)


def open_to_shards(root: Path) -> None:
    """Let others read ``root``'s tree and enter the folders on the way to it (pytest's
    temporary folders are 0700)."""
    for folder in root.parents:
        if folder == Path("/"):
            break
        folder.chmod(folder.stat().st_mode | 0o711)
    for path in [root, *root.rglob("*")]:
        extra = 0o755 if path.is_dir() else 0o644
        path.chmod(path.stat().st_mode | extra)
