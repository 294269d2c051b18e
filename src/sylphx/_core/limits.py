"""The sizes a run spec and a request may have, and the text rule every string obeys.

Every limit sits below what the kernel and bubblewrap accept, so a spec the API accepts
can be launched: a shard's ``execve`` gets its command, its environment (``env``, the
granted secrets and a few ``SYLPHX_*`` variables) and their pointers, which together must
fit ``ARG_MAX`` (2 MiB with the usual 8 MiB stack), and no single ``KEY=value`` or argument
may exceed ``MAX_ARG_STRLEN`` (128 KiB). The worst case the limits below allow is
256 KiB + 256 KiB + 16 x 64 KiB of strings (1.5 MiB) and 5,136 pointers (41 KiB).

:data:`LIMITS` is the table the README shows (``tests/test_strict_api.py`` keeps them equal).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Strict
from pydantic_core import PydanticCustomError

from .errors import shown

__all__ = [
    "LIMITS",
    "Text",
    "check_command",
    "check_env",
    "check_path",
    "check_text",
    "rule",
    "shown",
    "utf8_len",
]

KIB = 1024
MAX_ARGS = 4096  # command arguments
MAX_ARG_BYTES = 64 * KIB  # one argument, one env value (the kernel's limit: 128 KiB)
MAX_COMMAND_BYTES = 256 * KIB  # all arguments together
MAX_ENV_VARS = 1024
MAX_ENV_BYTES = 256 * KIB  # names and values together
MAX_PATH_ENTRIES = 64  # folders on env.PATH: a sandboxed host launch looks into each
MAX_NAME_BYTES = 200  # an env variable or secret name (the store keeps 200)
MAX_SECRETS = 16  # secrets one run may name
MAX_SECRET_BYTES = 64 * KIB  # one secret's value
MAX_PATH_BYTES = 4095  # workingDir, mountPath (the kernel's PATH_MAX is 4096 with the NUL)
MAX_PATH_COMPONENT_BYTES = 255  # one component of a path (NAME_MAX)
MAX_IMAGE_BYTES = 1024  # an image reference
MAX_ID_BYTES = 64  # an object id: volumeId, run ids in URLs
MAX_VOLUME_MOUNTS = 32
MAX_VOLUME_NAME_BYTES = 200
MAX_BODY_BYTES = 4 * KIB * KIB  # one request body
MAX_WAIT = 60.0  # seconds one long-poll (GET /v1/runs/{id}?wait=) may wait

LIMITS: list[tuple[str, str, str]] = [  # (field, limit, why): the README's table
    ("`command`", f"{MAX_ARGS:,} arguments, {MAX_COMMAND_BYTES // KIB} KiB in all",
     "the command, environment and secrets must fit the kernel's 2 MiB ARG_MAX together"),
    ("`command[i]`, `env` values", f"{MAX_ARG_BYTES // KIB} KiB each",
     "the kernel refuses one argument or variable over 128 KiB"),
    ("`env`", f"{MAX_ENV_VARS:,} variables, {MAX_ENV_BYTES // KIB} KiB in all (names and values)",
     "ARG_MAX, as for `command`"),
    ("`env.PATH`", f"{MAX_PATH_ENTRIES} folders",
     "a sandboxed host shard's launch looks into each for the toolchains it binds"),
    ("`env` names, `secrets` names", f"{MAX_NAME_BYTES} bytes each; letters, digits, _",
     "an environment variable name"),
    ("`secrets`", f"{MAX_SECRETS} per run; a value {MAX_SECRET_BYTES // KIB} KiB at most",
     "the values become environment variables: ARG_MAX"),
    ("`workingDir`, `volumeMounts[i].mountPath`",
     f"{MAX_PATH_BYTES:,} bytes, {MAX_PATH_COMPONENT_BYTES} per component",
     "the kernel's PATH_MAX and NAME_MAX"),
    ("`volumeMounts`", f"{MAX_VOLUME_MOUNTS} mounts", "each is one bind mount in the sandbox"),
    ("`image`", f"{MAX_IMAGE_BYTES:,} bytes", "a registry reference is far shorter"),
    ("`volumeId`, ids in URLs", f"{MAX_ID_BYTES} bytes", "ids are 20 characters"),
    ("every string", "valid UTF-8, no NUL byte",
     "a NUL ends a C string (argv, env, paths); a lone surrogate cannot be stored or sent"),
    ("integers", "the field's own range (e.g. parallelism 1..256); JSON numbers, not strings"
     " or booleans", "no silent conversion: \"3\" or true is a mistake, not a 3 or a 1"),
    ("request body", f"{MAX_BODY_BYTES // KIB // KIB} MiB (413 past it); JSON nested past the"
     " parser's depth (about 1,000) is a 422", "a spec at every limit above is under 2 MiB"),
]  # fmt: skip

SURROGATE = re.compile("[\ud800-\udfff]")


def utf8_len(text: str) -> int:
    """The length of ``text`` in UTF-8 bytes (what the kernel counts)."""
    return len(text.encode("utf-8", "surrogatepass"))


def rule(field: str, text: str, fix: str) -> PydanticCustomError:
    """A rule violation carrying its field, rule text and fix for the error translator
    (which names the field by its place in the request when it has one)."""
    return PydanticCustomError("sylphx_rule", "{rule}", {"field": field, "rule": text, "fix": fix})


def check_text(value: str) -> str:
    """``value`` if it can be stored and passed to a process: no NUL byte, no lone
    surrogate (JSON's ``"\\ud800"`` escape decodes to one; it is not valid UTF-8)."""
    if "\0" in value:
        raise rule("", "must not contain NUL bytes", "remove the NUL character (\\u0000)")
    if SURROGATE.search(value):
        raise rule(
            "",
            "must be valid UTF-8 (it holds a lone surrogate such as \\ud800)",
            "send text as UTF-8; a surrogate escape must be one half of a pair",
        )
    return value


def _kib(n: int) -> str:
    return f"{n // KIB} KiB" if n >= KIB else f"{n} bytes"


def check_command(argv: list[str]) -> None:
    """Raise the rule ``argv`` breaks: too many arguments, one or all too large."""
    if len(argv) > MAX_ARGS:
        raise rule(
            "command",
            f"has {len(argv):,} arguments; at most {MAX_ARGS:,} are allowed",
            "pass long lists in a file (a volume or the working directory) and its path",
        )
    total = 0
    for i, arg in enumerate(argv):
        size = utf8_len(arg)
        if size > MAX_ARG_BYTES:
            raise rule(
                f"command[{i}]",
                f"is {size:,} bytes; one argument may have {_kib(MAX_ARG_BYTES)}",
                "pass large values in a file and its path",
            )
        total += size + 1
    if total > MAX_COMMAND_BYTES:
        raise rule(
            "command",
            f"is {total:,} bytes in all; at most {_kib(MAX_COMMAND_BYTES)} are allowed",
            "pass large values in a file and its path",
        )


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_names(env: dict[str, str], field: str = "env") -> None:
    """Raise the rule a variable name in ``env`` breaks: not a name, or a SYLPHX_* one."""
    for name in env:
        if not ENV_NAME.match(name):
            raise rule(
                field,
                f"{shown(name)} is not a valid variable name",
                "use letters, digits and underscores, not starting with a digit",
            )
        if name.startswith("SYLPHX_"):
            raise rule(
                field,
                f"{shown(name)} is reserved: SYLPHX_* variables are set by the platform",
                "rename the variable",
            )


def check_secret_names(names: list[str]) -> None:
    """Raise the rule the run's ``secrets`` break: too many, a bad or repeated name."""
    if len(names) > MAX_SECRETS:
        raise rule(
            "secrets",
            f"names {len(names)} secrets; a run may name {MAX_SECRETS}",
            "put related values in one secret (e.g. a JSON document)",
        )
    for name in names:
        if not ENV_NAME.match(name) or name.startswith("SYLPHX_") or len(name) > MAX_NAME_BYTES:
            raise rule(
                "secrets",
                f"{shown(name)} is not a valid secret name",
                "use an env-var style name such as DB_URL (not SYLPHX_*)",
            )
    if "PATH" in names:  # it would replace the env.PATH checked at submit, unchecked
        raise rule(
            "secrets",
            "names 'PATH': the folders a run searches are checked at submit, and a"
            " secret's value is only read at launch",
            "set PATH in the run's env, and give the secret another name",
        )
    if len(set(names)) != len(names):
        raise rule("secrets", "names a secret twice", "list each secret once")


def check_env(env: dict[str, str], field: str = "env") -> None:
    """Raise the rule ``env`` breaks: too many variables, a name or value too large."""
    if len(env) > MAX_ENV_VARS:
        raise rule(
            field,
            f"has {len(env):,} variables; at most {MAX_ENV_VARS:,} are allowed",
            "pass configuration in a file and its path",
        )
    total = 0
    for name, value in env.items():
        if utf8_len(name) > MAX_NAME_BYTES:
            raise rule(
                field,
                f"a variable name is over {MAX_NAME_BYTES} bytes",
                "use a shorter name",
            )
        size = utf8_len(value)
        if size > MAX_ARG_BYTES:
            raise rule(
                f"{field}.{name}",
                f"is {size:,} bytes; one value may have {_kib(MAX_ARG_BYTES)}",
                "pass large values in a file and its path",
            )
        total += utf8_len(name) + size + 2
    folders = env.get("PATH", "").count(":") + 1
    if folders > MAX_PATH_ENTRIES:
        raise rule(
            f"{field}.PATH",
            f"names {folders:,} folders; at most {MAX_PATH_ENTRIES} are allowed",
            "keep the folders the run's programs are in, and name others by their path",
        )
    if total > MAX_ENV_BYTES:
        raise rule(
            field,
            f"is {total:,} bytes in all; at most {_kib(MAX_ENV_BYTES)} are allowed",
            "pass large values in a file and its path",
        )


def check_path(path: str, field: str, fix: str) -> None:
    """Raise the rule a (normalised) path breaks: too long, or a component too long."""
    size = utf8_len(path)
    if size > MAX_PATH_BYTES:
        raise rule(field, f"is {size:,} bytes; a path may have {MAX_PATH_BYTES:,}", fix)
    longest = max((utf8_len(part) for part in path.split("/")), default=0)
    if longest > MAX_PATH_COMPONENT_BYTES:
        raise rule(
            field,
            f"has a component of {longest} bytes; one may have {MAX_PATH_COMPONENT_BYTES}",
            fix,
        )


# A string of the wire: no coercion from other JSON types, no NUL, valid UTF-8.
Text = Annotated[str, Strict(), AfterValidator(check_text)]
