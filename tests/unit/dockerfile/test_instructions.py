"""The instruction layer: Dockerfile text -> typed commands, as BuildKit's
frontend/dockerfile/instructions reads it.  Every table is input -> expected; error texts
are BuildKit's (parse.go, bflag.go, commands_runmount.go, commands_runnetwork.go,
commands_runsecurity.go, convert_copy.go for --chmod)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler.dockerfile._ast import Directives, Heredoc, Node, ParseResult
from dockyard.scheduler.dockerfile._instructions import (
    AddCommand,
    ArgCommand,
    ArgSpec,
    CmdCommand,
    Command,
    CopyCommand,
    Dockerfile,
    EntrypointCommand,
    EnvCommand,
    ExposeCommand,
    FromCommand,
    HealthcheckCommand,
    HealthConfig,
    KeyValue,
    LabelCommand,
    MaintainerCommand,
    Mount,
    OnbuildCommand,
    RunCommand,
    ShellCommand,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
    WorkdirCommand,
    parse_command,
    parse_dockerfile,
)
from dockyard.scheduler.dockerfile._parser import parse

S = 10**9
MS = 10**6


def command(text: str) -> Command:
    """The typed command of the last instruction of ``text``."""
    result = parse(text, "Dockerfile")
    return parse_command(result.nodes[-1], "Dockerfile")


def fields(cmd: Command, keys: dict[str, Any]) -> dict[str, Any]:
    return {key: getattr(cmd, key) for key in keys}


# (Dockerfile snippet, command class, expected fields)
CASES: list[tuple[str, type[Command], dict[str, Any]]] = [
    # FROM
    ("FROM alpine", FromCommand, {"base_name": "alpine", "stage_name": None}),
    ("FROM alpine AS Build", FromCommand,
     {"base_name": "alpine", "stage_name": "build", "original_name": "Build"}),
    ("from alpine as b-1.x_y", FromCommand, {"stage_name": "b-1.x_y"}),
    ("FROM --platform=$BUILDPLATFORM golang AS b", FromCommand,
     {"platform": "$BUILDPLATFORM", "base_name": "golang"}),
    ("FROM --platform=linux/arm64 ${IMG}", FromCommand,
     {"platform": "linux/arm64", "base_name": "${IMG}"}),
    # RUN: forms, heredocs, flags
    ("RUN echo hi", RunCommand,
     {"cmd_line": ("echo hi",), "prepend_shell": True, "mounts": (), "network": "default",
      "security": "sandbox"}),
    ('RUN ["echo", "hi"]', RunCommand, {"cmd_line": ("echo", "hi"), "prepend_shell": False}),
    ("RUN []", RunCommand, {"cmd_line": (), "prepend_shell": False}),
    ("RUN <<EOF\necho hi\nEOF", RunCommand,
     {"cmd_line": ("<<EOF",), "files": (Heredoc("EOF", "echo hi\n"),)}),
    ("RUN --network=none make", RunCommand, {"network": "none", "cmd_line": ("make",)}),
    ("RUN --network=host make", RunCommand, {"network": "host"}),
    ("RUN --network=default make", RunCommand, {"network": "default"}),
    ("RUN --security=insecure make", RunCommand, {"security": "insecure"}),
    ("RUN --security=sandbox make", RunCommand, {"security": "sandbox"}),
    ("RUN --device=vendor/gpu=0 --device=x,required make", RunCommand,
     {"devices": ("vendor/gpu=0", "x,required")}),
    # RUN --mount: defaults per type
    ("RUN --mount=target=/src make", RunCommand,
     {"mounts": (Mount("bind", target="/src", read_only=True),)}),
    ("RUN --mount=type=bind,source=a,target=/src,from=build,rw make", RunCommand,
     {"mounts": (Mount("bind", target="/src", source="a", from_="build", read_only=False),)}),
    ("RUN --mount=type=BIND,src=a,dst=/d,ro=false make", RunCommand,
     {"mounts": (Mount("bind", target="/d", source="a", read_only=False),)}),
    ("RUN --mount=type=bind,destination=/d,readonly make", RunCommand,
     {"mounts": (Mount("bind", target="/d", read_only=True),)}),
    ("RUN --mount=type=bind,target=/d,readwrite=true make", RunCommand,
     {"mounts": (Mount("bind", target="/d", read_only=False),)}),
    ("RUN --mount=type=cache,target=/root/.cache make", RunCommand,
     {"mounts": (Mount("cache", target="/root/.cache", id="/root/.cache"),)}),
    ("RUN --mount=type=cache,target=/c,id=go,sharing=LOCKED,mode=0755,uid=1000,gid=2,ro make",
     RunCommand,
     {"mounts": (Mount("cache", target="/c", id="go", sharing="locked", mode=0o755, uid=1000,
                       gid=2, read_only=True),)}),
    ("RUN --mount=type=cache,target=/c,sharing=private,from=base,source=/s make", RunCommand,
     {"mounts": (Mount("cache", target="/c", id="/c", sharing="private", from_="base",
                       source="/s"),)}),
    ("RUN --mount=type=tmpfs,target=/t make", RunCommand,
     {"mounts": (Mount("tmpfs", target="/t"),)}),
    ("RUN --mount=type=tmpfs,target=/t,size=64m make", RunCommand,
     {"mounts": (Mount("tmpfs", target="/t", size=64 * 1024**2),)}),
    ("RUN --mount=type=tmpfs,target=/t,size=1.5GiB make", RunCommand,
     {"mounts": (Mount("tmpfs", target="/t", size=int(1.5 * 1024**3)),)}),
    ("RUN --mount=type=tmpfs,target=/t,size=100 make", RunCommand,
     {"mounts": (Mount("tmpfs", target="/t", size=100),)}),
    ("RUN --mount=type=secret,id=aws make", RunCommand,
     {"mounts": (Mount("secret", id="aws", target="/run/secrets/aws", read_only=True),)}),
    ("RUN --mount=type=secret,target=/root/.aws/credentials,required make", RunCommand,
     {"mounts": (Mount("secret", id="credentials", target="/root/.aws/credentials",
                       read_only=True, required=True),)}),
    ("RUN --mount=type=secret,source=tok,required=false,mode=0400,uid=1 make", RunCommand,
     {"mounts": (Mount("secret", source="tok", id="tok", target="/run/secrets/tok",
                       read_only=True, mode=0o400, uid=1),)}),
    ("RUN --mount=type=secret,id=TOKEN,env=TOKEN make", RunCommand,
     {"mounts": (Mount("secret", id="TOKEN", env="TOKEN", read_only=True),)}),
    ("RUN --mount=type=ssh --mount=type=ssh,id=gh,required=true make", RunCommand,
     {"mounts": (Mount("ssh", id="default", target="/run/buildkit/ssh_agent.0", read_only=True),
                 Mount("ssh", id="gh", target="/run/buildkit/ssh_agent.1", read_only=True,
                       required=True))}),
    ('RUN --mount=type=bind,\\"source=a,b\\",target=/x make', RunCommand,
     {"mounts": (Mount("bind", source="a,b", target="/x", read_only=True),),
      "mount_specs": ('type=bind,"source=a,b",target=/x',)}),
    ("RUN --mount=type=bind,target=$DIR,source=${SRC} make", RunCommand,
     {"mounts": (Mount("bind", target="$DIR", source="${SRC}", read_only=True),),
      "mount_specs": ("type=bind,target=$DIR,source=${SRC}",)}),
    ("RUN --mount=type=cache,target=/c,from=stage$ make", RunCommand,
     {"mounts": (Mount("cache", target="/c", id="/c", from_="stage$"),)}),
    # CMD / ENTRYPOINT
    ("CMD echo hi", CmdCommand, {"cmd_line": ("echo hi",), "prepend_shell": True}),
    ('CMD ["a", "b"]', CmdCommand, {"cmd_line": ("a", "b"), "prepend_shell": False}),
    ("CMD", CmdCommand, {"cmd_line": (), "prepend_shell": True}),
    ('ENTRYPOINT ["/bin/app"]', EntrypointCommand, {"cmd_line": ("/bin/app",)}),
    ("ENTRYPOINT []", EntrypointCommand, {"cmd_line": (), "prepend_shell": False}),
    ("ENTRYPOINT exec app", EntrypointCommand, {"cmd_line": ("exec app",),
                                                "prepend_shell": True}),
    # SHELL
    ('SHELL ["/bin/bash", "-c"]', ShellCommand, {"shell": ("/bin/bash", "-c")}),
    # ENV / LABEL
    ("ENV a=1 b=\"x y\"", EnvCommand,
     {"env": (KeyValue("a", "1"), KeyValue("b", '"x y"'))}),
    ("ENV legacy v w", EnvCommand, {"env": (KeyValue("legacy", "v w"),)}),
    ("ENV a=", EnvCommand, {"env": (KeyValue("a", ""),)}),
    ('LABEL "com.x"="v 1" b=2', LabelCommand,
     {"labels": (KeyValue('"com.x"', '"v 1"'), KeyValue("b", "2"))}),
    # ARG
    ("ARG a", ArgCommand, {"args": (ArgSpec("a"),)}),
    ("ARG a=1 b c=", ArgCommand, {"args": (ArgSpec("a", "1"), ArgSpec("b"), ArgSpec("c", ""))}),
    ('ARG a="x=y"', ArgCommand, {"args": (ArgSpec("a", '"x=y"'),)}),
    # WORKDIR / USER / MAINTAINER / STOPSIGNAL
    ("WORKDIR /a b", WorkdirCommand, {"path": "/a b"}),
    ("WORKDIR $HOME", WorkdirCommand, {"path": "$HOME"}),
    ("USER app:app", UserCommand, {"user": "app:app"}),
    ("MAINTAINER Jane <j@x>", MaintainerCommand, {"maintainer": "Jane <j@x>"}),
    ("STOPSIGNAL SIGKILL", StopSignalCommand, {"signal": "SIGKILL"}),
    ("STOPSIGNAL --x 9", StopSignalCommand, {"signal": "9"}),
    # EXPOSE / VOLUME
    ("EXPOSE 8080/tcp 53/udp 80", ExposeCommand, {"ports": ("53/udp", "80", "8080/tcp")}),
    ("VOLUME /data /logs", VolumeCommand, {"volumes": ("/data", "/logs")}),
    ('VOLUME ["/data", " /x "]', VolumeCommand, {"volumes": ("/data", "/x")}),
    # HEALTHCHECK
    ("HEALTHCHECK NONE", HealthcheckCommand, {"health": HealthConfig(("NONE",))}),
    ("HEALTHCHECK none", HealthcheckCommand, {"health": HealthConfig(("NONE",))}),
    ("HEALTHCHECK --interval=5s NONE", HealthcheckCommand, {"health": HealthConfig(("NONE",))}),
    ("HEALTHCHECK CMD curl -f http://x/", HealthcheckCommand,
     {"health": HealthConfig(("CMD-SHELL", "curl -f http://x/"))}),
    ('HEALTHCHECK CMD ["curl", "-f"]', HealthcheckCommand,
     {"health": HealthConfig(("CMD", "curl", "-f"))}),
    ("HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=1h --start-interval=2s "
     "--retries=3 CMD true", HealthcheckCommand,
     {"health": HealthConfig(("CMD-SHELL", "true"), interval=90 * S, timeout=500 * MS,
                             start_period=3600 * S, start_interval=2 * S, retries=3)}),
    ("HEALTHCHECK --interval=0 --timeout=0s --retries=0 cmd true", HealthcheckCommand,
     {"health": HealthConfig(("CMD-SHELL", "true"))}),
    ("HEALTHCHECK --interval=1.5s --timeout=1ms --start-period=2h45m CMD true",
     HealthcheckCommand,
     {"health": HealthConfig(("CMD-SHELL", "true"), interval=1500 * MS, timeout=MS,
                             start_period=(2 * 3600 + 45 * 60) * S)}),
    ("HEALTHCHECK --interval=1000us --timeout=1000000ns --start-period=+.5s CMD true",
     HealthcheckCommand,
     {"health": HealthConfig(("CMD-SHELL", "true"), interval=MS, timeout=MS,
                             start_period=500 * MS)}),
    # COPY
    ("COPY a b /dst/", CopyCommand,
     {"sources": ("a", "b"), "dest": "/dst/", "from_": None, "chown": None, "chmod": None,
      "link": False, "parents": False, "exclude": (), "source_contents": ()}),
    ('COPY ["a b", "/d"]', CopyCommand, {"sources": ("a b",), "dest": "/d"}),
    ("COPY --from=build --chown=app:app --chmod=755 --link /out /app", CopyCommand,
     {"from_": "build", "chown": "app:app", "chmod": "755", "link": True}),
    ("COPY --chmod=0644 --link=false a /d", CopyCommand, {"chmod": "0644", "link": False}),
    ("COPY --chmod=u=rwX,go=rX --link=TRUE a /d", CopyCommand,
     {"chmod": "u=rwX,go=rX", "link": True}),
    ("COPY --chmod=a+x a /d", CopyCommand, {"chmod": "a+x"}),
    ("COPY --chmod=$MODE a /d", CopyCommand, {"chmod": "$MODE"}),
    ("COPY --parents --exclude=*.md --exclude=.git ./x/./y /d", CopyCommand,
     {"parents": True, "exclude": ("*.md", ".git")}),
    ("COPY --from=0 /a /b", CopyCommand, {"from_": "0"}),
    ("COPY <<EOF /etc/conf\nk=v\nEOF", CopyCommand,
     {"sources": (), "dest": "/etc/conf", "source_contents": (Heredoc("EOF", "k=v\n"),)}),
    ("COPY <<A <<'B' x /d/\na\nA\n$b\nB", CopyCommand,
     {"sources": ("x",), "source_contents": (Heredoc("A", "a\n"),
                                             Heredoc("B", "$b\n", expand=False))}),
    # ADD
    ("ADD https://x/y.tgz /d", AddCommand,
     {"sources": ("https://x/y.tgz",), "dest": "/d", "unpack": None, "checksum": None,
      "keep_git_dir": False}),
    ("ADD --checksum=sha256:abc --unpack=true --keep-git-dir --chown=1 --chmod=600 "
     "--link --exclude=x u /d", AddCommand,
     {"checksum": "sha256:abc", "unpack": True, "keep_git_dir": True, "chown": "1",
      "chmod": "600", "link": True, "exclude": ("x",)}),
    ("ADD --unpack=false a.tar /d", AddCommand, {"unpack": False}),
    ("ADD --unpack a.tar /d", AddCommand, {"unpack": True}),
    ("ADD git@github.com:a/b.git#main /src", AddCommand,
     {"sources": ("git@github.com:a/b.git#main",)}),
    # ONBUILD
    ("ONBUILD RUN make", OnbuildCommand, {"expression": "RUN make"}),
    ("onbuild   copy . /app", OnbuildCommand, {"expression": "copy . /app"}),
    ("ONBUILD RUN <<EOF\necho hi\nEOF", OnbuildCommand,
     {"expression": "RUN <<EOF\necho hi\nEOF"}),
]


@pytest.mark.parametrize(("text", "kind", "expected"), CASES,
                         ids=[case[0].splitlines()[0] for case in CASES])
def test_command(text: str, kind: type[Command], expected: dict[str, Any]) -> None:
    cmd = command(text)
    assert type(cmd) is kind
    assert fields(cmd, expected) == expected


# (Dockerfile snippet, exact message)
ERRORS: list[tuple[str, str]] = [
    # FROM
    ("FROM", "FROM requires either one or three arguments"),
    ("FROM a AS", "FROM requires either one or three arguments"),
    ("FROM a b c d", "FROM requires either one or three arguments"),
    ("FROM a TO b", "FROM requires either one or three arguments"),
    ("FROM a AS 1st", 'invalid name for build stage: "1st", name can\'t start with a number '
                      "or contain symbols"),
    ("FROM a AS b$c", 'invalid name for build stage: "b$c", name can\'t start with a number '
                      "or contain symbols"),
    ("FROM --pull a", "unknown flag: --pull"),
    ("FROM --platfrom=x a", "unknown flag: --platfrom (did you mean platform?)"),
    ("FROM --platform a", "missing a value on flag: platform"),
    ("FROM --platform=a --platform=b a", "duplicate flag specified: platform"),
    # flags in general
    ("COPY --form=a x y", "unknown flag: --form (did you mean from?)"),
    ("COPY --link=yes a b", "expecting boolean value for flag link, not: yes"),
    ("COPY --link= a b", "missing a value on flag: link"),
    ("COPY --link --link a b", "duplicate flag specified: link"),
    ("COPY --chown a b", "missing a value on flag: chown"),
    ("COPY --exclude a b", "missing a value on flag: exclude"),
    ("ADD --from=x a b", "unknown flag: --from"),
    ("ADD --parents a b", "unknown flag: --parents"),
    ("COPY --checksum=sha256:x a b", "unknown flag: --checksum"),
    ("COPY --keep-git-dir a b", "unknown flag: --keep-git-dir"),
    ("ENV --x=1 a=b", "unknown flag: --x"),
    ("WORKDIR --x /a", "unknown flag: --x"),
    ("RUN --mout=type=bind make", "unknown flag: --mout (did you mean mount?)"),
    ("RUN --network=bridge make", 'invalid network mode "bridge"'),
    ("RUN --network make", "missing a value on flag: network"),
    ("RUN --security=privileged make", 'security "privileged" is not valid'),
    # RUN --mount
    ("RUN --mount=type=bnd,target=/x make", 'unsupported mount type "bnd" (did you mean bind?)'),
    ("RUN --mount=type=volume,target=/x make", 'unsupported mount type "volume"'),
    ("RUN --mount=type=cache,target=/x,bogus=1 make", "unexpected key 'bogus' in 'bogus=1'"),
    ("RUN --mount=type=cache,target=/x,foo=bar make",
     "unexpected key 'foo' in 'foo=bar' (did you mean from?)"),
    ("RUN --mount=type=cache,taget=/x make",
     "unexpected key 'taget' in 'taget=/x' (did you mean target?)"),
    ("RUN --mount=type=cache,target make", "invalid field 'target' must be a key=value pair"),
    ("RUN --mount=type=cache,target=/x,sharing=shard make",
     'unsupported sharing value "shard" (did you mean shared?)'),
    ("RUN --mount=type=cache,target=/x,mode=9 make", "invalid value 9 for mode"),
    ("RUN --mount=type=cache,target=/x,mode=0o755 make", "invalid value 0o755 for mode"),
    ("RUN --mount=type=cache,target=/x,uid=-1 make", "invalid value -1 for uid"),
    ("RUN --mount=type=cache,target=/x,gid=4294967296 make", "invalid value 4294967296 for gid"),
    ("RUN --mount=type=bind,target=/x,mode=0755 make", 'mode not allowed for "bind" type mounts'),
    ("RUN --mount=type=tmpfs,target=/x,uid=0 make", 'uid not allowed for "tmpfs" type mounts'),
    ("RUN --mount=type=bind,target=/x,gid=0 make", 'gid not allowed for "bind" type mounts'),
    ("RUN --mount=type=bind,target=/x,ro=maybe make", "invalid value for ro: maybe"),
    ("RUN --mount=type=bind,target=/x,rw=2 make", "invalid value for rw: 2"),
    ("RUN --mount=type=bind,target=/x,required make",
     "unexpected key 'required' for mount type 'bind'"),
    ("RUN --mount=required,type=secret,id=a make",
     "unexpected key 'required' for mount type 'bind'"),
    ("RUN --mount=type=secret,id=a,required=yes make", "invalid value for required: yes"),
    ("RUN --mount=type=cache,target=/x,size=1m make",
     "unexpected key 'size' for mount type 'cache'"),
    ("RUN --mount=type=tmpfs,target=/x,size=lots make", "invalid value for size: lots"),
    ("RUN --mount=type=tmpfs,target=/x,size=1e3 make", "invalid value for size: 1e3"),
    ("RUN --mount=type=tmpfs,target=/x,size=" + "9" * 40 + " make",
     "invalid value for size: " + "9" * 40),
    ("RUN --mount=type=cache,target=/x,uid=" + "1" * 5000 + " make",
     "invalid value " + "1" * 5000 + " for uid"),
    ("RUN --mount=type=bind,target=/x,sharing=locked make",
     "invalid cache sharing set for bind mount"),
    ("RUN --mount=type=secret,id=a,from=x make", "secret mount should not have a from"),
    ("RUN --mount=type=secret,id=a,sharing=shared make",
     "secret mount should not define sharing"),
    ("RUN --mount=type=secret make", "invalid secret mount. one of source, target required"),
    ("RUN --mount=type=secret,source=a,id=b make", "both source and id can't be set"),
    ("RUN --mount=type=bind,target=/x,from=$STAGE make",
     "'from' doesn't support variable expansion, define alias stage instead"),
    ('RUN --mount=type=bind,"source=a,b",target=/x make',
     "invalid field 'b' must be a key=value pair"),
    ('RUN --mount=type=bind,targ\\"et=/x make',
     'failed to parse csv mounts: bare " in non-quoted field'),
    # COPY / ADD
    ("COPY a", "COPY requires at least two arguments, but only one was provided. Destination "
               "could not be determined"),
    ("ADD a", "ADD requires at least two arguments, but only one was provided. Destination "
              "could not be determined"),
    ("COPY a <<EOF\nx\nEOF", "COPY cannot accept a heredoc as a destination"),
    ("COPY --chmod=64a a b", "invalid chmod parameter: '64a'. it should be octal string and "
                             "between 0 and 07777"),
    ("COPY --chmod=10000 a b", "invalid chmod parameter: '10000'. it should be octal string "
                               "and between 0 and 07777"),
    ("ADD --chmod=789 a b", "invalid chmod parameter: '789'. it should be octal string and "
                            "between 0 and 07777"),
    ("COPY --chmod=u=rwq a b", "invalid chmod parameter: 'u=rwq'. it should be octal string "
                               "and between 0 and 07777"),
    # HEALTHCHECK
    ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
    ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
    ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
    ("HEALTHCHECK RUN x", 'Unknown type "RUN" in HEALTHCHECK (try CMD)'),
    ("HEALTHCHECK --interval=500us CMD x", 'Interval "interval" cannot be less than 1ms'),
    ("HEALTHCHECK --timeout=-1s CMD x", 'Interval "timeout" cannot be less than 1ms'),
    ("HEALTHCHECK --start-period=1ns CMD x", 'Interval "start-period" cannot be less than 1ms'),
    ("HEALTHCHECK --start-interval=0.1ms CMD x",
     'Interval "start-interval" cannot be less than 1ms'),
    ("HEALTHCHECK --interval=5 CMD x", 'time: missing unit in duration "5"'),
    ("HEALTHCHECK --interval=5x CMD x", 'time: unknown unit "x" in duration "5x"'),
    ("HEALTHCHECK --interval=abc CMD x", 'time: invalid duration "abc"'),
    ("HEALTHCHECK --interval=.s CMD x", 'time: invalid duration ".s"'),
    ("HEALTHCHECK --interval=10000000h CMD x", 'time: invalid duration "10000000h"'),
    ("HEALTHCHECK --interval=" + "9" * 50 + "s CMD x",
     'time: invalid duration "' + "9" * 50 + 's"'),
    ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)"),
    ("HEALTHCHECK --retries=x CMD x", 'strconv.ParseInt: parsing "x": invalid syntax'),
    ("HEALTHCHECK --retries=3000000000 CMD x",
     'strconv.ParseInt: parsing "3000000000": value out of range'),
    ("HEALTHCHECK --interval=1s --interval=2s CMD x", "duplicate flag specified: interval"),
    ("HEALTHCHECK --intervall=1s CMD x", "unknown flag: --intervall (did you mean interval?)"),
    # SHELL / ONBUILD / others
    ("SHELL /bin/bash -c", "SHELL requires the arguments to be in JSON form"),
    ("SHELL []", "SHELL requires at least one argument"),
    ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("ONBUILD FROM alpine", "FROM isn't allowed as an ONBUILD trigger"),
    ("ONBUILD maintainer me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("EXPOSE", "EXPOSE requires at least one argument"),
    ("VOLUME", "VOLUME requires at least one argument"),
    ('VOLUME ["/a", " "]', "VOLUME specified can not be an empty string"),
    ("WORKDIR", "WORKDIR requires exactly one argument"),
    ("USER", "USER requires exactly one argument"),
    ("MAINTAINER", "MAINTAINER requires exactly one argument"),
    ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
    ("ARG", "ARG requires at least one argument"),
    ("ARG =x", "ARG names can not be blank"),
    ("ARG a=1 =2", "ARG names can not be blank"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[e[0].splitlines()[0] for e in ERRORS])
def test_error(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        command(text)
    assert info.value.message == message
    assert info.value.filename == "Dockerfile" and info.value.line == 1
    assert info.value.source_line is not None


# (Dockerfile, error line, error column, message) -- errors point at what is wrong
POSITIONS: list[tuple[str, int, int, str]] = [
    ("FROM a\nRUN --network=bad make", 2, 5, 'invalid network mode "bad"'),
    ("FROM a\nCOPY --link \\\n  --chmod=9999 x y", 3, 3,
     "invalid chmod parameter: '9999'. it should be octal string and between 0 and 07777"),
    ("FROM a AS 9x", 1, 11, 'invalid name for build stage: "9x", name can\'t start with a '
                            "number or contain symbols"),
    ("RUN x", 1, 1, "no build stage in current context"),
    ("ARG V=1\nENV a=b\nFROM a", 2, 1, "no build stage in current context"),
    ("FROM a\n  COPY --chown=1 --from=x --frm=y a b", 2, 27,
     "unknown flag: --frm (did you mean from?)"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), POSITIONS)
def test_error_position(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile(parse(text, "Dockerfile"))
    assert (info.value.message, info.value.line, info.value.column) == (message, line, column)
    assert str(info.value).startswith(f"Dockerfile:{line}:{column}: {message}\n")


def test_dockerfile_stages_and_meta_args() -> None:
    text = ("ARG BASE=alpine\nARG TAG\nFROM --platform=$P ${BASE}:$TAG AS Builder\n"
            "RUN make\nARG X\nFROM scratch\nCOPY --from=builder /out /\n")
    dockerfile = parse_dockerfile(parse(text, "df"))
    assert dockerfile.filename == "df"
    assert [a.args for a in dockerfile.meta_args] == [(ArgSpec("BASE", "alpine"),),
                                                      (ArgSpec("TAG"),)]
    first, second = dockerfile.stages
    assert (first.index, first.base_name, first.name, first.original_name, first.platform) == (
        0, "${BASE}:$TAG", "builder", "Builder", "$P")
    assert [type(c) for c in first.commands] == [RunCommand, ArgCommand]
    assert (second.index, second.base_name, second.name, second.platform) == (
        1, "scratch", None, None)
    assert [type(c) for c in second.commands] == [CopyCommand]
    assert first.node.start_line == 3


def test_no_nodes_no_stages() -> None:
    empty = ParseResult("Dockerfile", Directives(), (), ())
    assert parse_dockerfile(empty) == Dockerfile("Dockerfile", (), ())


# Nodes the parser never produces, built by hand: the layer still answers with a
# positioned DockerfileError.  (node, message)
HAND_BUILT: list[tuple[Node, str]] = [
    (Node("env", "ENV", ("", "x"), 1, 1, lines=("ENV =x",)), "ENV names can not be blank"),
    (Node("label", "LABEL", ("a",), 1, 1, lines=("LABEL a",)),
     "Bad input to LABEL, too many arguments"),
    (Node("env", "ENV", (), 1, 1, lines=("ENV",)), "ENV requires at least one argument"),
    (Node("runn", "RUNN", ("x",), 1, 1, lines=("RUNN x",)),
     "unknown instruction: RUNN (did you mean RUN?)"),
    (Node("frobnicate", "frobnicate", (), 1, 1), "unknown instruction: FROBNICATE"),
    (Node("copy", "COPY", ("a", "b"), 1, 1, flags=("-x",)), "arg should start with -- : -x"),
    (Node("onbuild", "ONBUILD", ("",), 1, 1), "ONBUILD requires at least one argument"),
]


@pytest.mark.parametrize(("node", "message"), HAND_BUILT, ids=[h[1] for h in HAND_BUILT])
def test_hand_built_node_error(node: Node, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        parse_command(node, "Dockerfile")
    assert info.value.message == message


# ------------------------------------------------------------------ expansion

ENV = {"A": "1", "DIR": "/srv", "U": "app", "MODE": "0750", "SIGN": "SIGTERM",
       "PORTS": "80 443/tcp", "T": "cache", "SUM": "sha256:ff", "STAGE": "build"}


def fake_word(word: str) -> str:
    """A stand-in for shell.process_word: $NAME and ${NAME}, unset -> ''."""
    if "${BAD" in word:
        raise DockerfileError("syntax error: bad substitution")
    return re.sub(r"\$\{?(\w+)\}?", lambda m: ENV.get(m.group(1), ""), word)


def fake_words(word: str) -> list[str]:
    return fake_word(word).split()


# (Dockerfile snippet, expected fields after expand(fake_word))
EXPANSIONS: list[tuple[str, dict[str, Any]]] = [
    ("ENV $U=$A b=${DIR}/x", {"env": (KeyValue("app", "1"), KeyValue("b", "/srv/x"))}),
    ("LABEL $U=$A", {"labels": (KeyValue("app", "1"),)}),
    ("ARG $U=$A b", {"args": (ArgSpec("$U", "1"), ArgSpec("b"))}),
    ("WORKDIR $DIR/app", {"path": "/srv/app"}),
    ("USER $U:$U", {"user": "app:app"}),
    ("VOLUME $DIR /v$A", {"volumes": ("/srv", "/v1")}),
    ("STOPSIGNAL $SIGN", {"signal": "SIGTERM"}),
    ("EXPOSE $PORTS", {"ports": ("80 443/tcp",)}),
    ("COPY --from=$STAGE --chown=$U --chmod=$MODE --exclude=$A $DIR/a b$A $DIR/",
     {"sources": ("/srv/a", "b1"), "dest": "/srv/", "chown": "app", "chmod": "0750",
      "from_": "$STAGE", "exclude": ("$A",)}),
    ("ADD --checksum=$SUM --chmod=$MODE --chown=$U http://x/$A $DIR",
     {"sources": ("http://x/1",), "dest": "/srv", "checksum": "sha256:ff", "chmod": "0750",
      "chown": "app"}),
    ("RUN --mount=type=$T,target=$DIR,id=x$A,uid=$A echo $A",
     {"mounts": (Mount("cache", target="/srv", id="x1", uid=1),), "cmd_line": ("echo $A",)}),
    ("CMD echo $A", {"cmd_line": ("echo $A",)}),
    ('SHELL ["$A"]', {"shell": ("$A",)}),
    ("HEALTHCHECK CMD echo $A", {"health": HealthConfig(("CMD-SHELL", "echo $A"))}),
    ("ONBUILD RUN echo $A", {"expression": "RUN echo $A"}),
    ("MAINTAINER $U", {"maintainer": "$U"}),
]


@pytest.mark.parametrize(("text", "expected"), EXPANSIONS, ids=[e[0] for e in EXPANSIONS])
def test_expand(text: str, expected: dict[str, Any]) -> None:
    original = command(text)
    expanded = original.expand(fake_word)
    assert fields(expanded, expected) == expected
    assert expanded.node is original.node


def test_expose_expands_with_word_splitting() -> None:
    cmd = command("EXPOSE $PORTS 22")
    assert isinstance(cmd, ExposeCommand)
    # BuildKit sorts the raw words ("$PORTS" < "22"), then expands and splits each
    assert cmd.expand_words(fake_words).ports == ("80", "443/tcp", "22")


def test_copy_from_and_stage_base_expand_separately() -> None:
    cmd = command("COPY --from=$STAGE a b")
    assert isinstance(cmd, CopyCommand)
    assert cmd.expand_from(fake_word).from_ == "build"
    stage = parse_dockerfile(parse("FROM --platform=$A $U:$A", "Dockerfile")).stages[0]
    expanded = stage.expand_base(fake_word)
    assert (expanded.base_name, expanded.platform) == ("app:1", "1")


# (Dockerfile snippet, message) -- checks that can only run after expansion
EXPANSION_ERRORS: list[tuple[str, str]] = [
    ("COPY --chmod=$U a b", "invalid chmod parameter: 'app'. it should be octal string and "
                            "between 0 and 07777"),
    ("RUN --mount=type=$U,target=/x make", 'unsupported mount type "app"'),
    ("RUN --mount=type=cache,target=/x,uid=$U make", "invalid value app for uid"),
    ("RUN --mount=type=bind,target=/x,ro=$U make", "invalid value for ro: app"),
    ("WORKDIR ${BAD}", "syntax error: bad substitution"),
]


@pytest.mark.parametrize(("text", "message"), EXPANSION_ERRORS)
def test_expand_error(text: str, message: str) -> None:
    cmd = command(text)
    with pytest.raises(DockerfileError) as info:
        cmd.expand(fake_word, "ctx/Dockerfile")
    assert (info.value.message, info.value.filename, info.value.line) == (
        message, "ctx/Dockerfile", 1)
    assert info.value.source_line == text
