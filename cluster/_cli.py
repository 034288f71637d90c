"""The ``dockyard`` command line: a thin argparse layer over the public API.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments
and sets ``run`` to the function doing the work; adding a command is adding one such
function to ``_COMMANDS``.  ``main`` maps errors to exit codes in one place: a
``DockyardError`` prints ``error: <message>`` to stderr and exits 1, Ctrl-C exits 130;
bad input never shows a traceback.

Flags are read as buildx (cobra/pflag) reads them: a long flag is never abbreviated
(``--no-cach`` is unknown, not ``--no-cache``), an unknown flag is named alone
(``unknown flag: --bogus``, whatever follows it), and a command line whose flags cannot
be read (an unknown flag, a flag without its value, a value of the wrong type) exits 125,
the status Docker's CLI (and so ``docker buildx``) gives it; every other error, a flag
value refused later or a failed build, exits 1 as buildx's do.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dockyard.scheduler._errors import DockyardError, FlagError, UsageError
from dockyard.scheduler._platform import Platform

if TYPE_CHECKING:
    from dockyard.scheduler.dockerfile._frontend import FrontendResult

__all__ = ["main"]

_Subparsers = Any  # argparse's _SubParsersAction is private


#: Docker's exit status for a command line whose flags cannot be read (cli.FlagErrorFunc).
FLAG_ERROR_STATUS = 125


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser read as buildx reads flags (see the module docstring): no
    abbreviated long flags; errors are ``UsageError``s (``FlagError`` for the flags it
    cannot read), never ``SystemExit(2)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("exit_on_error", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=self._hint())

    def _hint(self) -> str:
        return f"see '{self.prog} --help'"

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        try:
            parsed, extras = super().parse_known_args(args, namespace)
        except argparse.ArgumentError as err:
            raise self._argument_error(err) from None
        if extras and self._subparsers is None:  # a command's own parser: nothing is left
            self._unrecognized(extras)
        return parsed, extras

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._unrecognized(extras)
        return parsed

    def _argument_error(self, err: argparse.ArgumentError) -> UsageError:
        """A flag argparse could not read (no value, a value not of its type) is a
        ``FlagError``, as pflag's are; a value refused by the command (an invalid choice,
        flags not allowed together) a plain ``UsageError``."""
        action = err.argument_name or ""
        unreadable = err.message.startswith("expected ") or (
            err.message.startswith("invalid ") and not err.message.startswith("invalid choice"))
        if action.startswith("-") and unreadable:
            return FlagError(str(err), hint=self._hint())
        return UsageError(str(err), hint=self._hint())

    def _unrecognized(self, extras: Sequence[str]) -> NoReturn:
        """The first unknown flag alone, as pflag names it; else the extra arguments."""
        for extra in extras:
            if extra.startswith("--"):
                raise FlagError(f"unknown flag: {extra.partition('=')[0]}", hint=self._hint())
            if extra.startswith("-") and extra != "-":
                raise FlagError(f"unknown shorthand flag: {extra[1]!r} in {extra}",
                                hint=self._hint())
        raise UsageError(f"unrecognized arguments: {' '.join(extras)}", hint=self._hint())


def _version() -> str:
    import importlib.metadata  # ~20 ms: only ``--version`` pays it

    try:
        return importlib.metadata.version("dockyard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: argparse's version action, the version looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> NoReturn:
        sys.stdout.write(f"{parser.prog} {_version()}\n")
        parser.exit()


# --- dockyard debug graph --------------------------------------------------------------


def _platforms(values: Sequence[str]) -> list[Platform]:
    from ._build_options import client_platforms  # noqa: PLC0415 -- see _run_frontend

    return client_platforms(values)


def _print_warnings(warnings: Sequence[Any]) -> None:
    for warning in warnings:
        print(f"WARN: {warning.rule} - {warning.message} ({warning.filename}:{warning.line})",
              file=sys.stderr)


def _run_frontend(args: argparse.Namespace, *, check_only: bool = False
                  ) -> tuple[FrontendResult, bytes, str]:
    """Load what ``_add_frontend_arguments`` names (context, Dockerfile, its ignore file,
    platforms, build args, named contexts) and run the frontend; the result, the
    Dockerfile's bytes and its display name."""
    platforms = _platforms(args.platform)
    from ._build_options import parse_build_args  # noqa: PLC0415 -- only for these commands
    from ._context_forms import ContextForms  # noqa: PLC0415

    build_args = dict(parse_build_args(args.build_arg, os.environ))
    with ContextForms() as forms:
        context = forms.main(args.context, args.file, sys.stdin.buffer)
        filename = (os.path.normpath(context.dockerfile_path) if context.dockerfile_path
                    else "Dockerfile")
        from dockyard.cluster._context import default_dockerfile, load_ignore_patterns
        from dockyard.scheduler.dockerfile._frontend import build_graph

        # A Dockerfile from stdin has no <name>.dockerignore of its own: the context's applies.
        directory = context.directory
        patterns, _ = load_ignore_patterns(directory, context.dockerfile_path
                                           or default_dockerfile(directory))
    result = build_graph(context.dockerfile, filename=filename, target=args.target,
                         platforms=platforms, build_args=build_args,
                         ignore_patterns=list(patterns), check_only=check_only,
                         named_contexts=_named_for_graph(args.build_context, platforms[0]))
    return result, context.dockerfile, filename


