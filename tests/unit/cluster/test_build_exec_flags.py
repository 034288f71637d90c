"""The execution-side and command-level flags of ``dockyard build`` (buildx's
``--add-host``, ``--cgroup-parent``, ``--no-cache-filter``, ``--pull``, ``--platform local``,
``--network``, ``--call``, ``--builder``): their parsers, their place in the options' wire
map, and what they make of the graph, the cache key, a RUN's runtime spec and the answers
of ``--call``."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest

from dockyard.cluster._build_cmd import endpoint_of
from dockyard.cluster._build_options import (
    BuildOptions,
    Call,
    builder_endpoint,
    gather_options,
    parse_add_host,
    parse_call,
    parse_cgroup_parent,
    parse_no_cache_filter,
    parse_platform_list,
)
from dockyard.cluster._cli import build_parser, main
from dockyard.scheduler._cachekey import cache_key
from dockyard.scheduler._errors import SolveError, UsageError
from dockyard.scheduler._graph import BuildGraph, ExecMount, ExecOp, Vertex
from dockyard.scheduler._platform import default_platform
from dockyard.scheduler.dockerfile._frontend import build_graph
from dockyard.scheduler.dockerfile._subrequests import (
    list_targets,
    outline,
    outline_text,
    targets_text,
)
from dockyard.workers._executor import check_cgroups
from dockyard.workers._spec import ProcessSpec, build_spec, hosts_file
from dockyard.workers._users import ResolvedUser

ENV = {"HOME": "/root"}


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["build", *argv])


@pytest.mark.parametrize(("value", "expected"), [
    ("db:10.0.0.7", (("db", "10.0.0.7"),)),
    ("db=10.0.0.7", (("db", "10.0.0.7"),)),
    ("v6:::1", (("v6", "::1"),)),
    ("v6=[2001:db8::33]", (("v6", "2001:db8::33"),)),
    ("v6=2001:DB8:0::33", (("v6", "2001:db8::33"),)),
    ("mapped=::ffff:10.1.2.3", (("mapped", "10.1.2.3"),)),
    ("both=10.0.0.1,::1", (("both", "10.0.0.1"), ("both", "::1"))),
    ("gw:host-gateway", (("gw", "127.0.0.1"),)),
])
def test_parse_add_host(value: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert parse_add_host(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("db", "invalid host"), (":10.0.0.1", "invalid host"), ("db=", "invalid host"),
    ("db:notanip", "invalid IP address 'notanip'"), ("db=010.0.0.1", "invalid IP address"),
    ("db=fe80::1%eth0", "invalid IP address"), ("d b=10.0.0.1", "invalid host"),
])
def test_parse_add_host_refuses(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid --add-host {value!r}: {message}")):
        parse_add_host(value)


@pytest.mark.parametrize(("value", "expected"), [
    (None, ""), ("", ""), ("ci", "/ci"), ("/ci/builds/", "/ci/builds"),
])
def test_parse_cgroup_parent(value: str | None, expected: str) -> None:
    assert parse_cgroup_parent(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("/", "not a cgroup path"), ("/ci/../x", "not a cgroup path"),
    ("a b", "not a cgroup path"), ("ci//x", "not a cgroup path"),
    ("machine.slice:", "systemd slices need runc's systemd cgroup driver"),
])
def test_parse_cgroup_parent_refuses(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_cgroup_parent(value)


def test_parse_no_cache_filter() -> None:
    assert parse_no_cache_filter(["Build", "test,build", "lint"]) == ("build", "test", "lint")
    with pytest.raises(UsageError, match="empty stage name"):
        parse_no_cache_filter(["a,"])


def test_platform_local_is_the_clients() -> None:
    here = str(default_platform())
    assert parse_platform_list(["local"]) == (here,)
    assert parse_platform_list(["linux/arm64,local", "local"]) == ("linux/arm64", here)


def test_network_host_grants_network_host(tmp_path: Path) -> None:
    """buildx grants network.host itself for ``--network=host``; RUN --network=host still
    needs ``--allow``."""
    options = gather_options(_args(["--network", "host", str(tmp_path)]), ENV)
    assert options.allow == ("network.host",)
    assert gather_options(_args(["--network", "none", str(tmp_path)]), ENV).allow == ()


def test_exec_flags_cross_the_wire(tmp_path: Path) -> None:
    options = gather_options(_args([
        "--add-host", "db:10.0.0.7", "--add-host", "v6=[::1]", "--cgroup-parent", "ci",
        "--no-cache-filter", "Build", "--pull", str(tmp_path)]), ENV)
    assert (options.extra_hosts, options.cgroup_parent, options.no_cache_filter,
            options.pull) == ((("db", "10.0.0.7"), ("v6", "::1")), "/ci", ("build",), True)
    assert BuildOptions.from_wire(options.to_wire()) == options
    keys = ("extra_hosts", "cgroup_parent", "no_cache_filter", "pull")
    earlier = BuildOptions.from_wire({k: v for k, v in options.to_wire().items()
                                      if k not in keys})
    assert (earlier.extra_hosts, earlier.cgroup_parent, earlier.no_cache_filter,
            earlier.pull) == ((), "", (), False)


DOCKERFILE = b"""\
FROM scratch AS base
COPY a /a
FROM base AS build
RUN make
FROM build
RUN echo final
"""


def _runs(graph: BuildGraph) -> list[Vertex]:
    return [v for v in graph.vertices.values() if isinstance(v.op, ExecOp)]


def test_frontend_puts_hosts_and_cgroup_on_every_run_and_marks_filtered_stages() -> None:
    graph = build_graph(DOCKERFILE, extra_hosts=[("db", "10.0.0.7")], cgroup_parent="/ci",
                        no_cache_filter=["build"]).graph
    runs = _runs(graph)
    assert [(r.op.extra_hosts, r.op.cgroup_parent) for r in runs] == [
        ((("db", "10.0.0.7"),), "/ci")] * 2
    marked = sorted(v.name for v in graph.vertices.values() if v.ignore_cache)
    assert marked == ["[build 1/1] RUN make"]
    assert BuildGraph.from_msgpack(graph.to_msgpack()).vertices[runs[0].digest].ignore_cache
    plain = build_graph(DOCKERFILE).graph
    assert not any(v.ignore_cache for v in plain.vertices.values())
    assert [r.op.extra_hosts for r in _runs(plain)] == [(), ()]


def test_cache_key_keeps_host_names_not_addresses() -> None:
    def key(hosts: tuple[tuple[str, str], ...]) -> str:
        op = ExecOp(args=("true",), mounts=(ExecMount("/", None, output=True),),
                    extra_hosts=hosts)
        return cache_key(Vertex(op), [])
    assert key((("db", "10.0.0.7"),)) == key((("db", "10.9.9.9"),))
    assert key((("db", "10.0.0.7"),)) != key((("cache", "10.0.0.7"),)) != key(())


def test_hosts_file_appends_each_entry_as_buildkit() -> None:
    assert hosts_file("buildkitsandbox", [("db", "10.0.0.7"), ("v6", "::1")]) == (
        "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        "10.0.0.7\tdb\n::1\tv6\n")


def test_spec_cgroups_path_under_the_parent() -> None:
    user = ResolvedUser(uid=0, gid=0, additional_gids=(), home="/root")
    spec = build_spec(ProcessSpec(args=("true",), cgroup_parent="/ci"), user, Path("/r"), [],
                      resolv_conf=Path("/rc"), hosts=Path("/h"), container_id="dockyard-1")
    assert spec["linux"]["cgroupsPath"] == "/ci/buildkit/dockyard-1"
    plain = build_spec(ProcessSpec(args=("true",)), user, Path("/r"), [],
                       resolv_conf=Path("/rc"), hosts=Path("/h"), container_id="dockyard-1")
    assert "cgroupsPath" not in plain["linux"]


# --- --call, --builder ------------------------------------------------------------------

@pytest.mark.parametrize(("value", "check", "expected"), [
    (None, False, Call("build")), (None, True, Call("check")), ("check", True, Call("check")),
    ("outline,format=json", False, Call("outline", "json")),
    ("check,ignorestatus=true", False, Call("check", "", True)),
    ("targets", False, Call("targets")),
])
def test_parse_call(value: str | None, check: bool, expected: Call) -> None:
    assert parse_call(value, check=check) == expected


@pytest.mark.parametrize(("value", "check", "message"), [
    ("lint", False, "unknown call 'lint'"), ("outline,format=yaml", False, "format must be json"),
    ("targets,color=1", False, "invalid value color=1"),
    ("outline", True, "--check conflicts with --call=outline"),
    ("build,format=json", False, "a build has no json answer"),
])
def test_parse_call_refuses(value: str, check: bool, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_call(value, check=check)


@pytest.mark.parametrize(("flag", "environ", "expected"), [
    (None, {}, None), ("default", {}, ""), (None, {"BUILDX_BUILDER": "dockyard"}, ""),
    ("tcp://127.0.0.1:8375", {}, "tcp://127.0.0.1:8375"),
    (None, {"BUILDX_BUILDER": "unix:///run/d.sock"}, "unix:///run/d.sock"),
    ("default", {"BUILDX_BUILDER": "elsewhere"}, ""),
])
def test_builder_names_an_endpoint(flag: str | None, environ: dict[str, str],
                                   expected: str | None) -> None:
    assert builder_endpoint(argparse.Namespace(builder=flag), environ) == expected


def test_builder_refuses_other_names() -> None:
    with pytest.raises(UsageError, match="--builder 'mybuilder': no such builder"):
        builder_endpoint(argparse.Namespace(builder="mybuilder"), {})
    with pytest.raises(UsageError, match="BUILDX_BUILDER 'ci': no such builder"):
        builder_endpoint(argparse.Namespace(builder=None), {"BUILDX_BUILDER": "ci"})


OUTLINED = b"""\
ARG BASE=busybox
ARG UNUSED=1
# base The base image
FROM ${BASE} AS base
# VERSION the version to build
ARG VERSION="1.0"

