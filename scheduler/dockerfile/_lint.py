"""Build checks: BuildKit's Dockerfile lint rules that need no execution, and ``# check=``.

One small function per rule reads the parse result or the typed Dockerfile and yields
``CheckWarning``s with BuildKit's rule name, description, message text and documentation
URL (``frontend/dockerfile/linter/ruleset.go``), positioned as BuildKit positions them:
at the instruction (its first line and keyword column), except NoEmptyContinuation (the
last line of the continued instruction) and MultipleInstructionsDisallowed (the earlier,
ignored instruction).  The converter's own findings (UndefinedVar, UndefinedArgInFrom,
WorkdirRelativePath) come in as ``extra`` and go through the same filter.

Which stages a rule sees follows BuildKit: rules of the parse step (casing, stage names,
MAINTAINER, empty continuations, definition descriptions, FROM checks) see every stage;
rules of the dispatch step (JSONArgsRecommended, LegacyKeyValueFormat,
SecretsUsedInArgOrEnv, ExposeProtoCasing, MultipleInstructionsDisallowed) see the stages
the build dispatches: those the target needs, or all of them for a lint without target.

``# check=skip=A,B;error=true;experimental=C`` (or ``skip=all``/``experimental=all``) is
read as BuildKit's ParseLintOptions reads it; the ``BUILDKIT_DOCKERFILE_CHECK`` build arg,
when given, replaces the directive entirely.  Experimental rules run only when named;
``skip`` never applies to them.  With ``error=true`` any finding fails the build.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from .._errors import DockerfileError, DockyardError, UsageError
from .._platform import Platform, default_platform, parse_platform
from .._reference import parse_reference
from ._ast import CheckWarning, Node, ParseResult
from ._instructions import (
    ArgCommand,
    CmdCommand,
    Command,
    CopyCommand,
    Dockerfile,
    EntrypointCommand,
    EnvCommand,
    ExposeCommand,
    HealthcheckCommand,
    LabelCommand,
    RunCommand,
    ShellCommand,
    Stage,
)
from ._interrupt import checkpoint
from .shell import Lexer

__all__ = ["CHECK_BUILD_ARG", "RULES", "CheckConfig", "CheckReport", "Rule", "check_config",
           "dispatched_stages", "lint", "run_checks"]

CHECK_BUILD_ARG = "BUILDKIT_DOCKERFILE_CHECK"
_DOCS = "https://docs.docker.com/go/dockerfile/rule/"


@dataclass(frozen=True, slots=True)
class Rule:
    """One BuildKit build check: its name, one-line description, and whether it is
    experimental (off unless ``experimental=`` names it)."""

    name: str
    description: str
    experimental: bool = False

    @property
    def url(self) -> str:
        kebab = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", self.name)
        return _DOCS + kebab.lower() + "/"


RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("StageNameCasing", "Stage names should be lowercase"),
    Rule("FromAsCasing", "The 'as' keyword should match the case of the 'from' keyword"),
    Rule("NoEmptyContinuation",
         "Empty continuation lines will become errors in a future release"),
    Rule("ConsistentInstructionCasing", "All commands within the Dockerfile should use the "
         "same casing (either upper or lower)"),
    Rule("DuplicateStageName", "Stage names should be unique"),
    Rule("ReservedStageName", "Reserved words should not be used as stage names"),
    Rule("JSONArgsRecommended", "JSON arguments recommended for ENTRYPOINT/CMD to prevent "
         "unintended behavior related to OS signals"),
    Rule("MaintainerDeprecated", "The MAINTAINER instruction is deprecated, use a label "
         "instead to define an image author"),
    Rule("UndefinedArgInFrom", "FROM command must use declared ARGs"),
    Rule("WorkdirRelativePath", "Relative workdir without an absolute workdir declared within "
         "the build can have unexpected results if the base image changes"),
    Rule("UndefinedVar", "Variables should be defined before their use"),
    Rule("MultipleInstructionsDisallowed", "Multiple instructions of the same type should not "
         "be used in the same stage"),
    Rule("LegacyKeyValueFormat",
         "Legacy key/value format with whitespace separator should not be used"),
    Rule("RedundantTargetPlatform", "Setting platform to predefined $TARGETPLATFORM in FROM "
         "is redundant as this is the default behavior"),
    Rule("SecretsUsedInArgOrEnv",
         "Sensitive data should not be used in the ARG or ENV commands"),
    Rule("InvalidDefaultArgInFrom",
         "Default value for global ARG results in an empty or invalid base image name"),
    Rule("FromPlatformFlagConstDisallowed",
         "FROM --platform flag should not use a constant value"),
    Rule("ExposeProtoCasing", "Protocol in EXPOSE instruction should be lowercase"),
    Rule("InvalidDefinitionDescription", "Comment for build stage or argument should follow "
         "the format: `# <arg/stage name> <description>`. If this is not intended to be a "
         "description comment, add an empty line or comment between the instruction and "
         "the comment.", experimental=True),
)}


# ----------------------------------------------------------------------- configuration

@dataclass(frozen=True, slots=True)
class CheckConfig:
    """What ``# check=`` (or the BUILDKIT_DOCKERFILE_CHECK build arg) asked for."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False
    experimental: frozenset[str] = frozenset()
    experimental_all: bool = False

    def runs(self, rule_name: str) -> bool:
        """Whether findings of ``rule_name`` are reported (unknown names: as a normal rule)."""
        rule = RULES.get(rule_name)
        if rule is not None and rule.experimental:
            return self.experimental_all or rule_name in self.experimental
        return not self.skip_all and rule_name not in self.skip


