"""Paths a run names: spelled one way only (the spec model), and nothing of the control
plane visible to a shard whatever the spec says (checked against the host at submit).

The API cases go through HTTP as a tenant would, on a real control plane, and check that a
refused run left nothing behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import Server
from oci import BusyboxImages
from sylphx import ValidationError
from sylphx._core.spec import RunSpec

CMD = {"command": ["true"]}


# -- the spec model: lexical rules only (shared by API, SDK and CLI) -------------------


@pytest.mark.parametrize(
    ("spelled", "stored"),
    [
        ("//cache", "/cache"),
        ("///data//out/", "/data/out"),
        ("/./cache/.", "/cache"),
        ("/x/etc", "/x/etc"),
    ],
)
def test_mount_paths_are_stored_normalised(spelled: str, stored: str) -> None:
    spec = RunSpec.parse({**CMD, "volumeMounts": [{"volumeId": "v", "mountPath": spelled}]})
    wire = spec.to_wire()
    assert wire["volumeMounts"][0]["mountPath"] == stored
    assert RunSpec.parse(wire).to_wire() == wire


@pytest.mark.parametrize(
    ("spelled", "words"),
    [
        ("//etc", "system path"),
        ("//proc", "system path"),
        ("///etc/x", "system path"),
        ("/./etc", "system path"),
        ("//", "system path"),
        ("/x/../etc", "'..'"),
        ("/cache/..", "'..'"),
        ("cache", "absolute path"),
        ("/ca\0che", "NUL"),
    ],
)
def test_mount_paths_that_break_a_rule(spelled: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        RunSpec.parse({**CMD, "volumeMounts": [{"volumeId": "v", "mountPath": spelled}]})
    (detail,) = err.value.details
    assert detail["field"] == "volumeMounts[0].mountPath"
    assert words in detail["rule"] and detail["fix"]


def test_one_mount_path_spelled_two_ways_is_used_twice() -> None:
    mounts = [{"volumeId": "a", "mountPath": "/c"}, {"volumeId": "b", "mountPath": "//c/"}]
    with pytest.raises(ValidationError, match="mountPath /c is used twice"):
        RunSpec.parse({**CMD, "volumeMounts": mounts})


@pytest.mark.parametrize(
    ("spelled", "stored"),
    [("//w/./job/", "/w/job"), ("/", "/"), ("///", "/"), ("/w/job", "/w/job")],
)
def test_working_dir_is_stored_normalised(spelled: str, stored: str) -> None:
    assert RunSpec.parse({**CMD, "workingDir": spelled}).working_dir == stored


@pytest.mark.parametrize(
    ("spelled", "words"),
    [("/w/../etc", "'..'"), ("..", "absolute path"), ("w/job", "absolute path"), ("/w\0", "NUL")],
)
def test_working_dirs_that_break_a_rule(spelled: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        RunSpec.parse({**CMD, "workingDir": spelled})
    (detail,) = err.value.details
    assert detail["field"] == "workingDir"
    assert words in detail["rule"] and detail["fix"]


# -- the API: host checks at submit ------------------------------------------------------


@pytest.fixture
def server(tenant: Server) -> Server:
    """Each test acts as an org of its own on the module's one control plane: its runs are
    refused, or end before it does."""
    return tenant


def run_ids(server: Server) -> list[str]:
    return [run["id"] for run in server.http.get("/v1/runs").json()["items"]]


def refused(server: Server, field: str, words: str, **spec: Any) -> dict[str, Any]:
    """Submit ``spec``; assert a 422 naming ``field`` (with ``words`` in its rule or fix)
    in the documented error shape, and that nothing was stored."""
    before = run_ids(server)
    r = server.http.post("/v1/runs", json={**CMD, **spec})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "validation_error"
    fields = [d["field"] for d in body["details"]]
    assert field in fields, body
    detail = body["details"][fields.index(field)]
    assert words in detail["rule"] + " " + detail["fix"], detail
    assert detail["fix"] and body["message"].startswith(f"{body['details'][0]['field']}: ")
    assert run_ids(server) == before
    return dict(body)


def test_working_dir_in_the_control_plane_home_is_refused(server: Server, tmp_path: Path) -> None:
    home = server.settings.home
    state = home / "state"
    state.mkdir(exist_ok=True)
    link = tmp_path / "innocent"
    link.symlink_to(state)
    hidden = "never see"
    refused(server, "workingDir", hidden, workingDir=str(home))
    refused(server, "workingDir", hidden, workingDir=str(state))
    refused(server, "workingDir", hidden, workingDir=str(home / "logs"))
    refused(server, "workingDir", hidden, workingDir=str(link))  # a symlink into it
    refused(server, "workingDir", hidden, workingDir=f"{link}/sub")
    refused(server, "workingDir", hidden, workingDir="/" + str(home))  # //home
    refused(server, "workingDir", hidden, workingDir=f"//{home}/./state/")
    refused(server, "workingDir", "'..'", workingDir=f"{tmp_path}/x/../{home.name}")
    body = refused(server, "workingDir", hidden, workingDir=str(home), parallelism=3)
    assert "SYLPHX_HOME" in body["details"][0]["fix"]


def test_path_entries_in_the_control_plane_home_are_refused(server: Server, tmp_path: Path) -> None:
    home = server.settings.home
    (home / "state").mkdir(exist_ok=True)
    link = tmp_path / "tools"
    link.symlink_to(home / "state")
    hidden = "never see"
    for path in (
        f"/usr/bin:{home}/volumes/bin",
        f"{home}:/usr/bin",
        f"/usr/bin://{home}/bin",
        f"/usr/bin:{home.parent}/x/../{home.name}/bin",  # '..' resolved
        f"/usr/bin:{link}/../logs",  # '..' after a symlink: resolved as the kernel does
        f"/usr/bin:{link}",
    ):
        refused(server, "env.PATH", hidden, env={"PATH": path}, workingDir=str(tmp_path))
    # a relative entry is resolved against the working directory
    refused(
        server, "env.PATH", hidden, env={"PATH": f"{home.name}/bin"}, workingDir=str(home.parent)
    )
    # every broken rule is named, not only the first
    body = refused(
        server, "env.PATH", hidden, env={"PATH": f"{home}/bin"}, workingDir=str(home / "state")
    )
    assert [d["field"] for d in body["details"]] == ["workingDir", "env.PATH"]


def test_mount_paths_in_the_home_or_over_system_paths_are_refused(server: Server) -> None:
    vol, _ = server.volume()
    home = server.settings.home
    field = "volumeMounts[0].mountPath"
    for target, words in (
        (str(home), "never see"),
        (f"{home}/volumes/{vol}", "never see"),
        (f"/{home}/./logs", "never see"),
        ("//etc", "system path"),
        ("//proc", "system path"),
        ("/./etc", "system path"),
        ("/x/../etc", "'..'"),
        ("/da\0ta", "NUL"),
    ):
        refused(server, field, words, volumeMounts=[{"volumeId": vol, "mountPath": target}])


def test_paths_through_proc_are_refused(server: Server, tmp_path: Path) -> None:
    """A /proc magic link leads where the process following it is: the control plane's
    view at submit is not what a shard (or bwrap) would get at launch."""
    link = tmp_path / "here"
    link.symlink_to("/proc/self/cwd")
    via = "goes through /proc"
    refused(server, "workingDir", via, workingDir="/proc/self/cwd")
    refused(server, "workingDir", via, workingDir="/proc/1/root/tmp")
    refused(server, "workingDir", via, workingDir="/dev/fd/3")  # -> /proc/self/fd/3
    refused(server, "workingDir", via, workingDir=str(link))
    refused(server, "env.PATH", via, env={"PATH": "/usr/bin:/proc/self/cwd/bin"})


def test_working_dir_must_be_an_existing_directory(server: Server, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    refused(server, "workingDir", "does not exist", workingDir=str(tmp_path / "nope"))
    refused(server, "workingDir", "not a directory", workingDir=str(tmp_path / "file"))
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    refused(server, "workingDir", "does not exist", workingDir=str(dangling))


def test_operator_hidden_paths_are_refused_too(make_server: Any, tmp_path: Path) -> None:
    secret = tmp_path / "operator-secret"
    (secret / "sub").mkdir(parents=True)
    server = make_server(shard_hide=(secret,))
    refused(server, "workingDir", "never see", workingDir=str(secret / "sub"))
    refused(server, "env.PATH", "never see", env={"PATH": f"/usr/bin:{secret}"})


def test_a_valid_working_dir_spelled_oddly_runs_there(server: Server, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # shards run as an unprivileged user: pytest's dirs are 0700
    job = tmp_path / "proj"
    job.mkdir()
    (job / "job.sh").write_text("pwd\n")
    (tmp_path / "bin").mkdir()
    run = server.submit(
        command=["sh", "job.sh"],
        workingDir=f"/{job}/./",  # //tmp/.../proj/./ : stored as /tmp/.../proj
        env={"PATH": f"/usr/bin:/bin:{tmp_path}/bin"},
    )
    assert run["spec"]["workingDir"] == str(job)
    assert server.wait(run["id"])["status"] == "succeeded", server.shards(run["id"])
    logs = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0})
    assert logs.text.strip() == str(job)
    assert server.get(run["id"])["spec"]["workingDir"] == str(job)


def test_a_working_dir_that_holds_the_home_is_fine(make_server: Any, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # shards run as an unprivileged user: pytest's dirs are 0700
    server = make_server()  # its home in this test's tmp_path
    assert server.settings.home.is_relative_to(tmp_path)  # "contains" is not "lies under"
    run = server.submit(command=["true"], workingDir=str(tmp_path))
    assert server.wait(run["id"])["status"] == "succeeded"


def test_image_runs_name_the_images_paths_not_the_hosts(
    server: Server, busybox_images: BusyboxImages
) -> None:
    home = server.settings.home
    vol, _ = server.volume()
    r = server.http.post(
        "/v1/runs",
        json={
            "image": f"oci:{busybox_images.layout}:latest",
            "command": ["/bin/true"],
            "workingDir": "//no-such-dir-on-the-host/./",
            "env": {"PATH": f"/bin:{home}/bin"},
            "volumeMounts": [{"volumeId": vol, "mountPath": f"{home}/in-the-image"}],
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["workingDir"] == "/no-such-dir-on-the-host"


def test_a_working_dir_the_shards_user_cannot_enter_is_refused(
    server: Server, tmp_path: Path
) -> None:
    """Shards run as an unprivileged uid: a private (0700) directory would only fail at
    launch, as if the command had failed; it is a 422 naming workingDir and the fix."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    body = refused(server, "workingDir", "cannot be entered", command=["true"],
                   workingDir=str(private))  # fmt: skip
    assert "chmod o+rx" in body["details"][0]["fix"]
    private.chmod(0o755)
    assert server.submit(command=["true"], workingDir=str(private))["id"]


