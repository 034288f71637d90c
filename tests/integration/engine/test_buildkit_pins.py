"""What BuildKit's own integration tests (moby/buildkit frontend/dockerfile/*_test.go) pin
about a RUN, end to end in one process: real runc, overlayfs, the registry's busybox.

Each test names the BuildKit test it follows.  Our busybox has no ``wheel`` or ``daemon``
entries, so the Dockerfiles add the ones BuildKit's busybox has."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import oci_config
from support.leaks import files_containing
from support.progress import Recorder
from support.ssh_tools import copy_ssh_add, make_key

from dockyard.cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from dockyard.scheduler._errors import UsageError
from dockyard.scheduler._graph import Ulimit
from dockyard.scheduler._platform import parse_platform


def _build(tmp_path: Path, dockerfile: str, busybox: Any, **extra: Any
           ) -> tuple[Path, LocalBuildResult]:
    context = tmp_path / "context"
    context.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    settings: dict[str, Any] = {"outputs": (Output("local", out),), **extra}
    options = LocalBuildOptions(root=tmp_path / "root",
                                platforms=(parse_platform("linux/amd64"),), **settings)
    text = dockerfile.replace("BUSYBOX", busybox.reference)
    result = asyncio.run(build_local(text.encode(), context, options))
    return out, result


def _files(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(out.iterdir()) if p.is_file()}


# testUser, testUserAdditionalGids: `id -G` is the primary gid and every group that lists
# the user, root included; an explicit group or a uid:gid gives that group alone.
USERS = """\
FROM BUSYBOX AS base
RUN mkdir -m 0777 /out && echo 'wheel:x:10:root' >> /etc/group \\
 && echo 'dockerio:x:1001:1001::/bin:/bin/false' >> /etc/passwd \\
 && echo 'dockerio:x:1001:' >> /etc/group
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/default
USER root
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/root
USER dockerio
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/dockerio-alone
USER root
RUN echo 'supplementary:x:1002:dockerio' >> /etc/group
USER dockerio
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/dockerio
USER 1001
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/uid
USER dockerio:dockerio
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/name-group
USER 1001:1001
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/uid-gid
USER dockerio:supplementary
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/name-supplementary
USER 1042:1043
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/unknown-uid-gid
USER 1234
RUN echo "$(id -u):$(id -g)/$(id -G)" > /out/unknown-uid
FROM scratch
COPY --from=base /out /
"""


def test_groups_are_the_primary_and_the_listed_ones(tmp_path: Path,
                                                    busybox_image: Any) -> None:
    out, _ = _build(tmp_path, USERS, busybox_image)
    assert _files(out) == {
        "default": "0:0/0 10\n", "root": "0:0/0 10\n",
        "dockerio-alone": "1001:1001/1001\n", "dockerio": "1001:1001/1001 1002\n",
        "uid": "1001:1001/1001 1002\n", "name-group": "1001:1001/1001\n",
        "uid-gid": "1001:1001/1001\n", "name-supplementary": "1001:1002/1002\n",
        "unknown-uid-gid": "1042:1043/1043\n", "unknown-uid": "1234:0/0\n",
    }


# testBuiltinArgs: a proxy build arg reaches RUN in both spellings without an ARG, and a
# changed proxy value does not invalidate the cache (an ARG's value does); the proxy stays
# out of the image's config and history.
PROXY = """\
FROM BUSYBOX AS build
ARG FOO
ARG BAR
ARG BAZ=bazcontent
RUN echo -n $HTTP_PROXY::$http_proxy::$NO_PROXY::$FOO::$BAR::$BAZ > /out
FROM scratch
COPY --from=build /out /
"""


def test_proxy_build_args_in_both_spellings_out_of_the_cache_key(
        tmp_path: Path, busybox_image: Any) -> None:
    def build(name: str, **args: str) -> str:
        out = tmp_path / name
        _build(tmp_path, PROXY, busybox_image, build_args=args,
               outputs=(Output("local", out), Output("oci", tmp_path / f"{name}.tar")))
        return (out / "out").read_text()

    assert build("first", FOO="foocontents", http_proxy="hpvalue",
                 NO_PROXY="npvalue") == "hpvalue::hpvalue::npvalue::foocontents::::bazcontent"
    assert build("cached", FOO="foocontents", http_proxy="hpvalue2"
                 ) == "hpvalue::hpvalue::npvalue::foocontents::::bazcontent"
    assert build("rerun", FOO="foocontents2", http_proxy="hpvalue2"
                 ) == "hpvalue2::hpvalue2::::foocontents2::::bazcontent"
    config = oci_config(tmp_path / "rerun.tar")
    assert "hpvalue" not in json.dumps(config)


# testTargetStageNameArg: TARGETSTAGE, once declared, is the target's name, "default" for
# an unnamed last stage.
TARGETSTAGE = """\
FROM BUSYBOX AS base
WORKDIR /out
RUN echo -n "value:$TARGETSTAGE" > /out/first
ARG TARGETSTAGE
RUN echo -n "value:$TARGETSTAGE" > /out/second
FROM scratch AS foo
COPY --from=base /out/ /
FROM scratch
COPY --from=base /out/ /
"""


def test_targetstage_names_the_target(tmp_path: Path, busybox_image: Any) -> None:
    out, _ = _build(tmp_path / "foo", TARGETSTAGE, busybox_image, target="foo")
    assert _files(out) == {"first": "value:", "second": "value:foo"}
    out, _ = _build(tmp_path / "default", TARGETSTAGE, busybox_image)
    assert _files(out) == {"first": "value:", "second": "value:default"}


# testSecretAsEnvironWithFileMount: env= with a target gives the variable and the file; the
# file is on the executor's tmpfs, so neither the layer nor the next RUN sees it.
SECRET = b"env-and-file-5e1c"
SECRET_BOTH = """\
FROM BUSYBOX
RUN --mount=type=secret,id=mysecret,target=/run/secrets/secret,env=SECRET_ENV \\
    [ "$SECRET_ENV" = "$(cat /run/secrets/secret)" ] && [ -f /run/secrets/secret ] \\
    && echo -n "$SECRET_ENV" | sha256sum > /seen && stat -c %a /run/secrets/secret > /mode
