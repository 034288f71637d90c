"""What every instruction's converter can read: the options of the build, the stage
table, the vertex sink, the warnings, and the build context source."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..._build_request import NamedContext
from ..._errors import DockyardError, UsageError
from ..._graph import SourceOp, Ulimit
from ..._platform import Platform, parse_platform
from ..._reference import parse_reference
from .._ast import CheckWarning, Node
from .._interrupt import checkpoint
from ._expand import NON_ENV_ARGS, Expansion, expand, expand_display
from ._model import ImageResolver
from ._proxy import proxy_environment
from ._state import StageState
from ._vertices import VertexSink

#: The build arg naming the RUN's hostname (BuildKit's dockerui ``keyHostname`` twin).
SANDBOX_HOSTNAME_ARG = "BUILDKIT_SANDBOX_HOSTNAME"
_MAX_HOSTNAME = 64  # Linux's HOST_NAME_MAX


def check_sandbox_hostname(build_args: Mapping[str, str]) -> None:
    """A ``BUILDKIT_SANDBOX_HOSTNAME`` the kernel takes and /etc/hosts can hold."""
    name = build_args.get(SANDBOX_HOSTNAME_ARG, "")
    if len(name.encode()) > _MAX_HOSTNAME or not all(c.isprintable() and not c.isspace()
                                                     for c in name):
        raise UsageError(f"invalid {SANDBOX_HOSTNAME_ARG} {name!r}: a hostname is at most "
                         f"{_MAX_HOSTNAME} bytes, without spaces or control characters",
                         hint=f"pass e.g. --build-arg {SANDBOX_HOSTNAME_ARG}=builder")

# Characters one platform's conversion may produce from variables: every expanded word,
# every vertex name with variables substituted, and every RUN's environment (a stage's
# ENVs are copied into each RUN).  Each word alone is held to shell.MAX_WORD_SIZE (256 KiB);
# this bounds their sum, and so the frontend's memory and time, whatever the number of
# lines: a real Dockerfile produces a few megabytes at most.
MAX_EXPANDED_TOTAL = 128 * 1024 * 1024
_TOTAL_HINT = ("every use of a variable copies its value (and a stage's ENV values are copied "
               "into each RUN): keep large data out of ARG and ENV values, and COPY it in as "
               "a file instead")

_RULE_DOCS = {
    "UndefinedVar": "Variables should be defined before their use",
    "UndefinedArgInFrom": "FROM command must use declared ARGs",
    "WorkdirRelativePath": "Relative workdir without an absolute workdir declared within the "
                           "build can have unexpected results if the base image changes",
}


def rule_url(rule: str) -> str:
    kebab = "".join("-" + c.lower() if c.isupper() else c for c in rule).lstrip("-")
    return f"https://docs.docker.com/go/dockerfile/rule/{kebab}/"


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """The inputs of one build that do not change per platform."""

    filename: str
    escape: str
    build_platform: Platform
    multi_platform: bool
    build_args: Mapping[str, str]
    ignore_patterns: tuple[str, ...]
    resolver: ImageResolver | None
    target: str | None
    ulimits: tuple[Ulimit, ...] = ()  # every RUN's (--ulimit)
    shm_size: int = 0  # every RUN's /dev/shm size in bytes (--shm-size; 0: the default)
    network: str = "default"  # the network of a RUN without --network (the build's --network)
    extra_hosts: tuple[tuple[str, str], ...] = ()  # every RUN's /etc/hosts entries (--add-host)
    cgroup_parent: str = ""  # every RUN's cgroup parent (--cgroup-parent)
    no_cache_filter: tuple[str, ...] = ()  # stages whose steps skip the cache (lowercase)
    # --build-context: familiar name -> the context (scheduler/_build_request.py)
    named_contexts: Mapping[str, NamedContext] = field(default_factory=dict)

    def named_context(self, name: str) -> NamedContext | None:
        """The named context ``name`` (a stage name or an image reference) stands for, as
        BuildKit's dockerui matches them: both in their familiar form, ``:latest``
        dropped (``docker.io/library/alpine:latest`` is ``alpine``)."""
        if not self.named_contexts:
            return None
        return self.named_contexts.get(familiar_context_name(name))


def familiar_context_name(name: str) -> str:
    """``name`` as buildx and BuildKit key named contexts; unchanged when it is no
    reference (then it matches only a context given under that very name)."""
    try:
        return parse_reference(name).familiar().removesuffix(":latest")
    except DockyardError:
        return name


@dataclass(slots=True)
class Conversion:
    """The conversion of the Dockerfile for one target platform.

    ``context_paths``: the context paths the commands read (BuildKit's ctxPaths), gathered
    while converting.  ``follow_paths``: the final list baked into the context source (a
    first pass gathers them; see ``_convert``), None = the whole context.
    """

    options: BuildOptions
    target_platform: Platform
    global_args: dict[str, str]
    sink: VertexSink = field(default_factory=VertexSink)
    warnings: list[CheckWarning] = field(default_factory=list)
    context_paths: set[str] = field(default_factory=set)
    follow_paths: tuple[str, ...] | None = None
    consumed_args: set[str] = field(default_factory=set)
    produced: int = 0  # characters charged so far (see MAX_EXPANDED_TOTAL); never above it
    _context_digest: str | None = None

    @property
    def filename(self) -> str:
        return self.options.filename

    def warn(self, rule: str, message: str, node: Node) -> None:
        self.warnings.append(CheckWarning(
            rule=rule, message=message, filename=self.filename, line=node.start_line,
            column=node.column, description=_RULE_DOCS.get(rule, ""), url=rule_url(rule)))

    def location(self, node: Node) -> str:
        """``node``'s position for its vertices: ``<file>:<line>:<column>`` of its keyword."""
        return f"{self.filename}:{node.start_line}:{node.column}"

    def expand(self, word: str, env: Mapping[str, str], node: Node) -> Expansion:
        checkpoint()
        expansion = expand(word, env, escape=self.options.escape, node=node,
                           filename=self.filename)
        self.charge(len(expansion.result), node, env, expansion.matched)
        return expansion

    def charge(self, size: int, node: Node, env: Mapping[str, str],
               names: Iterable[str]) -> None:
        """Count ``size`` characters made from the variables ``names`` of ``env`` at
        ``node``; past MAX_EXPANDED_TOTAL, the error naming the longest of them."""
        self.produced += size
        if self.produced <= MAX_EXPANDED_TOTAL:
            return
        longest = max(names, key=lambda name: len(env[name]), default=None)
        culprit = f" (${longest} is {len(env[longest])} characters)" if longest else ""
        raise node.error(
            f"the values expanded from variables would pass {MAX_EXPANDED_TOTAL} characters "
            f"in all{culprit}", self.filename, hint=_TOTAL_HINT)

    def expand_in_stage(self, word: str, state: StageState, node: Node) -> str:
        """Expand in a stage's scope, reporting UndefinedVar for unknown names."""
        expansion = self.expand(word, state.env(), node)
        undefined = (name for name in expansion.unmatched
                     if name not in state.args and name not in NON_ENV_ARGS)
        for name in sorted(undefined):
            self.warn("UndefinedVar", f"Usage of undefined variable '${name}'", node)
        return expansion.result

    @property
    def sandbox_hostname(self) -> str:
        """The RUN hostname the ``BUILDKIT_SANDBOX_HOSTNAME`` build arg sets, as BuildKit's
        dockerui reads it ("": the worker's default, ``buildkitsandbox``); checked by
        ``check_sandbox_hostname`` before conversion."""
        return self.options.build_args.get(SANDBOX_HOSTNAME_ARG, "")

    def proxy_env(self, state: StageState) -> tuple[str, ...]:
        """The proxy variables RUN gets beyond its environment: out of the digest."""
        return proxy_environment(self.options.build_args, state.env())

    def target_of(self, state: StageState) -> Platform | None:
        """The target platform the stage's variables name, for ``[linux/amd64->arm64 ...]``
        names (BuildKit's platformFromEnv): TARGETPLATFORM, refined by TARGETOS, TARGETARCH
        and TARGETVARIANT, each only when the stage declared it; parts left unnamed come
        from the stage's own platform.  None when the stage declared none of them."""
        names = ("TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT")
        values = {k: state.vars[k] for k in names if state.vars.get(k)}
        if not values:
            return None
        base = state.platform
        try:
            if "TARGETPLATFORM" in values:
                base = parse_platform(values["TARGETPLATFORM"])
            os_ = values.get("TARGETOS", base.os)
            arch = values.get("TARGETARCH", base.architecture)
            variant = values.get("TARGETVARIANT", base.variant if "TARGETARCH" not in values
                                 else "")
            return parse_platform("/".join(p for p in (os_, arch, variant) if p))
        except DockyardError:
            return None

    def display(self, text: str, env: Mapping[str, str], node: Node) -> str:
        shown = expand_display(text, env, escape=self.options.escape)
        self.charge(len(shown), node, env, ())
        return shown

    def context_source(self) -> str:
        """The digest of the ``local://context`` source vertex."""
        if self._context_digest is None:
            self._context_digest = self.sink.add(
                SourceOp(identifier="local://context", attrs=self._context_attrs()), (),
                "[internal] load build context", None, location="")
        return self._context_digest

    def _context_attrs(self) -> tuple[tuple[str, str], ...]:
        attrs: list[tuple[str, str]] = []
        if self.options.ignore_patterns:
            attrs.append(("exclude", json.dumps(list(self.options.ignore_patterns))))
        if self.follow_paths:
            attrs.append(("followpaths", json.dumps(list(self.follow_paths))))
        return tuple(sorted(attrs))