class _BadOption(ValueError):
    """Internal: a ``# check=`` value BuildKit rejects; the message is BuildKit's.  Never
    leaves this module: ``check_config`` turns it into a positioned error."""


_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _go_quote(text: str) -> str:
    special = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(special.get(ch, ch) if ch.isprintable() or ch in special
                         else f"\\x{ord(ch):02x}" if ord(ch) < 0x80 else f"\\u{ord(ch):04x}"
                         for ch in text) + '"'


def _rule_list(value: str) -> tuple[bool, frozenset[str]]:
    value = value.strip()
    if value == "all":
        return True, frozenset()
    return False, frozenset(name.strip() for name in value.split(","))


def _go_bool(part: str, value: str) -> bool:
    value = value.strip()
    if value in _GO_TRUE or value in _GO_FALSE:
        return value in _GO_TRUE
    raise _BadOption(f"failed to parse check option {_go_quote(part)}: strconv.ParseBool: "
                     f"parsing {_go_quote(value)}: invalid syntax")


def _parse_options(text: str) -> CheckConfig:
    """``skip=A,B;error=true;experimental=C`` -> CheckConfig, as BuildKit's ParseLintOptions
    reads it (at most three ``;``-parts; the last keeps any further ``;``)."""
    skip: tuple[bool, frozenset[str]] = (False, frozenset())
    experimental = skip
    error = False
    text = text.strip()
    for part in text.split(";", 2) if text else ():
        key, equals, value = part.partition("=")
        if not equals:
            raise _BadOption(f"invalid check option {_go_quote(part)}")
        key = key.strip()
        if key == "skip":
            skip = _rule_list(value)
        elif key == "experimental":
            experimental = _rule_list(value)
        elif key == "error":
            error = _go_bool(part, value)
        else:
            raise _BadOption(f"invalid check option {_go_quote(key)}")
    return CheckConfig(skip=skip[1], skip_all=skip[0], error=error,
                       experimental=experimental[1], experimental_all=experimental[0])


def check_config(parsed: ParseResult, build_args: Mapping[str, str] | None = None
                 ) -> CheckConfig:
    """The check configuration of a build: the BUILDKIT_DOCKERFILE_CHECK build arg when
    given (a bad value is a ``UsageError``), else the ``# check=`` directive (a bad value is
    a ``DockerfileError`` at the directive)."""
    if build_args and CHECK_BUILD_ARG in build_args:
        try:
            return _parse_options(build_args[CHECK_BUILD_ARG])
        except _BadOption as exc:
            raise UsageError(f"failed to parse build-arg:{CHECK_BUILD_ARG}: {exc}") from None
    text = parsed.directives.check
    if text is None:
        return CheckConfig()
    try:
        return _parse_options(text)
    except _BadOption as exc:
        line = parsed.directives.lines.get("check", 1)
        source = parsed.source_lines[line - 1] if line <= len(parsed.source_lines) else None
        raise DockerfileError(f"failed to parse check options: {exc}", filename=parsed.filename,
                              line=line, source_line=source) from None