RUN [ ! -e /run/secrets/secret ] && echo clean > /after
"""


def test_secret_as_env_and_file(tmp_path: Path, busybox_image: Any) -> None:
    events = Recorder()
    out, _ = _build(tmp_path, SECRET_BOTH, busybox_image, secrets={"mysecret": SECRET},
                    events=events,
                    outputs=(Output("local", tmp_path / "out"),
                             Output("oci", tmp_path / "image.tar")))
    assert (out / "seen").read_text().split()[0] == hashlib.sha256(SECRET).hexdigest()
    assert (out / "mode").read_text() == "400\n"
    assert (out / "after").read_text() == "clean\n"
    assert not (out / "run" / "secrets" / "secret").exists()
    assert SECRET not in repr(events.events).encode()
    for place in (tmp_path / "root", out, tmp_path / "image.tar"):
        assert files_containing(place, [SECRET]) == [], place


# testDockerfileCheckHostname: BUILDKIT_SANDBOX_HOSTNAME is the RUN's hostname, in
# /etc/hosts, `hostname` and the shell's $HOSTNAME.
HOSTNAME = """\
FROM BUSYBOX AS base
RUN mkdir /out && grep -c foo /etc/hosts > /out/hosts && hostname > /out/hostname \\
 && echo $HOSTNAME > /out/env
FROM scratch
COPY --from=base /out /
"""


def test_sandbox_hostname_build_arg(tmp_path: Path, busybox_image: Any) -> None:
    out, _ = _build(tmp_path, HOSTNAME, busybox_image,
                    build_args={"BUILDKIT_SANDBOX_HOSTNAME": "foo"})
    assert _files(out) == {"hosts": "1\n", "hostname": "foo\n", "env": "foo\n"}


# testRunHostNetwork / testRunGlobalNetwork, and the security.insecure twin: a RUN on the
# host's network or in insecure mode runs only when the build was granted it (--allow).
PRIVILEGED = """\
FROM BUSYBOX AS base
RUN --network=host --security=insecure mkdir /out && cat /proc/self/status \\
 | grep CapEff > /out/caps