FROM base AS build
RUN --mount=type=secret,id=token,required --mount=type=ssh make

FROM scratch
COPY --from=build /out /
"""


def test_targets_lists_every_stage_as_buildx_prints_them() -> None:
    answer = list_targets(OUTLINED)
    assert [(t.get("name"), t.get("default"), t.get("description")) for t in
            answer["Targets"]] == [("base", None, "The base image"), ("build", None, None),
                                   (None, True, None)]
    assert targets_text(answer) == ("TARGET    DESCRIPTION\nbase      The base image\n"
                                    "build     \n(default) \n")


def test_outline_names_the_args_secrets_and_ssh_the_target_uses() -> None:
    answer = outline(OUTLINED)
    assert [(a["name"], a.get("value"), a.get("description")) for a in answer["args"]] == [
        ("BASE", "busybox", None), ("VERSION", "1.0", "the version to build")]
    assert [(s["name"], s.get("required")) for s in answer["secrets"]] == [("token", True)]
    assert [s["name"] for s in answer["ssh"]] == ["default"]
    assert outline_text(answer).startswith("BUILD ARG   VALUE     DESCRIPTION\n"
                                           "BASE        busybox   \n")
    based = outline(OUTLINED, target="base")
    assert (based["name"], based["description"], "secrets" in based) == (
        "base", "The base image", False)
    assert outline_text(based).startswith("TARGET:      base\nDESCRIPTION: The base image\n\n")
    with pytest.raises(UsageError, match="target stage 'nope' could not be found"):
        outline(OUTLINED, target="nope")


def test_call_check_ignorestatus_keeps_the_findings_and_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "Dockerfile").write_text("# check=error=true\nFROM scratch\nENV a b\n")
    assert main(["build", "--call", "check", str(tmp_path)]) == 1
    failed = capsys.readouterr()
    assert main(["build", "--call=check,ignorestatus=true", str(tmp_path)]) == 0
    ignored = capsys.readouterr()
    assert "LegacyKeyValueFormat" in failed.out and ignored.out == failed.out
    assert main(["build", "--call=check,format=json", str(tmp_path)]) == 1
    rules = [w["ruleName"] for w in json.loads(capsys.readouterr().out)["warnings"]]
    assert rules == ["LegacyKeyValueFormat"]


def test_builder_url_is_the_endpoint_and_a_repeated_ulimit_keeps_the_last(
        tmp_path: Path) -> None:
    base = {"endpoint": None, "token_file": None, "tls_ca": None}
    found = endpoint_of(argparse.Namespace(builder="tcp://127.0.0.1:8375", **base), {})
    assert found is not None and (found.host, found.port) == ("127.0.0.1", 8375)
    assert endpoint_of(argparse.Namespace(builder="default", **base),
                       {"DOCKYARD_ENDPOINT": "tcp://127.0.0.1:1"}) is None
    with pytest.raises(UsageError, match="--builder and --endpoint name different builders"):
        endpoint_of(argparse.Namespace(builder="tcp://127.0.0.1:1",
                                       **{**base, "endpoint": "tcp://127.0.0.1:2"}), {})
    options = gather_options(_args(["--ulimit", "nofile=10", "--ulimit", "nproc=5",
                                    "--ulimit", "nofile=20:30", str(tmp_path)]), ENV)
    assert options.ulimits == (("nofile", 20, 30), ("nproc", 5, 5))


def test_cgroup_parent_is_refused_where_cgroups_cannot_be_made(tmp_path: Path) -> None:
    with pytest.raises(SolveError, match="--cgroup-parent /ci: this worker cannot create "
                                         "cgroups"):
        check_cgroups("/ci", root=tmp_path)  # no controller there: nothing to write to
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "cgroup.procs").write_text("")
    if os.access(tmp_path / "memory", os.W_OK):
        check_cgroups("/ci", root=tmp_path)