# ----------------------------------------------------------------------------- helpers

def _warning(rule: str, message: str, filename: str, line: int, column: int = 1
             ) -> CheckWarning:
    known = RULES[rule]
    return CheckWarning(rule=rule, message=message, filename=filename, line=line,
                        column=column, description=known.description, url=known.url)


def _at(rule: str, message: str, node: Node, filename: str) -> CheckWarning:
    return _warning(rule, message, filename, node.start_line, node.column)


def _commands(stages: Iterable[Stage], kind: type[Command] | tuple[type[Command], ...]
              ) -> Iterator[Command]:
    for stage in stages:
        yield from (command for command in stage.commands if isinstance(command, kind))


def _lower(text: str) -> bool:
    return text == text.lower()


def _upper(text: str) -> bool:
    return text == text.upper()


# ------------------------------------------------------------- rules of the parse step

def _stage_name_casing(df: Dockerfile) -> Iterator[CheckWarning]:
    for stage in df.stages:
        written = stage.original_name
        if written is not None and not _lower(written):
            yield _at("StageNameCasing", f"Stage name '{written}' should be lowercase",
                      stage.node, df.filename)


def _from_as_casing(df: Dockerfile) -> Iterator[CheckWarning]:
    for stage in df.stages:
        keyword, args = stage.node.keyword, stage.node.args
        if len(args) < 3 or not (_lower(keyword) or _upper(keyword)):
            continue
        if (_lower(args[1]) if _lower(keyword) else _upper(args[1])):
            continue
        yield _at("FromAsCasing", f"'{args[1]}' and '{keyword}' keywords' casing do not match",
                  stage.node, df.filename)


def _logical_end(node: Node) -> int:
    """The last line of the instruction itself, heredoc bodies excluded."""
    body = sum(doc.content.count("\n") + 1 for doc in node.heredocs)
    return node.end_line - body


def _no_empty_continuation(parsed: ParseResult) -> Iterator[CheckWarning]:
    for node in parsed.nodes:
        if node.empty_continuation_lines:
            yield _warning("NoEmptyContinuation", "Empty continuation line", parsed.filename,
                           _logical_end(node))


def _consistent_casing(df: Dockerfile) -> Iterator[CheckWarning]:
    nodes = [node for stage in df.stages
             for node in (stage.node, *(command.node for command in stage.commands))]
    consistent = [node.keyword for node in nodes if _lower(node.keyword) or _upper(node.keyword)]
    lower = sum(1 for keyword in consistent if _lower(keyword))
    majority_lower = lower > len(consistent) - lower
    for node in nodes:
        if majority_lower and not _lower(node.keyword):
            casing = "lowercase"
        elif not majority_lower and not _upper(node.keyword):
            casing = "uppercase"
        else:
            continue
        yield _at("ConsistentInstructionCasing", f"Command '{node.keyword}' should match the "
                  f"case of the command majority ({casing})", node, df.filename)


_RESERVED_STAGE_NAMES = ("context", "scratch")


def _stage_names(df: Dockerfile) -> Iterator[CheckWarning]:
    seen: set[str] = set()
    for stage in df.stages:
        if not stage.name:
            continue
        if stage.name in _RESERVED_STAGE_NAMES:
            yield _at("ReservedStageName", "Stage name should not use the same name as "
                      f"reserved stage {_go_quote(stage.name)}", stage.node, df.filename)
        if stage.name in seen:
            yield _at("DuplicateStageName", f"Duplicate stage name {_go_quote(stage.name)}, "
                      "stage names should be unique", stage.node, df.filename)
        seen.add(stage.name)