FROM scratch
COPY --from=base /out /
"""


def test_privileged_runs_need_their_entitlements(tmp_path: Path, busybox_image: Any) -> None:
    with pytest.raises(UsageError, match="entitlement network.host is not allowed"):
        _build(tmp_path / "denied", PRIVILEGED, busybox_image)
    with pytest.raises(UsageError, match="entitlement security.insecure is not allowed"):
        _build(tmp_path / "half", PRIVILEGED, busybox_image, allow=frozenset({"network.host"}))
    out, _ = _build(tmp_path / "granted", PRIVILEGED, busybox_image,
                    allow=frozenset({"network.host", "security.insecure"}))
    assert (out / "caps").read_text().split()[0] == "CapEff:"


# Behaviours of BuildKit's tests that dockyard already had, pinned: (its test, Dockerfile
# writing /out, extra options, the files expected in /out).
HELD: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
    ("testSecretFileParams",
     "RUN --mount=type=secret,required=false,mode=741,uid=100,gid=102,target=/mysecret "
     'mkdir /out && stat -c "%u %g %f" /mysecret > /out/stat\n'
     "RUN [ ! -e /mysecret ] && echo none > /out/stub\n",
     {"secrets": {"mysecret": b"pw"}}, {"stat": "100 102 81e1\n", "stub": "none\n"}),
    ("testMountTmpfsSize",
     "RUN --mount=type=tmpfs,target=/dev/shm,size=128m mkdir /out "
     "&& grep -c '/dev/shm tmpfs .*size=131072k' /proc/mounts > /out/sized\n",
     {}, {"sized": "1\n"}),
    ("testCacheMountUser",
     "RUN --mount=type=cache,target=/mycache,uid=1001,gid=1002,mode=0751 "
     'mkdir /out && stat -c "%u %g %f" /mycache > /out/stat\n', {}, {"stat": "1001 1002 41e9\n"}),
    ("testEmptyStringArgInEnv",
     "ARG FOO\nARG BAR=\nRUN mkdir /out && env | grep -c '^BAR=$' > /out/bar "
     "&& (env | grep -c '^FOO=' > /out/foo || true)\n", {}, {"bar": "1\n", "foo": "0\n"}),
    ("testWorkdirUser",
     "RUN echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd "
     "&& echo 'user:x:1000:' >> /etc/group\nUSER user\nWORKDIR /mydir\nUSER root\n"
     'RUN mkdir /out && stat -c "%U %G" /mydir > /out/owner\n', {}, {"owner": "user user\n"}),
]


@pytest.mark.parametrize(("test", "steps", "extra", "expected"), HELD,
                         ids=[case[0] for case in HELD])
def test_held(tmp_path: Path, busybox_image: Any, test: str, steps: str,
              extra: dict[str, Any], expected: dict[str, str]) -> None:
    dockerfile = f"FROM BUSYBOX AS base\n{steps}FROM scratch\nCOPY --from=base /out /\n"
    out, _ = _build(tmp_path, dockerfile, busybox_image, **extra)
    assert _files(out) == expected, test


# testInsecureDevicesWhitelist: an insecure RUN has the host's devices, a sandboxed one not.
DEVICES = """\
FROM BUSYBOX AS base
RUN mkdir /out && ([ -e /dev/fuse ] || [ -e /dev/loop-control ] || echo none > /out/sandbox)
RUN --security=insecure [ -c /dev/fuse ] && [ -c /dev/loop-control ] && echo both > /out/insecure
FROM scratch
COPY --from=base /out /
"""


@pytest.mark.skipif(not (Path("/dev/fuse").exists() and Path("/dev/loop-control").exists()),
                    reason="the host has no /dev/fuse or /dev/loop-control")
def test_insecure_run_has_the_host_devices(tmp_path: Path, busybox_image: Any) -> None:
    out, _ = _build(tmp_path, DEVICES, busybox_image, allow=frozenset({"security.insecure"}))
    assert _files(out) == {"sandbox": "none\n", "insecure": "both\n"}


# testUlimit, testShmSize: the build's --ulimit and --shm-size hold in every RUN.
RESOURCES = """\
FROM BUSYBOX AS base
RUN mkdir /out && ulimit -n > /out/nofile && grep ' /dev/shm ' /proc/mounts \\
 | grep -o 'size=[0-9]*k' > /out/shm
FROM scratch
COPY --from=base /out /
"""


def test_ulimit_and_shm_size(tmp_path: Path, busybox_image: Any) -> None:
    out, _ = _build(tmp_path / "set", RESOURCES, busybox_image,
                    ulimits=(Ulimit("nofile", 1062, 1062),), shm_size=128 << 20)
    assert _files(out) == {"nofile": "1062\n", "shm": "size=131072k\n"}
    out, _ = _build(tmp_path / "default", RESOURCES, busybox_image)
    assert _files(out)["shm"] == "size=65536k\n"


# testSSHSocketParams, in process: the RUN's agent socket is the worker's own, with the
# mount's owner and mode, forwarding to the host's agent (which it never sees).
SSH_PARAMS = """\
FROM BUSYBOX AS base
COPY tools/ /
RUN --mount=type=ssh,mode=741,uid=100,gid=102 mkdir /out \\
 && stat -c "%u %g %f" $SSH_AUTH_SOCK > /out/stat && ssh-add -l > /out/listed
FROM scratch
COPY --from=base /out /
"""


def test_ssh_socket_params_in_process(tmp_path: Path, busybox_image: Any) -> None:
    context = tmp_path / "context"
    context.mkdir()
    copy_ssh_add(context)
    key = make_key(tmp_path / "key", "in-process-key")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        subprocess.run(["ssh-add", str(key)], env={"SSH_AUTH_SOCK": str(sock)}, check=True,
                       capture_output=True)
        before = sock.stat()
        out, _ = _build(tmp_path, SSH_PARAMS, busybox_image, ssh={"default": sock})
        after = sock.stat()  # the host's socket untouched
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    assert (out / "stat").read_text() == "100 102 c1e1\n"
    assert "in-process-key (ED25519)" in (out / "listed").read_text()
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        before.st_mode, before.st_uid, before.st_gid)