PATH_CASES = [  # (the run's env, its merge step, the PATH each host step searches, by field)
    ({"PATH": "/p"}, None, [("", "/p")]),
    ({"PATH": "/p"}, {}, [("", "/p")]),  # the merge inherits the run's: checked once
    ({"PATH": "/p"}, {"env": {"PATH": "/m"}}, [("", "/p"), ("merge.", "/m")]),
    ({}, {"env": {"PATH": "/m"}}, [("merge.", "/m")]),
    ({"PATH": "/p"}, {"image": "busybox:1"}, [("", "/p")]),  # the merge runs in its image
    ({}, {"image": "busybox:1", "env": {"PATH": "/m"}}, []),
    ({}, {}, []),
]


@pytest.mark.parametrize(("env", "merge", "searched"), PATH_CASES)
def test_each_host_step_s_path_is_checked_once_under_the_field_that_sets_it(
    env: dict[str, str], merge: dict[str, Any] | None, searched: list[tuple[str, str]]
) -> None:
    from sylphx._server.runs import hostpaths

    wire: dict[str, Any] = {"command": ["x"], "env": env}
    if merge is not None:
        wire["merge"] = {"command": ["m"], **merge}
    spec = RunSpec.parse(wire)
    hosted = [(prefix, step) for prefix, step in hostpaths._steps(spec) if step.image is None]
    assert hostpaths._paths(spec, hosted) == searched