def _maintainer(parsed: ParseResult) -> Iterator[CheckWarning]:
    for node in parsed.nodes:
        if node.instruction == "maintainer":
            yield _at("MaintainerDeprecated",
                      "Maintainer instruction is deprecated in favor of using label", node,
                      parsed.filename)


def _definition_description(df: Dockerfile) -> Iterator[CheckWarning]:
    definitions: list[tuple[str, Node, list[str]]] = [
        ("ARG", arg.node, [spec.key for spec in arg.args]) for arg in df.meta_args]
    for stage in df.stages:
        if stage.name:
            definitions.append(("FROM", stage.node, [stage.name]))
        definitions += [("ARG", arg.node, [spec.key for spec in arg.args])
                        for arg in _commands([stage], ArgCommand)
                        if isinstance(arg, ArgCommand)]
    for instruction, node, keys in sorted(definitions, key=lambda d: d[1].start_line):
        if not node.comments or not keys or node.comments[-1].split(" ")[0] in keys:
            continue
        example = keys[0] if len(keys) == 1 else "<arg_key>"
        yield _at("InvalidDefinitionDescription", f"Comment for {instruction} should follow "
                  f"the format: `# {example} <description>`", node, df.filename)


# -------------------------------------------------------- rules about FROM (all stages)

def _global_args(df: Dockerfile, lexer: Lexer, build_args: Mapping[str, str]
                 ) -> dict[str, str] | None:
    """The meta ARGs with their defaults (no --build-arg), over the predefined platform
    args, as BuildKit evaluates them for its FROM checks; None when one fails to expand."""
    here = default_platform()
    env = {f"{kind}{part}": build_args.get(f"{kind}{part}", value)
           for kind in ("BUILD", "TARGET") for part, value in (
               ("PLATFORM", str(here)), ("OS", here.os), ("ARCH", here.architecture),
               ("VARIANT", here.variant))}
    for command in df.meta_args:
        for spec in command.args:
            if spec.default is None:
                continue
            try:
                env[spec.key] = lexer.process_word(spec.default, env)
            except DockerfileError:
                return None
    return env


def _invalid_default_arg(df: Dockerfile, lexer: Lexer, env: Mapping[str, str]
                         ) -> Iterator[CheckWarning]:
    for stage in df.stages:
        try:
            name = lexer.process_word(stage.base_name, env)
        except DockerfileError:
            return
        try:
            parse_reference(name)
        except DockyardError:
            yield _at("InvalidDefaultArgInFrom", f"Default value for ARG {stage.base_name} "
                      "results in empty or invalid base image name", stage.node, df.filename)


def _platform_flag(df: Dockerfile, lexer: Lexer, env: Mapping[str, str]
                   ) -> Iterator[CheckWarning]:
    for stage in df.stages:
        if not stage.platform:
            continue
        try:
            expansion = lexer.expand(stage.platform, env)
        except DockerfileError:
            continue
        if expansion.matched == {"TARGETPLATFORM"} and not expansion.unmatched \
                and expansion.result == env.get("TARGETPLATFORM"):
            yield _at("RedundantTargetPlatform", f"Setting platform to predefined "
                      f"{stage.platform} in FROM is redundant as this is the default behavior",
                      stage.node, df.filename)
        if not expansion.matched and not expansion.unmatched:
            yield from _constant_platform(stage, expansion.result, df.filename)


def _constant_platform(stage: Stage, value: str, filename: str) -> Iterator[CheckWarning]:
    try:
        platform: Platform = parse_platform(value)
    except DockyardError:
        return
    name = stage.name or ""
    if platform.os in name or platform.architecture in name:
        return
    yield _at("FromPlatformFlagConstDisallowed",
              f"FROM --platform flag should not use constant value {_go_quote(value)}",
              stage.node, filename)


# ------------------------------------------------- rules of the dispatch step (per stage)

def _inherits_shell(stage: Stage, by_name: Mapping[str, Stage]) -> bool:
    """Whether the image config of ``stage`` has a SHELL when its commands start: set by a
    SHELL in a stage it is built FROM (images from a registry are taken to have none)."""
    seen: set[int] = set()
    parent = by_name.get(stage.base_name.lower())
    while parent is not None and parent.index < stage.index and parent.index not in seen:
        seen.add(parent.index)
        if any(isinstance(command, ShellCommand) for command in parent.commands):
            return True
        parent = by_name.get(parent.base_name.lower())
    return False