def _named_for_graph(values: Sequence[str], platform: Platform) -> tuple[Any, ...]:
    """``--build-context`` as ``debug graph``/``--check`` show it: each directory or URL
    as the ``local://context:NAME`` source a build sends it as (a directory's
    ``.dockerignore`` read; a URL not fetched)."""
    from dockyard.scheduler._build_request import NamedContext  # noqa: PLC0415

    from ._context import directory_ignore_patterns  # noqa: PLC0415
    from ._context_forms import is_url, parse_build_context  # noqa: PLC0415

    found = []
    for name, value in dict(parse_build_context(v) for v in values).items():
        if value.startswith("docker-image://"):
            found.append(NamedContext(name, value))
            continue
        if value.startswith("oci-layout://"):
            from ._oci_layout import read_layout  # noqa: PLC0415

            layout = read_layout(value, platform)
            found.append(NamedContext(name, f"oci-layout://context:{name}@{layout.digest}",
                                      (), layout.config))
            continue
        local = not is_url(value) and os.path.isdir(value)
        exclude = tuple(directory_ignore_patterns(Path(value))) if local else ()
        found.append(NamedContext(name, f"local://context:{name}", exclude))
    return tuple(found)


def _run_debug_graph(args: argparse.Namespace) -> int:
    result, _, _ = _run_frontend(args)
    _print_warnings(result.warnings)
    sys.stdout.write(result.graph.to_json_lines())
    sys.stdout.flush()
    return 0


