"""Converter tables: Dockerfile (+ options) -> facts about the graph, and exact errors.

Each case names only the facts it is about; ``_facts`` computes every fact from the graph
so a table row reads as "this Dockerfile gives these vertices / this config / ...".
Semantics from BuildKit's dockerfile2llb (convert.go, convert_copy.go, convert_runmount.go).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dockyard.scheduler._errors import DockerfileError, UsageError
from dockyard.scheduler._graph import (
    Copy,
    ExecOp,
    FileOp,
    Healthcheck,
    HistoryEntry,
    ImageConfig,
    SourceOp,
    Ulimit,
)
from dockyard.scheduler._platform import Platform
from dockyard.scheduler.dockerfile._convert._model import BaseImage
from dockyard.scheduler.dockerfile._frontend import FrontendResult, build_graph

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _resolver(ref: str, platform: Platform) -> BaseImage | None:
    if ref.startswith("docker.io/library/withconfig"):
        return BaseImage(digest="sha256:" + "a" * 64, config=ImageConfig(
            env=("PATH=/bin", "LANG=C"), user="nobody", working_dir="/home", cmd=("sh",),
            on_build=("RUN echo trigger",)))
    if ref.startswith("docker.io/library/withhealth"):  # kept whole, as BuildKit keeps it
        return BaseImage(config=ImageConfig(
            healthcheck=Healthcheck(("CMD-SHELL", "true"), retries=3),
            history=(HistoryEntry("/bin/sh -c #(nop) ADD file:1 in /"),)))
    return None


def _non_default(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value != f.default:
            out[f.name] = value
    return out


def _facts(result: FrontendResult) -> dict[str, Any]:
    graph, warnings = result.graph, result.warnings
    vertices = list(graph.vertices.values())
    execs = [v.op for v in vertices if isinstance(v.op, ExecOp)]
    copies = [a for v in vertices if isinstance(v.op, FileOp) for a in v.op.actions
              if isinstance(a, Copy)]
    image = graph.results[-1]
    facts: dict[str, Any] = {
        "notices": list(result.notices),
        "names": [v.name for v in vertices],
        "locations": [v.location for v in vertices],
        "kinds": [v.op.kind for v in vertices],
        "sources": [v.op.identifier for v in vertices if isinstance(v.op, SourceOp)],
        "source_attrs": [v.op.attrs for v in vertices if isinstance(v.op, SourceOp)],
        "history": [h.created_by for h in image.config.history],
        "layers": [not h.empty_layer for h in image.config.history],
        "warnings": [(w.rule, w.message, w.line) for w in warnings],
        "platforms": [str(r.platform) for r in graph.results],
        "target": image.target,
        "root_is_none": image.root is None,
        "copy": _non_default(copies[-1]) if copies else None,
        "file_ops": [_file_op(v.op) for v in vertices if isinstance(v.op, FileOp)],
    }
    for field in dataclasses.fields(image.config):
        if field.name != "history":
            facts["config." + field.name] = getattr(image.config, field.name)
    if execs:
        last = execs[-1]
        for name in ("args", "env", "cwd", "user", "network", "security", "proxy_env",
                     "hostname", "ulimits", "shm_size"):
            facts["run." + name] = getattr(last, name)
        facts["run.mounts"] = [_non_default(m) for m in last.mounts]
    return facts


def _file_op(op: FileOp) -> list[tuple[str, dict[str, Any]]]:
    return [(a.kind, _non_default(a)) for a in op.actions]


ROOT = {"dest": "/", "input": 0, "output": True}

# (id, Dockerfile, build_graph options, expected facts)
CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("from-image-run", "FROM alpine:3.19\nRUN make\n", {}, {
        "names": ["[1/2] FROM docker.io/library/alpine:3.19", "[2/2] RUN make"],
        "kinds": ["source", "exec"],
        "sources": ["docker-image://docker.io/library/alpine:3.19"],
        "run.args": ("/bin/sh", "-c", "make"), "run.env": (PATH,), "run.cwd": "/",
        "run.mounts": [ROOT],
        "history": ["RUN /bin/sh -c make # buildkit"], "layers": [True],
        "config.env": (PATH,), "target": "stage-0"}),
    ("json-form-run", 'FROM alpine\nRUN ["echo", "hi"]\n', {}, {
        "run.args": ("echo", "hi"),
        "names": ["[1/2] FROM docker.io/library/alpine:latest", '[2/2] RUN ["echo", "hi"]'],
        "history": ["RUN echo hi # buildkit"]}),
    ("shell-instruction", 'FROM alpine\nSHELL ["/bin/bash", "-eo", "pipefail", "-c"]\n'
     "RUN make\nCMD run\n", {}, {
         "run.args": ("/bin/bash", "-eo", "pipefail", "-c", "make"),
         "config.cmd": ("/bin/bash", "-eo", "pipefail", "-c", "run"),
         "config.shell": ("/bin/bash", "-eo", "pipefail", "-c"),
         "history": ["SHELL [/bin/bash -eo pipefail -c]",
                     "RUN /bin/bash -eo pipefail -c make # buildkit",
                     'CMD ["/bin/bash" "-eo" "pipefail" "-c" "run"]']}),
    ("scratch-copy", "FROM scratch\nCOPY a.txt /\n", {}, {
        "kinds": ["source", "file"], "sources": ["local://context"],
        "names": ["[internal] load build context", "[1/1] COPY a.txt /"],
        "copy": {"src": 0, "src_path": "/a.txt", "dest_path": "/"},
        "source_attrs": [(("followpaths", '["a.txt"]'),)],
        "history": ["COPY a.txt / # buildkit"], "config.env": (PATH,)}),
    ("scratch-only", "FROM scratch\nLABEL a=b\n", {}, {
        "kinds": [], "root_is_none": True, "config.labels": (("a", "b"),),
        "history": ["LABEL a=b"], "layers": [False]}),
    ("env-sees-old-values", "FROM alpine\nENV a=1\nENV a=2 b=$a\nRUN x\n", {}, {
        "config.env": (PATH, "a=2", "b=1"), "run.env": (PATH, "a=2", "b=1"),
        "history": ["ENV a=1", "ENV a=2 b=1", "RUN /bin/sh -c x # buildkit"]}),
    ("arg-in-run-env-not-config", "FROM alpine\nARG V=1\nRUN echo $V\n", {}, {
        "run.env": (PATH, "V=1"), "config.env": (PATH,),
        "history": ["ARG V=1", "RUN |1 V=1 /bin/sh -c echo $V # buildkit"],
        "names": ["[1/2] FROM docker.io/library/alpine:latest", "[2/2] RUN echo 1"]}),
    ("arg-after-env-wins", "FROM alpine\nENV A=env\nARG A=arg\nENV C=$A\nRUN x\n", {}, {
        "config.env": (PATH, "A=env", "C=arg"), "run.env": ("A=arg", "C=arg", PATH)}),
    ("env-after-arg-wins", "FROM alpine\nARG A=arg\nENV A=env\nRUN x\n", {}, {
        "config.env": (PATH, "A=env"), "run.env": ("A=env", PATH)}),
    ("build-arg-overrides-default", "FROM alpine\nARG V=1\nRUN x\n",
     {"build_args": {"V": "2"}}, {"run.env": (PATH, "V=2")}),
    ("env-wins-over-arg", "FROM alpine\nARG V=1\nENV V=env\nRUN x\n", {}, {
        "run.env": (PATH, "V=env"), "config.env": (PATH, "V=env")}),
    ("meta-arg-in-from", "ARG TAG=3.18\nFROM alpine:${TAG}\nARG TAG\nRUN echo\n", {}, {
        "sources": ["docker-image://docker.io/library/alpine:3.18"],
        "run.env": (PATH, "TAG=3.18")}),
    ("meta-arg-build-arg", "ARG TAG=3.18\nFROM alpine:$TAG\n", {"build_args": {"TAG": "edge"}},
     {"sources": ["docker-image://docker.io/library/alpine:edge"], "warnings": []}),
    ("meta-arg-not-in-stage-undeclared", "ARG V=1\nFROM alpine\nRUN x\n", {}, {
        "run.env": (PATH,)}),
    ("predefined-args-need-arg", "FROM alpine\nARG TARGETARCH\nRUN x\n",
     {"platforms": [ARM64]}, {"run.env": (PATH, "TARGETARCH=arm64"),
                              "platforms": ["linux/arm64"]}),
    ("predefined-in-from", "FROM --platform=$BUILDPLATFORM alpine\nRUN x\n",
     {"platforms": [ARM64], "build_platform": AMD64}, {
         "names": ["[1/2] FROM docker.io/library/alpine:latest", "[2/2] RUN x"],
         "warnings": []}),
    ("proxy-args-undeclared", "FROM alpine\nRUN x\n",
     {"build_args": {"HTTP_PROXY": "http://p:3128", "no_proxy": "x"}}, {
         "run.env": (PATH,), "warnings": [],
         "run.proxy_env": ("HTTP_PROXY=http://p:3128", "NO_PROXY=x",  # both spellings
                           "http_proxy=http://p:3128", "no_proxy=x"),
         "history": ["RUN /bin/sh -c x # buildkit"], "config.env": (PATH,)}),
    ("proxy-arg-declared", "FROM alpine\nARG HTTP_PROXY\nRUN x\n",
     {"build_args": {"HTTP_PROXY": "http://p"}}, {
         "run.env": ("HTTP_PROXY=http://p", PATH), "run.proxy_env": ("http_proxy=http://p",)}),
    ("proxy-spellings-env-and-empty", "FROM alpine\nENV ftp_proxy=mine\nRUN x\n",
     {"build_args": {"https_proxy": "low", "HTTPS_PROXY": "UP", "FTP_PROXY": "f",
                     "all_proxy": ""}}, {
         "run.proxy_env": ("FTP_PROXY=f", "HTTPS_PROXY=UP", "https_proxy=low")}),
    ("targetstage-unnamed-last-stage", "FROM alpine\nARG TARGETSTAGE\nRUN x\n", {}, {
        "run.env": (PATH, "TARGETSTAGE=default")}),  # testTargetStageNameArg
    ("targetstage-named-last-stage", "FROM alpine AS Final\nARG TARGETSTAGE\nRUN x\n", {}, {
        "run.env": (PATH, "TARGETSTAGE=final")}),
    ("targetstage-of-the-target", "FROM alpine AS base\nARG TARGETSTAGE\nRUN x\n"
     "FROM base AS foo\nFROM scratch\n", {"target": "foo"}, {
         "run.env": (PATH, "TARGETSTAGE=foo")}),
    ("targetstage-undeclared", "FROM alpine\nRUN x\n", {}, {"run.env": (PATH,)}),
    # testDockerfileCheckHostname: the build arg names every RUN's host, and is consumed
    ("sandbox-hostname", "FROM alpine\nRUN x\n",
     {"build_args": {"BUILDKIT_SANDBOX_HOSTNAME": "foo"}}, {
         "run.hostname": "foo", "run.env": (PATH,), "notices": [], "config.env": (PATH,)}),
    ("sandbox-hostname-default", "FROM alpine\nRUN x\n", {}, {"run.hostname": ""}),
    # testDefaultShellAndPath: a Windows stage's shell form is cmd /S /C, with no PATH
    ("windows-default-shell", "FROM scratch\nENTRYPOINT foo bar\nCMD baz\n",
     {"platforms": [Platform("windows", "amd64")]}, {
         "config.entrypoint": ("cmd", "/S", "/C", "foo bar"),
         "config.cmd": ("cmd", "/S", "/C", "baz"),
         "config.env": (), "history": ['ENTRYPOINT ["cmd" "/S" "/C" "foo bar"]',
                                       'CMD ["cmd" "/S" "/C" "baz"]']}),
    # testUlimit, testShmSize: the build's --ulimit and --shm-size reach every RUN
    ("ulimit-and-shm-size", "FROM alpine\nRUN x\n",
     {"ulimits": [Ulimit("nofile", 1062, 1062)], "shm_size": 1 << 27}, {
         "run.ulimits": (Ulimit("nofile", 1062, 1062),), "run.shm_size": 1 << 27}),
    ("no-ulimit-no-shm-size", "FROM alpine\nRUN x\n", {}, {
        "run.ulimits": (), "run.shm_size": 0}),
    # testRunGlobalNetwork: the build's --network is every RUN's unless it names its own
    ("build-network-host", "FROM alpine\nRUN --network=none a\nRUN --network=default b\n",
     {"network": "host"}, {"run.network": "host"}),
    ("build-network-run-flag-wins", "FROM alpine\nRUN --network=none a\n",
     {"network": "host"}, {"run.network": "none"}),
    ("unconsumed-build-arg", "FROM alpine\n", {"build_args": {"NOPE": "1"}}, {
        "warnings": [], "notices": ["One or more build-args [NOPE] were not consumed"]}),
    ("workdir-relative", "FROM alpine\nWORKDIR app\nWORKDIR sub\nRUN x\n", {}, {
        "run.cwd": "/app/sub", "config.working_dir": "/app/sub",
        "warnings": [("WorkdirRelativePath",
                      'Relative workdir "app" can have unexpected results if the base image '
                      "changes", 2)],
        "file_ops": [[("mkdir", {"path": "/app", "make_parents": True})],
                     [("mkdir", {"path": "/app/sub", "make_parents": True})]],
        "history": ["WORKDIR /app", "WORKDIR /app/sub", "RUN /bin/sh -c x # buildkit"]}),
    ("undefined-var", "FROM alpine\nENV A=$NOPE\n", {}, {
        "warnings": [("UndefinedVar", "Usage of undefined variable '$NOPE'", 2)]}),
    ("undefined-arg-in-from", "FROM alpine$SUFFIX\n", {}, {
        "warnings": [("UndefinedArgInFrom", "FROM argument 'SUFFIX' is not declared", 1)],
        "sources": ["docker-image://docker.io/library/alpine:latest"]}),
    ("copy-dest-relative-to-workdir", "FROM alpine\nWORKDIR /app\nCOPY src/ ./dst/\n", {}, {
        "copy": {"src": 1, "src_path": "/src", "dest_path": "/app/dst/"},
        "source_attrs": [(), (("followpaths", '["src"]'),)]}),
    ("copy-flags", "FROM alpine\nCOPY --chown=1:2 --chmod=755 a b /d/\n", {}, {
        "copy": {"src": 1, "src_path": "/b", "dest_path": "/d/", "chown": "1:2",
                 "chmod": "755"},
        "history": ["COPY --chown=1:2 --chmod=755 a b /d/ # buildkit"]}),
    ("copy-exclude-ignore", "FROM alpine\nCOPY --exclude=*.md . /d\n",
     {"ignore_patterns": ["secret"]}, {
         "copy": {"src": 1, "src_path": "/", "dest_path": "/d", "exclude": ("*.md",)},
         "source_attrs": [(), (("exclude", '["secret"]'),)]}),
    ("copy-parents", "FROM alpine\nCOPY --parents a/./b/*.go /d/\n", {}, {
        "copy": {"src": 1, "src_path": "/a", "dest_path": "/d/", "include": ("b/*.go",),
                 "parents": True}}),
    ("copy-link", "FROM alpine\nCOPY --link a /a\n", {}, {
        "kinds": ["source", "source", "file", "merge"],
        "names": ["[1/2] FROM docker.io/library/alpine:latest",
                  "[internal] load build context", "[2/2] COPY --link a /a",
                  "[2/2] LINK COPY --link a /a"],
        "file_ops": [[("copy", {"src": 0, "src_path": "/a", "dest_path": "/a"})]]}),
    ("copy-from-stage-and-prune", "FROM alpine AS unused\nRUN no\n"
     "FROM golang AS Build\nRUN go build\nFROM scratch\nCOPY --from=build /bin/app /app\n", {}, {
         "names": ["[build 1/2] FROM docker.io/library/golang:latest",
                   "[build 2/2] RUN go build", "[stage-2 1/1] COPY --from=build /bin/app /app"],
         "copy": {"src": 0, "src_path": "/bin/app", "dest_path": "/app"}}),
    ("copy-from-index", "FROM alpine\nRUN a\nFROM alpine\nCOPY --from=0 /x /x\n", {}, {
        "kinds": ["source", "exec", "file"]}),
    ("copy-from-image", "FROM scratch\nCOPY --from=nginx /etc/nginx /n\n", {}, {
        "names": ["FROM docker.io/library/nginx:latest",
                  "[stage-0 1/1] COPY --from=nginx /etc/nginx /n"]}),
    ("target-picks-stage", "FROM alpine AS a\nRUN a\nFROM alpine AS b\nRUN b\n",
     {"target": "A"}, {"names": ["[a 1/2] FROM docker.io/library/alpine:latest",
                                 "[a 2/2] RUN a"], "target": "a"}),
    ("stage-as-base", "FROM alpine AS base\nENV X=1\nFROM base\nRUN y\n", {}, {
        "names": ["[base 1/1] FROM docker.io/library/alpine:latest", "[stage-1 1/1] RUN y"],
        "run.env": (PATH, "X=1")}),
    ("add-url", "FROM alpine\nADD --checksum=sha256:abc https://e.com/f.tgz /d/\n", {}, {
        "sources": ["docker-image://docker.io/library/alpine:latest", "https://e.com/f.tgz"],
        "source_attrs": [(), (("checksum", "sha256:abc"), ("filename", "f.tgz"))],
        "copy": {"src": 1, "src_path": "f.tgz", "dest_path": "/d/", "follow_symlinks": False,
                 "copy_dir_contents": False, "allow_wildcard": False,
                 "allow_empty_wildcard": False}}),
    ("add-git", "FROM alpine\nADD https://github.com/o/r.git#v1:sub /src\n", {}, {
        "sources": ["docker-image://docker.io/library/alpine:latest",
                    "git://github.com/o/r.git#v1"],
        "source_attrs": [(), (("fullurl", "https://github.com/o/r.git"), ("subdir", "sub"))]}),
    ("add-local-unpacks", "FROM alpine\nADD a.tar /\n", {}, {
        "copy": {"src": 1, "src_path": "/a.tar", "dest_path": "/", "attempt_unpack": True}}),
    ("run-mounts", "FROM alpine\nRUN --mount=type=cache,target=/root/.cache "
     "--mount=type=secret,id=tok --mount=type=tmpfs,target=/t,size=1m "
     "--mount=type=bind,source=src,target=s --network=none make\n", {}, {
         "run.network": "none",
         "run.mounts": [ROOT, {"dest": "/root/.cache", "type": "cache",
                               "cache_id": "/root/.cache", "sharing": "shared"},
                        {"dest": "/run/secrets/tok", "type": "secret", "secret_id": "tok",
                         "mode": 0o400, "uid": 0, "gid": 0},
                        {"dest": "/t", "type": "tmpfs", "size": 1048576},
                        {"dest": "/s", "input": 1, "selector": "/src", "readonly": True}]}),
    ("run-secret-env-only", "FROM alpine\nRUN --mount=type=secret,id=tok,env=T x\n", {}, {
        "run.mounts": [ROOT, {"dest": "/run/secrets/tok", "type": "secret",
                              "secret_id": "tok", "env_name": "T", "mode": 0o400, "uid": 0,
                              "gid": 0}]}),
    # testSecretAsEnvironWithFileMount: env= and a target give the variable and the file
    ("run-secret-env-and-file", "FROM alpine\n"
     "RUN --mount=type=secret,id=tok,env=T,target=/run/secrets/tok,mode=0440 x\n", {}, {
         "run.mounts": [ROOT, {"dest": "/run/secrets/tok", "type": "secret",
                               "secret_id": "tok", "env_name": "T", "mode": 0o440, "uid": 0,
                               "gid": 0},
                        {"dest": "/run/secrets/tok", "type": "secret", "secret_id": "tok",
                         "mode": 0o440, "uid": 0, "gid": 0}]}),
    # testSecretAsEnviron: the variable a secret sets shows masked in the RUN's name
    ("run-secret-env-masked-in-name", "FROM alpine\nENV SECRET_ENV=foo A=a\n"
     'RUN --mount=type=secret,id=s,env=SECRET_ENV [ "$SECRET_ENV" = "$A" ]\n', {}, {
         "names": ["[1/2] FROM docker.io/library/alpine:latest",
                   '[2/2] RUN --mount=type=secret,id=s,env=SECRET_ENV [ "****" = "a" ]'],
         "run.env": ("A=a", PATH, "SECRET_ENV=foo"),
         "history": ["ENV SECRET_ENV=foo A=a",
                     'RUN /bin/sh -c [ "$SECRET_ENV" = "$A" ] # buildkit']}),
    ("run-ssh-sets-auth-sock", "FROM alpine\nWORKDIR /w\n"
     "RUN --mount=type=ssh,id=gh,target=a.sock --mount=type=ssh ssh-add -l\n", {}, {
         "run.env": (PATH, "SSH_AUTH_SOCK=a.sock"),  # as BuildKit: relative kept
         "run.mounts": [ROOT, {"dest": "/w/a.sock", "type": "ssh", "ssh_id": "gh",
                               "mode": 0o600, "uid": 0, "gid": 0},
                        {"dest": "/run/buildkit/ssh_agent.1", "type": "ssh",
                         "ssh_id": "default", "mode": 0o600, "uid": 0, "gid": 0}]}),
    ("run-ssh-keeps-stage-auth-sock", "FROM alpine\nENV SSH_AUTH_SOCK=/mine\n"
     "RUN --mount=type=ssh x\n", {}, {"run.env": (PATH, "SSH_AUTH_SOCK=/mine")}),
    ("run-without-ssh-has-no-auth-sock", "FROM alpine\nRUN x\n", {}, {"run.env": (PATH,)}),
    ("run-mount-from-stage", "FROM alpine AS b\nRUN b\nFROM alpine\n"
     "RUN --mount=from=b,target=/m,source=/out x\n", {}, {
         "run.mounts": [ROOT, {"dest": "/m", "input": 1, "selector": "/out",
                               "readonly": True}],
         "kinds": ["source", "exec", "exec"]}),
    ("config-instructions", "FROM alpine\nUSER app\nEXPOSE 80 53/udp 8000-8001\n"
     "VOLUME /data\nSTOPSIGNAL SIGKILL\nLABEL x=y\nMAINTAINER me\nONBUILD RUN x\n"
     "ENTRYPOINT [\"e\"]\nHEALTHCHECK --interval=30s CMD curl -f http://x/\n", {}, {
         "config.user": "app",
         "config.exposed_ports": ("53/udp", "80/tcp", "8000/tcp", "8001/tcp"),
         "config.volumes": ("/data",), "config.stop_signal": "SIGKILL",
         "config.on_build": ("RUN x",), "config.entrypoint": ("e",), "config.cmd": None,
         "history": ["USER app", "EXPOSE [53/udp 80/tcp 8000/tcp 8001/tcp]",
                     "VOLUME [/data]", "STOPSIGNAL SIGKILL", "LABEL x=y",
                     "MAINTAINER me", 'ENTRYPOINT ["e"]',
                     "HEALTHCHECK {Test:[CMD-SHELL curl -f http://x/] Interval:30s "
                     "Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}"]}),
    ("entrypoint-keeps-own-cmd", "FROM alpine\nCMD [\"c\"]\nENTRYPOINT [\"e\"]\n", {}, {
        "config.cmd": ("c",), "config.entrypoint": ("e",)}),
    ("onbuild-from-stage", "FROM alpine AS base\nONBUILD RUN trig\nFROM base\nRUN own\n", {}, {
        "names": ["[base 1/1] FROM docker.io/library/alpine:latest",
                  "[stage-1 1/2] ONBUILD RUN trig", "[stage-1 2/2] RUN own"],
        "config.on_build": ()}),
    ("resolver-config", "FROM withconfig\nRUN x\n", {"image_resolver": _resolver}, {
        "sources": ["docker-image://docker.io/library/withconfig:latest@sha256:" + "a" * 64],
        "run.env": ("LANG=C", "PATH=/bin"), "run.user": "nobody", "run.cwd": "/home",
        "names": ["[1/3] FROM docker.io/library/withconfig:latest@sha256:" + "a" * 64,
                  "[2/3] ONBUILD RUN echo trigger", "[3/3] RUN x"],
        "config.cmd": ("sh",), "config.on_build": ()}),
    ("resolver-health-history", "FROM withhealth\nLABEL a=b\n", {"image_resolver": _resolver},
     {"config.healthcheck": Healthcheck(("CMD-SHELL", "true"), retries=3),
      "history": ["/bin/sh -c #(nop) ADD file:1 in /", "LABEL a=b"]}),
    ("heredoc-run", "FROM alpine\nRUN <<EOF\necho hi\nEOF\n", {}, {
        "run.args": ("/bin/sh", "-c", "echo hi\n"),
        "names": ["[1/2] FROM docker.io/library/alpine:latest", "[2/2] RUN <<EOF (echo hi)"]}),
    ("heredoc-copy", "FROM alpine\nCOPY <<EOF /f\nhello\nEOF\n", {}, {
        "file_ops": [[("mkfile", {"path": "/EOF", "data": "hello\n"})],
                     [("copy", {"src": 1, "src_path": "/EOF", "dest_path": "/f",
                                "follow_symlinks": False, "copy_dir_contents": False,
                                "allow_wildcard": False, "allow_empty_wildcard": False})]]}),
    ("heredoc-copy-expands",
     "FROM alpine\nARG x=1\nENV y=2\nCOPY <<EOF /f\n$x \"${y}\" '$x' \\$x\nEOF\n",
     {}, {"file_ops": [[("mkfile", {"path": "/EOF", "data": "1 \"2\" '1' $x\n"})],
                       [("copy", {"src": 1, "src_path": "/EOF", "dest_path": "/f",
                                  "follow_symlinks": False, "copy_dir_contents": False,
                                  "allow_wildcard": False, "allow_empty_wildcard": False})]]}),
    ("heredoc-copy-quoted-delimiter", "FROM alpine\nARG x=1\nCOPY <<'EOF' /f\n$x\nEOF\n", {}, {
        "file_ops": [[("mkfile", {"path": "/EOF", "data": "$x\n"})],
                     [("copy", {"src": 1, "src_path": "/EOF", "dest_path": "/f",
                                "follow_symlinks": False, "copy_dir_contents": False,
                                "allow_wildcard": False, "allow_empty_wildcard": False})]]}),
    ("cross-build-names", "FROM --platform=$BUILDPLATFORM golang AS b\nARG TARGETARCH\n"
     "RUN go build\n", {"platforms": [AMD64, ARM64], "build_platform": AMD64}, {
         "names": ["[linux/amd64 1/2] FROM docker.io/library/golang:latest",
                   "[linux/amd64 2/2] RUN go build",
                   "[linux/amd64->arm64 2/2] RUN go build"]}),
    ("multi-platform", "FROM --platform=$BUILDPLATFORM golang AS b\nRUN go build\n"
     "FROM alpine\nCOPY --from=b /app /app\n",
     {"platforms": [AMD64, ARM64], "build_platform": AMD64}, {
         "platforms": ["linux/amd64", "linux/arm64"],
         "names": ["[linux/amd64 b 1/2] FROM docker.io/library/golang:latest",
                   "[linux/amd64 b 2/2] RUN go build",
                   "[linux/amd64 stage-1 1/2] FROM docker.io/library/alpine:latest",
                   "[linux/amd64 stage-1 2/2] COPY --from=b /app /app",
                   "[linux/arm64 stage-1 1/2] FROM docker.io/library/alpine:latest",
                   "[linux/arm64 stage-1 2/2] COPY --from=b /app /app"]}),
    # Locations: <file>:<line>:<column> of the instruction (the FROM for an image, the
    # first line of a continued one), "" for the context and inline documents; a vertex
    # made twice (two stages, two platforms) keeps the first.
    ("locations", "FROM alpine\n  WORKDIR /app\nCOPY --link a.txt .\nCOPY <<EOF /f\nhi\n"
     "EOF\nRUN <<EOF\n#!/bin/sh\necho\nEOF\nRUN echo \\\n  two\nADD https://e.com/f.tgz /d/\n"
     "ADD https://github.com/o/r.git#v1 /src\n", {"filename": "build/Dockerfile.dev"}, {
         "kinds": ["source", "file", "source", "file", "merge", "file", "file", "file", "exec",
                   "exec", "source", "file", "source", "file"],
         "locations": ["build/Dockerfile.dev:1:1", "build/Dockerfile.dev:2:3", "",
                       "build/Dockerfile.dev:3:1", "build/Dockerfile.dev:3:1", "",
                       "build/Dockerfile.dev:4:1", "", "build/Dockerfile.dev:7:1",
                       "build/Dockerfile.dev:11:1", "build/Dockerfile.dev:13:1",
                       "build/Dockerfile.dev:13:1", "build/Dockerfile.dev:14:1",
                       "build/Dockerfile.dev:14:1"]}),
    ("locations-first-kept", "FROM alpine AS a\nRUN make\nFROM alpine AS b\nRUN make\n"
     "COPY --from=a /x /y\n", {}, {
         "names": ["[a 1/2] FROM docker.io/library/alpine:latest", "[a 2/2] RUN make",
                   "[b 3/3] COPY --from=a /x /y"],
         "locations": ["Dockerfile:1:1", "Dockerfile:2:1", "Dockerfile:5:1"]}),
    ("locations-platforms", "FROM --platform=$BUILDPLATFORM alpine AS tools\nRUN make\n"
     "FROM alpine\nCOPY --from=tools /x /y\n",
     {"platforms": [AMD64, ARM64], "build_platform": AMD64}, {
         "locations": ["Dockerfile:1:1", "Dockerfile:2:1", "Dockerfile:4:1", "Dockerfile:3:1",
                       "Dockerfile:4:1"]}),
    ("locations-image-trigger", "FROM withconfig\nRUN make\n", {"image_resolver": _resolver}, {
        "names": ["[1/3] FROM docker.io/library/withconfig:latest@sha256:" + "a" * 64,
                  "[2/3] ONBUILD RUN echo trigger", "[3/3] RUN make"],
        "locations": ["Dockerfile:1:1", "Dockerfile:1:1", "Dockerfile:2:1"]}),
    ("locations-stage-trigger", "FROM alpine AS base\nONBUILD RUN echo hi\n\nFROM base\n"
     "RUN make\n", {}, {
         "names": ["[base 1/1] FROM docker.io/library/alpine:latest",
                   "[stage-1 1/2] ONBUILD RUN echo hi", "[stage-1 2/2] RUN make"],
         "locations": ["Dockerfile:1:1", "Dockerfile:4:1", "Dockerfile:5:1"]}),
]


@pytest.mark.parametrize(("dockerfile", "options", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_convert(dockerfile: str, options: dict[str, Any], expected: dict[str, Any]) -> None:
    options = {"platforms": [AMD64], "build_platform": AMD64, **options}
    result = build_graph(dockerfile.encode(), **options)
    facts = _facts(result)
    assert {k: facts[k] for k in expected} == expected


# (id, Dockerfile, options, location, message)
ERRORS: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("empty", "", {}, "Dockerfile:1:1", "the Dockerfile cannot be empty"),
    ("no-stage", "ARG A\n", {}, "Dockerfile:1:1", "dockerfile contains no stages to build"),
    ("target-missing", "FROM alpine AS a\n", {"target": "b"}, "Dockerfile:1:1",
     'target stage "b" could not be found (did you mean a?)'),
    ("target-typo", "FROM alpine AS build\nFROM scratch\n", {"target": "bulid"},
     "Dockerfile:1:1", 'target stage "bulid" could not be found (did you mean build?)'),
    ("target-nothing-near", "FROM alpine AS build\n", {"target": "release"},
     "Dockerfile:1:1", 'target stage "release" could not be found'),
    ("blank-base", "FROM $NOPE\n", {}, "Dockerfile:1:6", "base name ($NOPE) should not be blank"),
    ("bad-reference", "FROM Alpine\n", {}, "Dockerfile:1:6",
     'failed to parse stage name "Alpine": invalid reference format \'Alpine\': repository '
     "name (library/Alpine) must be lowercase"),
    ("copy-from-later", "FROM alpine AS first\nCOPY --from=later /a /a\n"
     "FROM alpine AS later\nFROM first\n", {}, "Dockerfile:2:13",
     'cannot copy from stage "later", it needs to be defined before current stage "first"'),
    ("copy-from-variable", "ARG S=x\nFROM alpine\nCOPY --from=$S /a /a\n", {},
     "Dockerfile:3:6", "variable expansion is not supported for --from, define a new stage "
     "with FROM using ARG from global scope as a workaround"),
    ("copy-url", "FROM alpine\nCOPY https://e.com/f /f\n", {}, "Dockerfile:2:1",
     "source can't be a URL for COPY"),
    ("bad-chmod", "FROM alpine\nCOPY --chmod=999 a /b\n", {}, "Dockerfile:2:6",
     "invalid chmod parameter: '999'. it should be octal string and between 0 and 07777"),
    ("bad-signal", "FROM alpine\nSTOPSIGNAL SIGNOPE\n", {}, "Dockerfile:2:12",
     "Invalid signal: SIGNOPE"),
    ("bad-platform", "FROM --platform=linux/a/b/c/d alpine\n", {}, "Dockerfile:1:17",
     "failed to parse platform linux/a/b/c/d"),
    ("expansion-error", "FROM alpine\nENV A=${B:?required}\n", {}, "Dockerfile:2:7",
     'failed to process "${B:?required}": B: required'),
    # BuildKit passes a NUL byte to the runtime (the RUN fails: exec: invalid argument)
    ("run-nul-shell-form", "FROM alpine\nRUN echo a\0b\n", {}, "Dockerfile:2:11",
     "RUN holds a NUL byte, which a command line cannot carry"),
    ("run-nul-exec-form", 'FROM alpine\nRUN ["echo", "a\0b"]\n', {}, "Dockerfile:2:16",
     "RUN holds a NUL byte, which a command line cannot carry"),
    ("run-nul-continued", "FROM alpine\nRUN echo \\\n  a\0b\n", {}, "Dockerfile:3:4",
     "RUN holds a NUL byte, which a command line cannot carry"),
    ("run-nul-heredoc", "FROM alpine\nRUN <<EOF\necho a\0b\nEOF\n", {}, "Dockerfile:3:7",
     "RUN holds a NUL byte, which a command line cannot carry"),
    ("run-nul-env", "FROM alpine\nENV A=a\0b\nRUN true\n", {}, "Dockerfile:3:1",
     "RUN's environment variable A holds a NUL byte"),
]


@pytest.mark.parametrize(("dockerfile", "options", "location", "message"),
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(dockerfile: str, options: dict[str, Any], location: str, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        build_graph(dockerfile.encode(), platforms=[AMD64], build_platform=AMD64, **options)
    assert (caught.value.location, caught.value.message[:len(message)]) == (location, message)


@pytest.mark.parametrize("name", ["has space", "a\nb", "x" * 65, "é" * 33])
def test_a_bad_sandbox_hostname_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="invalid BUILDKIT_SANDBOX_HOSTNAME"):
        build_graph(b"FROM alpine\nRUN x\n", platforms=[AMD64],
                    build_args={"BUILDKIT_SANDBOX_HOSTNAME": name})


def test_same_input_same_digests() -> None:
    text = b"FROM alpine\nARG V\nCOPY . /src\nRUN --mount=type=cache,target=/c make\n"
    first = build_graph(text, platforms=[ARM64], build_args={"V": "1"})
    second = build_graph(text, platforms=[ARM64], build_args={"V": "1"})
    assert first.graph.to_msgpack() == second.graph.to_msgpack()


def test_context_vertex_shared_across_platforms() -> None:
    result = build_graph(b"FROM alpine\nCOPY . /\n", platforms=[AMD64, ARM64])
    contexts = [v for v in result.graph.vertices.values()
                if isinstance(v.op, SourceOp) and v.op.identifier == "local://context"]
    assert len(contexts) == 1 and len(result.graph.results) == 2