def _json_args(stage: Stage, filename: str, by_name: Mapping[str, Stage]
               ) -> Iterator[CheckWarning]:
    shell = _inherits_shell(stage, by_name)
    for command in stage.commands:
        shell = shell or isinstance(command, ShellCommand)
        if isinstance(command, CmdCommand | EntrypointCommand) and command.prepend_shell \
                and not shell:
            yield _at("JSONArgsRecommended", f"JSON arguments recommended for "
                      f"{command.node.keyword} to prevent unintended behavior related to OS "
                      "signals", command.node, filename)


def _legacy_key_value(stage: Stage, filename: str) -> Iterator[CheckWarning]:
    for command in _commands([stage], (EnvCommand, LabelCommand)):
        node = command.node
        if node.legacy_kv:
            keyword = node.keyword
            yield _at("LegacyKeyValueFormat", f'"{keyword} key=value" should be used instead '
                      f'of legacy "{keyword} key value" format', node, filename)


_SECRET = re.compile(r"(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|"
                     r"secret|token)(?:_|$)", re.IGNORECASE)
_NOT_SECRET = re.compile(r"(?:_|^)(?:public|file|version)(?:_|$)", re.IGNORECASE)


def _secret_keys(command: Command) -> tuple[str, list[str]]:
    if isinstance(command, EnvCommand):
        return "ENV", [pair.key for pair in command.env]
    if isinstance(command, ArgCommand):
        return "ARG", [spec.key for spec in command.args]
    return "", []


def _secrets(stage: Stage, filename: str) -> Iterator[CheckWarning]:
    for command in stage.commands:
        instruction, keys = _secret_keys(command)
        for key in keys:
            if _SECRET.search(key) and not _NOT_SECRET.search(key):
                yield _at("SecretsUsedInArgOrEnv", "Do not use ARG or ENV instructions for "
                          f"sensitive data ({instruction} {_go_quote(key)})", command.node,
                          filename)


def _expose_proto(stage: Stage, filename: str) -> Iterator[CheckWarning]:
    for command in _commands([stage], ExposeCommand):
        assert isinstance(command, ExposeCommand)
        for port in command.ports:
            proto = port.rpartition(":")[2].partition("/")[2]
            if "$" not in port and not _lower(proto):
                yield _at("ExposeProtoCasing", f"Defined protocol '{port}' in EXPOSE "
                          "instruction should be lowercase", command.node, filename)


_ONCE = (CmdCommand, EntrypointCommand, HealthcheckCommand)


def _used_once(stage: Stage, filename: str) -> Iterator[CheckWarning]:
    last: dict[type[Command], Command] = {}
    for command in _commands([stage], _ONCE):
        earlier = last.get(type(command))
        if earlier is not None:
            yield _at("MultipleInstructionsDisallowed", f"Multiple {command.node.keyword} "
                      "instructions should not be used in the same stage because only the "
                      "last one will be used", earlier.node, filename)
        last[type(command)] = command


def _stage_rules(stage: Stage, filename: str, by_name: Mapping[str, Stage]
                 ) -> Iterator[CheckWarning]:
    yield from _json_args(stage, filename, by_name)
    yield from _legacy_key_value(stage, filename)
    yield from _secrets(stage, filename)
    yield from _expose_proto(stage, filename)
    yield from _used_once(stage, filename)


# ------------------------------------------------------------------ dispatched stages

def _by_name(df: Dockerfile) -> dict[str, Stage]:
    table: dict[str, Stage] = {}
    for stage in df.stages:
        if stage.name:
            table[stage.name.lower()] = stage
    return table


def _stage_refs(stage: Stage) -> Iterator[str]:
    yield stage.base_name
    for command in stage.commands:
        if isinstance(command, CopyCommand) and command.from_:
            yield command.from_
        if isinstance(command, RunCommand):
            yield from (mount.from_ for mount in command.mounts if mount.from_)


