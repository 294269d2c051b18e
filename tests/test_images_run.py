"""Runs from container images on the local executor: a locally built busybox OCI image
unpacked daemonlessly and run under the sandbox; the per-org image policy."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from conftest import Server
from oci import BusyboxImages, open_to_shards
from sylphx._server.tenancy import orgs


def logs(server: Server, run_id: str, shard: int = 0) -> str:
    return server.http.get(f"/v1/runs/{run_id}/logs", params={"shard": shard}).text


def test_three_shards_from_a_local_oci_image_then_a_merge_step(
    server: Server,
    busybox_images: BusyboxImages,
) -> None:
    image = f"oci:{busybox_images.layout}:latest"
    vol, out = server.volume()
    mount = [{"volumeId": vol, "mountPath": "/shared"}]
    run = server.submit(
        image=image,
        command=[
            "/bin/sh",
            "-c",
            'echo "part $SYLPHX_SHARD_INDEX from $(pwd) says $GREETING"'
            " > /shared/part-$SYLPHX_SHARD_INDEX; touch /escape 2>/dev/null || echo ro",
        ],
        parallelism=3,
        machine="nano",
        volumeMounts=mount,
    )
    done = server.wait(run["id"])
    assert done["status"] == "succeeded", server.shards(run["id"])
    assert logs(server, run["id"]) == "ro\n"  # the image's root is read-only too
    merge = server.submit(
        image=image, command=["/bin/sh", "-c", "cat /shared/part-*"], volumeMounts=mount
    )
    server.wait(merge["id"])
    assert logs(server, merge["id"]) == "".join(
        f"part {i} from /work says hello\n" for i in range(3)
    )  # WorkingDir and Env honoured
    assert sorted(p.name for p in out.iterdir()) == ["part-0", "part-1", "part-2"]


def test_image_cmd_and_entrypoint_are_honoured(
    server: Server,
    busybox_images: BusyboxImages,
) -> None:
    cmd_only = server.submit(image=f"oci:{busybox_images.layout}:latest")  # no command: CMD
    with_ep = server.submit(image=f"oci:{busybox_images.layout}:ep", command=["given"])
    missing = server.submit(image=f"oci:{busybox_images.layout}:latest", command=["python3"])
    for run in (cmd_only, with_ep, missing):
        server.wait(run["id"])
    assert logs(server, cmd_only["id"]) == "hello\n"
    assert logs(server, with_ep["id"]) == "given\n"  # ENTRYPOINT kept, CMD replaced
    (shard,) = server.shards(missing["id"])
    assert shard["exitCode"] == 127 and shard["reason"].startswith("LaunchError")


def test_image_policy_refusals(
    server: Server,
    busybox_images: BusyboxImages,
    tmp_path: Path,
) -> None:
    image = f"oci:{busybox_images.layout}:latest"
    digest = server.plane.images.digest(image)

    def set_policy(policy: dict[str, object]) -> None:
        with server.plane.sessions.begin() as s:
            orgs.find_org(s, "org_test").image_policy = policy

    def submit(ref: str) -> tuple[int, str]:
        r = server.http.post("/v1/runs", json={"image": ref, "command": ["/bin/true"]})
        return r.status_code, r.json().get("message", "")

    set_policy({"allowedSources": ["ghcr.io/acme/"]})
    code, message = submit(image)
    assert code == 422 and "not from a source this org allows (ghcr.io/acme/)" in message
    set_policy({"requireDigest": True})
    code, message = submit(image)
    assert code == 422 and "not pinned by digest" in message
    set_policy({"denyDigests": [digest]})
    code, message = submit(image)
    assert code == 422 and "deny list" in message
    scanner = tmp_path / "scanner.sh"
    scanner.write_text('#!/bin/sh\necho "CVE-2099-0001 in $2"; [ -d "$3/bin" ] && exit 3\n')
    scanner.chmod(scanner.stat().st_mode | stat.S_IEXEC)
    set_policy({})
    object.__setattr__(server.plane.settings, "image_scanner", str(scanner))
    code, message = submit(image)
    assert code == 422 and f"refused by the image scanner: CVE-2099-0001 in {digest}" in message
    object.__setattr__(server.plane.settings, "image_scanner", None)
    assert submit(image)[0] == 201
    assert server.http.get("/v1/runs").json()["items"][0]["spec"]["image"] == image
    assert os.path.isdir(server.settings.home / "images")


def test_an_image_symlink_never_places_a_mount_point_on_the_host(
    server: Server, busybox_images: BusyboxImages, tmp_path: Path
) -> None:
    """An attack through the API: an image whose /data is a link to a host folder (as the
    first, root, sandbox stage sees the host: /oldroot), and a volume mounted below it. The
    mount point must not be created on the host: the launch is refused, naming the link."""
    victim = tmp_path / "victim"
    victim.mkdir()
    layout = tmp_path / "evil"
    shutil.copytree(busybox_images.layout, layout)
    bundle = tmp_path / "evil-bundle"
    umoci = ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)]
    subprocess.run(umoci, check=True, capture_output=True)
    (bundle / "rootfs" / "data").symlink_to(f"/oldroot{victim}")
    (bundle / "rootfs" / "data2").symlink_to(f"/.sylphx-root/../oldroot{victim}")
    repack = ["umoci", "repack", "--image", f"{layout}:latest", str(bundle)]
    subprocess.run(repack, check=True, capture_output=True)
    shutil.rmtree(bundle)
    open_to_shards(tmp_path)
    vol, _ = server.volume()
    for target in ("/data/pwned", "/data2/pwned"):
        run = server.submit(
            image=f"oci:{layout}:latest",
            command=["/bin/sh", "-c", "true"],
            volumeMounts=[{"volumeId": vol, "mountPath": target}],
        )
        done = server.wait(run["id"])
        assert done["status"] == "failed", done
        (shard,) = server.shards(run["id"])
        assert "is a symbolic link in the shard's root" in shard["reason"], shard
    assert list(victim.iterdir()) == []  # nothing was created on the host