def _add_frontend_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every command that reads a Dockerfile takes (``debug graph``,
    ``build``)."""
    parser.add_argument("-f", "--file", metavar="FILE",
                        help="the Dockerfile (default: CONTEXT/Dockerfile; '-' reads stdin)")
    parser.add_argument("--platform", action="append", default=[], metavar="P[,P]",
                        help="target platform(s), e.g. linux/amd64,linux/arm64")
    parser.add_argument("--target", metavar="STAGE", help="the stage to build")
    parser.add_argument("--build-arg", action="append", default=[], metavar="K[=V]",
                        help="set a build-time variable (K alone: from the environment)")
    parser.add_argument("--build-context", action="append", default=[], metavar="NAME=VALUE",
                        help="a named context for FROM/COPY --from/RUN --mount from=: a "
                             "directory, docker-image://REF or a git/archive URL; "
                             "repeatable")
    parser.add_argument("context", metavar="CONTEXT", help="the build context: a directory, "
                        "'-' (a tar or a Dockerfile on stdin), a git URL "
                        "(URL.git#ref:subdir, git@host:repo.git) or an archive URL")


def _add_debug(subparsers: _Subparsers) -> None:
    debug = subparsers.add_parser("debug", help="inspect what dockyard would do")
    debug_commands = debug.add_subparsers(dest="debug_command", metavar="COMMAND",
                                          required=True)
    graph = debug_commands.add_parser(
        "graph", help="print the build graph of a Dockerfile as JSON lines")
    _add_frontend_arguments(graph)
    graph.set_defaults(run=_run_debug_graph)


# --- dockyard build [--check] ----------------------------------------------------------


def _print_check(warnings: Sequence[Any], data: bytes, spans: dict[int, int]) -> None:
    """The findings as buildx prints a ``--check`` result (to stdout)."""
    from ._render import source_excerpt  # noqa: PLC0415 -- see _report

    lines = data.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    count = len(warnings)
    print("Check complete, " + ("no warnings found." if not count else
          "1 warning has been found!" if count == 1 else f"{count} warnings have been found!"))
    for warning in warnings:
        print(f"\nWARNING: {warning.rule}" + (f" - {warning.url}" if warning.url else ""))
        print(warning.message)
        if 1 <= warning.line <= len(lines):
            print(f"{warning.filename}:{warning.line}")
            end = spans.get(warning.line, warning.line)
            print("\n".join(source_excerpt(lines, warning.line, end)))


def _spans(data: bytes, filename: str) -> dict[int, int]:
    """First line -> last line of each instruction (BuildKit's warning ranges)."""
    from dockyard.scheduler.dockerfile._parser import parse

    return {node.start_line: node.end_line for node in parse(data, filename).nodes}


def _run_build(args: argparse.Namespace) -> int:
    from dockyard.cluster._build_options import (
        builder_endpoint,
        gather_options,
        parse_call,
        refuse_server_flags,
    )

    refuse_server_flags(args)
    call = parse_call(args.call, check=args.check)
    builder_endpoint(args, os.environ)  # an unknown builder is refused whatever the call
    if call.name == "build":
        from dockyard.cluster._build_cmd import run_build

        return run_build(args)
    gather_options(args, os.environ)  # bad flags are refused with --call too, as buildx
    if call.name == "check":
        return _run_check(args, call.format, call.ignore_status)
    return _run_subrequest(args, call.name, call.format)


def _run_check(args: argparse.Namespace, form: str, ignore_status: bool = False) -> int:
    """``--check``/``--call=check``: the findings (text or JSON); a failing check
    (``# check=error=true``) exits 1 unless ``ignorestatus=true``, as buildx."""
    result, data, filename = _run_frontend(args, check_only=True)
    for notice in result.notices:
        print(f"WARN: {notice}", file=sys.stderr)
    if form == "json":
        _print_json(_check_json(result.warnings, data, filename, _spans(data, filename)))
    else:
        _print_check(result.warnings, data, _spans(data, filename))
    sys.stdout.flush()
    if result.check_failure is not None and not ignore_status:
        raise result.check_failure
    return 0


def _check_json(warnings: Sequence[Any], data: bytes, filename: str,
                spans: dict[int, int]) -> dict[str, Any]:
    """The findings in the shape of BuildKit's lint result (``--call=check,format=json``)."""
    import base64  # noqa: PLC0415

    found = [{"ruleName": w.rule, "description": w.description, "url": w.url,
              "detail": w.message,
              "location": {"ranges": [{"start": {"line": w.line},
                                       "end": {"line": spans.get(w.line, w.line)}}]}}
             for w in warnings]
    return {"warnings": found, "sources": [{"fileName": filename, "language": "Dockerfile",
                                            "data": base64.b64encode(data).decode()}]}


def _run_subrequest(args: argparse.Namespace, name: str, form: str) -> int:
    """``--call=targets`` or ``--call=outline``: read the Dockerfile here (as ``--check``
    does), print the answer as buildx does (its text form, or JSON)."""
    from dockyard.scheduler.dockerfile import _subrequests  # noqa: PLC0415

    from ._context_forms import ContextForms  # noqa: PLC0415

    with ContextForms() as forms:  # every context form, as a build reads it
        context = forms.main(args.context, args.file, sys.stdin.buffer)
    data = context.dockerfile
    filename = (os.path.normpath(context.dockerfile_path) if context.dockerfile_path
                else "Dockerfile")
    if name == "targets":
        answer = _subrequests.list_targets(data, filename)
        text = _subrequests.targets_text(answer)
    else:
        answer = _subrequests.outline(data, filename, args.target)
        text = _subrequests.outline_text(answer)
    if form == "json":
        _print_json(answer)
    else:
        sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _print_json(value: Any) -> None:
    import json  # noqa: PLC0415

    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _add_build(subparsers: _Subparsers) -> None:
    build = subparsers.add_parser("build", help="build an image from a Dockerfile")
    _add_frontend_arguments(build)
    build.add_argument("--check", action="store_true",
                       help="only run the build checks (lint rules) and print their findings "
                            "(--call=check)")
    build.add_argument("--call", metavar="build|check|outline|targets[,format=json]",
                       help="what to do: build (default), check (the build checks), outline "
                            "(the target's build args, secrets and ssh) or targets (the "
                            "stages)")
    build.add_argument("-D", "--debug", action="store_true",
                       help="on failure, print the error's details and its stack")
    _add_build_flags(build)
    build.set_defaults(run=_run_build)


def _add_build_flags(build: argparse.ArgumentParser) -> None:
    """buildx's flags (checked by cluster/_build_options.py, not here)."""
    add = build.add_argument
    add("-t", "--tag", action="append", default=[], metavar="NAME",
        help="name (and tag) of the image, repeatable")
    add("--secret", action="append", default=[], metavar="id=ID,src=FILE|env=VAR",
        help="a secret for RUN --mount=type=secret")
    add("--ssh", action="append", default=[], metavar="default|ID=SOCKET",
        help="an ssh agent socket for RUN --mount=type=ssh")
    add("-o", "--output", action="append", default=[], metavar="type=TYPE,dest=PATH",
        help="where the result goes (local, tar, oci, docker, image); repeatable")
    add("--push", action="store_true", help="push the image (--output=type=image,push=true)")
    add("--load", action="store_true", help="load the image into the local Docker engine "
        "(--output=type=docker; DOCKER_HOST, else /var/run/docker.sock)")
    add("--no-cache", action="store_true", help="do not use the cache")
    add("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
        help="a resource limit of every RUN, e.g. nofile=1024:2048; repeatable")
    add("--shm-size", metavar="SIZE", help="the size of every RUN's /dev/shm (e.g. 128m)")
    add("--network", metavar="MODE", help="default, none or host (grants network.host): "
        "the network of every RUN without --network")
    add("--add-host", action="append", default=[], metavar="NAME=IP",
        help="add a line to every RUN's /etc/hosts (NAME=IP or NAME:IP; IPv6 as "
             "NAME=[::1]); repeatable")
    add("--cgroup-parent", metavar="PATH",
        help="run every RUN's container under this cgroup (cgroupfs path)")
    add("--no-cache-filter", action="append", default=[], metavar="STAGE",
        help="do not use the cache for the steps of this stage; repeatable")
    add("--pull", action="store_true",
        help="always resolve base images from their registry again")
    add("--allow", action="append", default=[], metavar="ENTITLEMENT",
        help="grant network.host (RUN --network=host) or security.insecure "
             "(RUN --security=insecure); repeatable")
    add("--cache-to", action="append", default=[],
        metavar="type=registry|inline|s3|local,...",
        help="export the build cache (type=registry,ref=REF,image-manifest=true,"
             "oci-mediatypes=true,compression=gzip|zstd|uncompressed; type=inline; "
             "type=s3,bucket=B,region=R,prefix=P,endpoint_url=URL,use_path_style=true; "
             "type=local,dest=DIR; each with mode=min|max,ignore-error=true); "
             "credentials come from the docker config or boto3's usual chain")
    add("--cache-from", action="append", default=[],
        metavar="REF|type=registry|s3|local,...",
        help="import build cache (IMAGE or type=registry,ref=REF: a registry or inline "
             "cache; type=s3,bucket=B,...; type=local,src=DIR); repeatable")
    add("--progress", default=None, metavar="MODE",
        help="auto, plain, tty, rawjson or quiet (progress goes to stderr; default: "
             "$BUILDKIT_PROGRESS, else auto)")
    add("--metadata-file", metavar="FILE", help="write the build's metadata (JSON) to FILE")
    add("--attest", action="append", default=[], metavar="type=provenance|sbom,...",
        help="attach an attestation (type=provenance,mode=min|max or type=sbom); repeatable")
    add("--provenance", metavar="true|false|mode=min|max",
        help="SLSA provenance (--attest type=provenance); default: none")
    add("--sbom", metavar="true|false", help="an SPDX SBOM (--attest type=sbom); default: none")
    add("-q", "--quiet", action="store_true",
        help="no progress output; print the image id on stdout when the build succeeds")
    add("--iidfile", metavar="FILE", help="write the image id to FILE")
    add("--label", action="append", default=[], metavar="K=V",
        help="a label of the image's config (over a Dockerfile LABEL); repeatable")
    add("--annotation", action="append", default=[], metavar="[TYPE[PLATFORM],...:]K=V",
        help="an annotation of the image; TYPE: manifest (default), index, "
             "manifest-descriptor, index-descriptor; repeatable")
    _add_endpoint_flags(build, "build on")
    # buildx's experimental controller-server flags: read, so that they are refused with
    # their reason (cluster/_build_options.py SERVER_FLAGS) rather than as unknown
    add("--detach", action="store_true", help=argparse.SUPPRESS)
    add("--root", metavar="DIR", help=argparse.SUPPRESS)
    add("--server-config", metavar="FILE", help=argparse.SUPPRESS)


# --- dockyard stop -----------------------------------------------------------------------


def _run_stop(args: argparse.Namespace) -> int:
    from dockyard.cluster._build_cmd import run_stop

    return run_stop(args)


def _add_stop(subparsers: _Subparsers) -> None:
    stop = subparsers.add_parser("stop", help="stop the local dockyard service")
    stop.set_defaults(run=_run_stop)


def _run_metrics(args: argparse.Namespace) -> int:
    from dockyard.cluster._metrics import run_metrics

    return run_metrics(args)


def _add_metrics(subparsers: _Subparsers) -> None:
    metrics = subparsers.add_parser(
        "metrics", help="print the local service's Prometheus metrics (a cluster's "
                        "endpoint serves them at /metrics)")
    metrics.set_defaults(run=_run_metrics)


# --- dockyard serve (cluster/_endpoint.py) -----------------------------------------------


def _run_serve(args: argparse.Namespace) -> int:
    from dockyard.cluster._endpoint import run_serve

    return run_serve(args)


def _add_serve(subparsers: _Subparsers) -> None:
    serve = subparsers.add_parser("serve", help="serve builds to clients over the network")
    add = serve.add_argument
    add("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8375, help="the TCP port (default 8375)")
    add("--ray-address", metavar="auto|HOST:PORT",
        help="attach to this Ray cluster (default: start an embedded Ray head)")
    add("--token-file", metavar="FILE", help="clients must present this token")
    add("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    add("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    add("--insecure", action="store_true",
        help="allow a non-loopback --host without a token")
    add("--advertise-url", metavar="URL",
        help="the URL workers reach this endpoint at (default: the one it serves)")
    add("--slots", type=int, metavar="N",
        help="without --ray-address: vertices the embedded node runs at once (default: CPUs)")
    add("--cache", action="append", default=[], metavar="type=s3,bucket=B,...",
        help="the cluster's shared cache: every build imports from and exports to it")
    add("--ready-arch", metavar="ARCH[,ARCH]", help="/readyz answers 200 only with a worker "
        "of each (default: any worker)")
    add("--history-max-records", metavar="N", help="build records kept (default: "
        "DOCKYARD_HISTORY_MAX_RECORDS, else 50; 0: no limit)")
    add("--history-max-age", metavar="DURATION", help="how long build records are kept "
        "(default: DOCKYARD_HISTORY_MAX_AGE, else 48h; 0: no limit)")
    serve.set_defaults(run=_run_serve)


# --- dockyard history (cluster/_history_cmd.py) ------------------------------------------


def _run_history(args: argparse.Namespace) -> int:
    from dockyard.cluster._history_cmd import run_history

    return run_history(args)


def _add_endpoint_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """The flags naming the service a command talks to: the local one (default) or an
    endpoint; ``what``: what the command does there (``build on``)."""
    add = parser.add_argument
    add("--endpoint", metavar="URL", help=f"{what} the cluster at URL (tcp://HOST:PORT, "
        "http://, https://, unix://PATH; default: DOCKYARD_ENDPOINT, else the local service)")
    add("--builder", metavar="URL|default", help="buildx's builder: an endpoint URL (as "
        "--endpoint) or 'default' for the local service (default: BUILDX_BUILDER)")
    add("--token-file", metavar="FILE", help="the endpoint's token (default: DOCKYARD_TOKEN)")
    add("--tls-ca", metavar="FILE", help="the CA an https endpoint is verified against "
        "(default: DOCKYARD_TLS_CA, else the system store)")


def _add_history(subparsers: _Subparsers) -> None:
    history = subparsers.add_parser("history", help="show and remove build records")
    commands = history.add_subparsers(dest="history_command", metavar="COMMAND",
                                      required=True)
    ls = commands.add_parser("ls", help="list build records")
    ls.add_argument("--format", choices=("table", "json"), default="table",
                    help="a table (default) or JSON")
    ls.add_argument("--no-trunc", action="store_true", help="show the whole build ids")
    inspect = commands.add_parser("inspect", help="show one build record")
    inspect.add_argument("--format", choices=("pretty", "json"), default="pretty",
                         help="text (default) or JSON")
    logs = commands.add_parser("logs", help="print a build's logs")
    logs.add_argument("--progress", choices=("plain", "rawjson"), default="plain",
                      help="as a build's --progress (default plain)")
    logs.add_argument("--vertex", type=int, metavar="N", help="only step #N")
    for parser in (inspect, logs):
        parser.add_argument("build", nargs="?", metavar="BUILD",
                            help="a build id, its prefix, or ^N (default ^0: the latest)")
    rm = commands.add_parser("rm", help="remove build records")
    rm.add_argument("builds", nargs="*", metavar="BUILD", help="build ids, prefixes or ^N")
    rm.add_argument("--all", action="store_true", help="remove every finished build's record")
    for parser in (ls, inspect, logs, rm):
        _add_endpoint_flags(parser, "the records of")
        parser.set_defaults(run=_run_history)


# --- dockyard du / dockyard prune (cluster/_gc_cmd.py) ------------------------------------


def _run_du(args: argparse.Namespace) -> int:
    from dockyard.cluster._gc_cmd import run_du

    return run_du(args)


def _add_du(subparsers: _Subparsers) -> None:
    du = subparsers.add_parser("du", help="show the local store's disk usage by kind")
    du.add_argument("--verbose", action="store_true", help="list the cache records too")
    du.set_defaults(run=_run_du)


def _run_prune(args: argparse.Namespace) -> int:
    from dockyard.cluster._gc_cmd import run_prune

    return run_prune(args)


def _add_prune(subparsers: _Subparsers) -> None:
    prune = subparsers.add_parser("prune", help="remove build cache")
    add = prune.add_argument
    add("--keep-storage", metavar="SIZE", help="keep the most recent cache up to SIZE "
        "(e.g. 20GB)")
    add("--filter", action="append", default=[], metavar="until=DURATION",
        help="remove only what was unused for DURATION (e.g. until=24h)")
    add("--all", action="store_true", help="remove cache mounts too (local store)")
    add("-f", "--force", action="store_true", help="do not ask for confirmation")
    add("--cache", metavar="type=s3,bucket=B,...", help="prune this S3 cache instead of "
        "the local store")
    add("--older-than", metavar="DURATION", help="with --cache: remove only what was "
        "unused for DURATION")
    prune.set_defaults(run=_run_prune)


# --- dockyard node start|stop|ls, dockyard ls (cluster/_node_cmd.py) -----------------------


def _run_node_start(args: argparse.Namespace) -> int:
    from dockyard.cluster._node_cmd import run_node_start

    return run_node_start(args)


def _run_node_stop(args: argparse.Namespace) -> int:
    from dockyard.cluster._node_cmd import run_node_stop

    return run_node_stop(args)


def _run_ls(args: argparse.Namespace) -> int:
    from dockyard.cluster._node_cmd import run_ls

    return run_ls(args)


def _add_ls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", metavar="HOST:PORT", help="the cluster (default: "
                        "DOCKYARD_RAY_ADDRESS, else the cluster of this root's node)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="a table (default) or JSON")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long a worker may take to answer (default 5)")
    parser.set_defaults(run=_run_ls)


def _add_node_start(nodes: _Subparsers) -> None:
    start = nodes.add_parser("start", help="start a Ray node and its worker under "
                             "DOCKYARD_ROOT")
    add = start.add_argument
    where = start.add_mutually_exclusive_group(required=True)
    where.add_argument("--head", action="store_true", help="start a new cluster")
    where.add_argument("--address", metavar="HOST:PORT", help="join the cluster there")
    add("--arch", metavar="ARCH", help="the native arch (amd64 or arm64; default: this "
        "machine's)")
    add("--emulate", metavar="ARCH[,ARCH]", help="arches run through QEMU binfmt")
    add("--slots", type=int, metavar="N", help="vertices run at once (default: CPUs)")
    add("--node-ip", metavar="IP", help="the node's address (default: detected)")
    add("--port", type=int, metavar="P", help="the head's port (default: a free one)")
    add("--object-store-memory", type=int, metavar="BYTES",
        help="the node's Ray object store (default 100 MiB)")
    add("--token-file", metavar="FILE", help="the cluster's token (a joining node; "
        "default: RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
    add("--gc-policy", action="append", default=[], metavar="POLICY",
        help="a garbage-collection policy of the node's store, in order (e.g. "
             "keep-storage=10%%,keep-duration=48h,filter=exec; default: BuildKit's)")
    add("--gc-config", metavar="FILE", help="the policies as a TOML file of "
        "[[gcpolicy]] tables (keepBytes, keepDuration, filters, all)")
    add("--gc-interval", metavar="DURATION", help="how often the node collects (default "
        "10m, and after each build)")
    add("--no-gc", action="store_true", help="never collect the node's store in the "
        "background")
    start.set_defaults(run=_run_node_start)


def _add_node(subparsers: _Subparsers) -> None:
    node = subparsers.add_parser("node", help="manage this machine's node of a cluster")
    nodes = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    _add_node_start(nodes)
    stop = nodes.add_parser("stop", help="stop the node started under DOCKYARD_ROOT")
    stop.set_defaults(run=_run_node_stop)
    _add_ls_arguments(nodes.add_parser("ls", help="list the cluster's workers"))


def _add_ls(subparsers: _Subparsers) -> None:
    _add_ls_arguments(subparsers.add_parser("ls", help="list the cluster's workers "
                                            "(as 'node ls')"))


# --- the parser and main ---------------------------------------------------------------

_COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (_add_debug, _add_build, _add_stop,
                                                          _add_serve, _add_du, _add_prune,
                                                          _add_node, _add_ls, _add_history,
                                                          _add_metrics)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dockyard",
                     description="Build container images on a Ray cluster.")
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       parser_class=_Parser)
    for add_command in _COMMANDS:
        add_command(subparsers)
    return parser


def _report(error: DockyardError, debug: bool = False) -> int:
    from ._render import error_prefix  # noqa: PLC0415 -- the renderer only on an error

    print(f"{error_prefix(error)}{error}", file=sys.stderr)
    if debug:
        _report_debug(error)
    return FLAG_ERROR_STATUS if isinstance(error, FlagError) else 1


def _report_debug(error: DockyardError) -> None:
    """``-D``: the error's class and details, then the stack that raised it here (code
    and positions only: no variable's value, so no secret, is ever printed)."""
    import traceback  # noqa: PLC0415

    details = {key: value for key in ("vertex", "location", "exit_code")
               if (value := getattr(error, key, None)) not in (None, "")}
    print(f"debug: {type(error).__name__}" + "".join(f" {k}={v!r}" for k, v in
                                                     details.items()), file=sys.stderr)
    tail = getattr(error, "output_tail", "")
    if tail:
        print("debug: the process's last output:\n" + tail.rstrip("\n"), file=sys.stderr)
    stack = traceback.format_exception(type(error), error, error.__traceback__)
    print("debug: stack:\n" + "".join(stack).rstrip("\n"), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        status: int = args.run(args)
        return status
    except DockyardError as error:
        return _report(error, bool(getattr(args, "debug", False)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``dockyard debug graph | head``): not an error of ours;
        # point stdout at /dev/null so the interpreter's final flush stays quiet.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives until exit)
        return 141
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