def _lookup(ref: str, df: Dockerfile, by_name: Mapping[str, Stage]) -> Stage | None:
    if ref.isdecimal() and len(ref) < 6:
        index = int(ref)
        return df.stages[index] if index < len(df.stages) else None
    return by_name.get(ref.lower())


def dispatched_stages(df: Dockerfile, target: str | None, all_stages: bool) -> list[Stage]:
    """The stages a build dispatches: all of them for a lint without a target, else those
    the target (default: the last stage) needs, in file order."""
    if all_stages and not target:
        return list(df.stages)
    by_name = _by_name(df)
    start = by_name.get(target.lower()) if target else df.stages[-1]
    if start is None:
        return []
    needed, todo = {start.index}, [start]
    while todo:
        for ref in _stage_refs(todo.pop()):
            found = _lookup(ref, df, by_name)
            if found is not None and found.index not in needed:
                needed.add(found.index)
                todo.append(found)
    return [stage for stage in df.stages if stage.index in needed]


# ----------------------------------------------------------------------------- entry

@dataclass(frozen=True, slots=True)
class CheckReport:
    """The findings a build reports (sorted, filtered by the configuration) and the
    configuration; ``failure`` is the error ``error=true`` makes of them, if any."""

    warnings: tuple[CheckWarning, ...]
    config: CheckConfig
    failure: DockerfileError | None = None


def _all_findings(parsed: ParseResult, df: Dockerfile, stages: Sequence[Stage],
                  build_args: Mapping[str, str]) -> Iterator[CheckWarning]:
    for rules in (_no_empty_continuation(parsed), _maintainer(parsed),
                  _stage_name_casing(df), _from_as_casing(df), _stage_names(df),
                  _consistent_casing(df), _definition_description(df)):
        checkpoint()
        yield from rules
    lexer = Lexer(parsed.directives.escape)
    env = _global_args(df, lexer, build_args)
    if env is not None:
        yield from _invalid_default_arg(df, lexer, env)
        yield from _platform_flag(df, lexer, env)
    by_name = _by_name(df)
    for stage in stages:
        checkpoint()
        yield from _stage_rules(stage, parsed.filename, by_name)


def _sort_key(warning: CheckWarning) -> tuple[str, int, int, str, str]:
    return warning.filename, warning.line, warning.column, warning.rule, warning.message


def _failure(warnings: Sequence[CheckWarning], parsed: ParseResult) -> DockerfileError:
    rules = ", ".join(sorted({warning.rule for warning in warnings}))
    first = warnings[0]
    source = parsed.source_lines[first.line - 1] \
        if 0 < first.line <= len(parsed.source_lines) else None
    return DockerfileError(f"lint violation found for rules: {rules}", filename=first.filename,
                           line=first.line, column=first.column, source_line=source)


def run_checks(parsed: ParseResult, dockerfile: Dockerfile, *, target: str | None = None,
               all_stages: bool = False, extra: Iterable[CheckWarning] = (),
               build_args: Mapping[str, str] | None = None) -> CheckReport:
    """Every build check over one Dockerfile, plus the ``extra`` findings of the converter,
    filtered by its ``# check=`` (or BUILDKIT_DOCKERFILE_CHECK) configuration."""
    config = check_config(parsed, build_args)
    stages = dispatched_stages(dockerfile, target, all_stages)
    found = [*_all_findings(parsed, dockerfile, stages, build_args or {}), *extra]
    kept = sorted({w for w in found if config.runs(w.rule)}, key=_sort_key)
    failure = _failure(kept, parsed) if config.error and kept else None
    return CheckReport(tuple(kept), config, failure)


def lint(parsed: ParseResult, dockerfile: Dockerfile, *, target: str | None = None,
         all_stages: bool = True, extra: Iterable[CheckWarning] = (),
         build_args: Mapping[str, str] | None = None) -> tuple[CheckWarning, ...]:
    """The sorted findings of ``run_checks`` (all stages unless a target is given)."""
    return run_checks(parsed, dockerfile, target=target, all_stages=all_stages, extra=extra,
                      build_args=build_args).warnings
