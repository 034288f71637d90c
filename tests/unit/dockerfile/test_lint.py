"""Build checks as data: Dockerfile -> the (line, rule, message) findings, through the whole
frontend (``build_graph``), so the converter's rules and ``# check=`` are covered too.

- ``lint_cases/<case>/{Dockerfile,warnings}``: realistic files, one ``line:column Rule:
  message`` per finding, linted as ``dockyard build --check`` does (every stage);
- ``CASES``: one behaviour per row (what fires, where, which stages are looked at);
- ``CONFIGS``: the ``# check=`` directive and the BUILDKIT_DOCKERFILE_CHECK build arg;
- ``ERRORS``: exact messages of bad options and of ``error=true``.

Rule names, messages and URLs are BuildKit's (frontend/dockerfile/linter/ruleset.go and the
dockerfile2llb/instructions call sites).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dockyard.scheduler._errors import DockerfileError, DockyardError, UsageError
from dockyard.scheduler._platform import Platform
from dockyard.scheduler.dockerfile._frontend import build_graph
from dockyard.scheduler.dockerfile._lint import RULES

AMD64 = Platform("linux", "amd64")
CASES_DIR = Path(__file__).parent / "lint_cases"
Finding = tuple[int, str, str]


def _lint(dockerfile: str, **options: Any) -> list[Finding]:
    options = {"platforms": [AMD64], "build_platform": AMD64, "check_only": True,
               **options}
    result = build_graph(dockerfile.encode(), **options)
    return [(w.line, w.rule, w.message) for w in result.warnings]


@pytest.mark.parametrize("case", sorted(p.name for p in CASES_DIR.iterdir()))
def test_folder_cases(case: str) -> None:
    folder = CASES_DIR / case
    result = build_graph((folder / "Dockerfile").read_bytes(), platforms=[AMD64],
                         build_platform=AMD64, check_only=True)
    got = "".join(f"{w.line}:{w.column} {w.rule}: {w.message}\n" for w in result.warnings)
    assert got == (folder / "warnings").read_text()


JSON_CMD = "JSON arguments recommended for CMD to prevent unintended behavior related to OS " \
           "signals"
LEGACY_ENV = '"ENV key=value" should be used instead of legacy "ENV key value" format'
MULTIPLE_CMD = "Multiple CMD instructions should not be used in the same stage because only " \
               "the last one will be used"

# (id, Dockerfile, build_graph options, findings)
CASES: list[tuple[str, str, dict[str, Any], list[Finding]]] = [
    ("clean", "FROM alpine\nCMD [\"sh\"]\n", {}, []),
    ("json-args-cmd", "FROM alpine\nCMD echo hi\n", {}, [(2, "JSONArgsRecommended", JSON_CMD)]),
    ("json-args-keyword-as-written", "from alpine\nentrypoint top\n", {},
     [(2, "JSONArgsRecommended", "JSON arguments recommended for entrypoint to prevent "
       "unintended behavior related to OS signals")]),
    ("json-args-run-never", "FROM alpine\nRUN echo hi\n", {}, []),
    ("json-args-after-shell", "FROM alpine\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\n",
     {}, []),
    ("json-args-before-shell", "FROM alpine\nCMD echo hi\nSHELL [\"/bin/bash\", \"-c\"]\n",
     {}, [(2, "JSONArgsRecommended", JSON_CMD)]),
    ("json-args-shell-inherited", "FROM alpine AS a\nSHELL [\"bash\", \"-c\"]\n"
     "FROM a\nCMD echo hi\n", {}, []),
    ("legacy-env", "FROM alpine\nENV A b c\n", {}, [(2, "LegacyKeyValueFormat", LEGACY_ENV)]),
    ("legacy-label-lower", "FROM alpine\nlabel a b\n", {},
     [(2, "ConsistentInstructionCasing",
       "Command 'label' should match the case of the command majority (uppercase)"),
      (2, "LegacyKeyValueFormat",
       '"label key=value" should be used instead of legacy "label key value" format')]),
    ("env-equals-fine", "FROM alpine\nENV A=b C=\"d e\"\n", {}, []),
    ("stage-name-casing", "FROM alpine AS Build\n", {},
     [(1, "StageNameCasing", "Stage name 'Build' should be lowercase")]),
    ("from-as-casing-upper", "FROM alpine as b\n", {},
     [(1, "FromAsCasing", "'as' and 'FROM' keywords' casing do not match")]),
    ("from-as-casing-mixed-from-silent", "From alpine as b\n", {},
     [(1, "ConsistentInstructionCasing",
       "Command 'From' should match the case of the command majority (uppercase)")]),
    ("duplicate-stage", "FROM alpine AS a\nFROM alpine AS A\n", {},
     [(2, "DuplicateStageName", 'Duplicate stage name "a", stage names should be unique'),
      (2, "StageNameCasing", "Stage name 'A' should be lowercase")]),
    ("reserved-stage", "FROM alpine AS scratch\nFROM alpine AS context\n", {},
     [(1, "ReservedStageName",
       'Stage name should not use the same name as reserved stage "scratch"'),
      (2, "ReservedStageName",
       'Stage name should not use the same name as reserved stage "context"')]),
    ("maintainer", "FROM alpine\nMAINTAINER me <me@example.com>\n", {},
     [(2, "MaintainerDeprecated",
       "Maintainer instruction is deprecated in favor of using label")]),
    ("secrets", "FROM alpine\nARG API_KEY AUTH db_password=x\nENV SECRET_MESSAGE=1\n", {},
     [(2, "SecretsUsedInArgOrEnv",
       'Do not use ARG or ENV instructions for sensitive data (ARG "API_KEY")'),
      (2, "SecretsUsedInArgOrEnv",
       'Do not use ARG or ENV instructions for sensitive data (ARG "AUTH")'),
      (2, "SecretsUsedInArgOrEnv",
       'Do not use ARG or ENV instructions for sensitive data (ARG "db_password")'),
      (3, "SecretsUsedInArgOrEnv",
       'Do not use ARG or ENV instructions for sensitive data (ENV "SECRET_MESSAGE")')]),
    ("secrets-allowed-and-partial", "FROM alpine\nARG PUBLIC_KEY KEY_FILE TOKEN_VERSION "
     "KEYS MONKEY PASSWORDS\n", {}, []),
    ("secrets-meta-arg-not-checked", "ARG GITHUB_TOKEN\nFROM alpine\n", {}, []),
    ("expose-proto", "FROM alpine\nEXPOSE 80/TCP 53/udp 8000-8010/Sctp 443\n", {},
     [(2, "ExposeProtoCasing",
       "Defined protocol '80/TCP' in EXPOSE instruction should be lowercase"),
      (2, "ExposeProtoCasing",
       "Defined protocol '8000-8010/Sctp' in EXPOSE instruction should be lowercase")]),
    ("multiple-cmd-points-at-first", "FROM alpine\nCMD [\"a\"]\nCMD [\"b\"]\n"
     "HEALTHCHECK NONE\nHEALTHCHECK NONE\n", {},
     [(2, "MultipleInstructionsDisallowed", MULTIPLE_CMD),
      (4, "MultipleInstructionsDisallowed", "Multiple HEALTHCHECK instructions should not be "
       "used in the same stage because only the last one will be used")]),
    ("multiple-cmd-per-stage", "FROM alpine AS a\nCMD [\"a\"]\nFROM a\nCMD [\"b\"]\n", {}, []),
    ("empty-continuation-at-last-line", "FROM alpine\nRUN a \\\n\n  b \\\n\n  c\n", {},
     [(6, "NoEmptyContinuation", "Empty continuation line")]),
    ("empty-continuation-heredoc", "FROM alpine\nRUN a \\\n\n  <<EOF\nx\nEOF\n", {},
     [(4, "NoEmptyContinuation", "Empty continuation line")]),
    ("comment-in-continuation-fine", "FROM alpine\nRUN a \\\n# note\n  b\n", {}, []),
    ("casing-majority-lower", "from alpine\nRUN x\nrun y\nworkdir /\n", {},
     [(2, "ConsistentInstructionCasing",
       "Command 'RUN' should match the case of the command majority (lowercase)")]),
    ("casing-tie-is-upper", "from alpine\nRUN x\n", {},
     [(1, "ConsistentInstructionCasing",
       "Command 'from' should match the case of the command majority (uppercase)")]),
    ("casing-meta-args-not-counted", "arg A\narg B\nFROM alpine\n", {}, []),
    ("invalid-default-arg", "ARG IMAGE\nFROM ${IMAGE}\n", {"build_args": {"IMAGE": "alpine"}},
     [(2, "InvalidDefaultArgInFrom",
       "Default value for ARG ${IMAGE} results in empty or invalid base image name")]),
    ("valid-default-arg", "ARG IMAGE=alpine\nFROM ${IMAGE}\n", {}, []),
    ("redundant-target-platform", "FROM --platform=$TARGETPLATFORM alpine\n", {},
     [(1, "RedundantTargetPlatform", "Setting platform to predefined $TARGETPLATFORM in FROM "
       "is redundant as this is the default behavior")]),
    ("build-platform-fine", "FROM --platform=${BUILDPLATFORM} alpine\n", {}, []),
    ("const-platform", "FROM --platform=linux/amd64 alpine\n", {},
     [(1, "FromPlatformFlagConstDisallowed",
       'FROM --platform flag should not use constant value "linux/amd64"')]),
    ("const-platform-named-stage-ok", "FROM --platform=linux/amd64 alpine AS build-amd64\n",
     {}, []),
    ("undefined-var-from-converter", "FROM alpine\nENV A=$NOPE\n", {},
     [(2, "UndefinedVar", "Usage of undefined variable '$NOPE'")]),
    ("workdir-relative-from-converter", "FROM alpine\nWORKDIR app\n", {},
     [(2, "WorkdirRelativePath",
       'Relative workdir "app" can have unexpected results if the base image changes')]),
    ("undefined-arg-in-from-converter", "FROM alpine$SUFFIX\n", {},
     [(1, "UndefinedArgInFrom", "FROM argument 'SUFFIX' is not declared")]),
    ("unreachable-stage-linted-without-target", "FROM alpine AS other\nCMD x\n"
     "FROM alpine\nCMD [\"y\"]\n", {}, [(2, "JSONArgsRecommended", JSON_CMD)]),
    ("unreachable-stage-skipped-with-target", "FROM alpine AS other\nCMD x\n"
     "FROM alpine AS main\nCMD [\"y\"]\n", {"target": "main"}, []),
    ("build-skips-unreachable", "FROM alpine AS other\nCMD x\nFROM alpine\nCMD [\"y\"]\n",
     {"check_only": False}, []),
    ("build-follows-copy-from", "FROM alpine AS other\nCMD x\nFROM alpine\n"
     "COPY --from=other /a /a\n", {"check_only": False},
     [(2, "JSONArgsRecommended", JSON_CMD)]),
    ("build-follows-mount-from", "FROM alpine AS other\nENV A b\nFROM alpine\n"
     "RUN --mount=from=other,target=/o ls\n", {"check_only": False},
     [(2, "LegacyKeyValueFormat", LEGACY_ENV)]),
    ("parse-step-rules-see-every-stage", "FROM alpine as other\nFROM alpine AS main\n",
     {"target": "main"},
     [(1, "FromAsCasing", "'as' and 'FROM' keywords' casing do not match")]),
    ("experimental-off-by-default", "# a comment\nARG A\nFROM alpine\n", {}, []),
    ("experimental-definition-description", "# check=experimental=all\n# a comment\nARG A\n"
     "# build stage\nFROM alpine AS build\n# B the b\nARG B C\n", {},
     [(3, "InvalidDefinitionDescription",
       "Comment for ARG should follow the format: `# A <description>`")]),
    ("experimental-description-multi-key", "# check=experimental=InvalidDefinitionDescription\n"
     "FROM alpine\n# hello\nARG B C\n", {},
     [(4, "InvalidDefinitionDescription",
       "Comment for ARG should follow the format: `# <arg_key> <description>`")]),
]


@pytest.mark.parametrize(("dockerfile", "options", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rules(dockerfile: str, options: dict[str, Any], expected: list[Finding]) -> None:
    assert _lint(dockerfile, **options) == expected


# (id, directive line or None, BUILDKIT_DOCKERFILE_CHECK value or None, rules reported)
BODY = "FROM alpine as Base\nMAINTAINER me\nCMD echo hi\n"
ALL = ["FromAsCasing", "StageNameCasing", "MaintainerDeprecated", "JSONArgsRecommended"]
CONFIGS: list[tuple[str, str | None, str | None, list[str]]] = [
    ("none", None, None, ALL),
    ("skip-one", "# check=skip=JSONArgsRecommended", None, ALL[:3]),
    ("skip-list-spaces", "# check=skip= FromAsCasing , MaintainerDeprecated ", None,
     ["StageNameCasing", "JSONArgsRecommended"]),
    ("skip-all", "# check=skip=all", None, []),
    ("skip-unknown-rule", "# check=skip=NoSuchRule", None, ALL),
    ("error-false", "# check=error=false", None, ALL),
    ("empty", "# check=", None, ALL),
    ("build-arg-wins", "# check=skip=all", "skip=StageNameCasing",
     ["FromAsCasing", "MaintainerDeprecated", "JSONArgsRecommended"]),
    ("build-arg-empty-resets", "# check=skip=all", "", ALL),
    ("three-parts-max", "# check=error=false;skip=all;experimental=a;b", None, []),
    ("directive-case-insensitive-name", "# CHECK=skip=all", None, []),
]


@pytest.mark.parametrize(("directive", "build_arg", "rules"), [c[1:] for c in CONFIGS],
                         ids=[c[0] for c in CONFIGS])
def test_check_config(directive: str | None, build_arg: str | None, rules: list[str]) -> None:
    text = (directive + "\n" if directive is not None else "") + BODY
    args = {"BUILDKIT_DOCKERFILE_CHECK": build_arg} if build_arg is not None else {}
    found = _lint(text, build_args=args)
    assert [rule for _, rule, _ in found] == rules


# (id, Dockerfile, build args, error type, str(error))
ERRORS: list[tuple[str, str, dict[str, str], type[DockyardError], str]] = [
    ("error-true", "# check=error=true\nFROM alpine as Base\nCMD echo hi\n", {},
     DockerfileError, "Dockerfile:2:1: lint violation found for rules: FromAsCasing, "
     "JSONArgsRecommended, StageNameCasing\n  2 | FROM alpine as Base\n    | ^"),
    ("error-true-clean-passes-nothing", "# check=error=true;skip=all\nFROM alpine as B\n", {},
     DockerfileError, ""),
    ("error-true-from-build-arg", "FROM alpine\nMAINTAINER me\n",
     {"BUILDKIT_DOCKERFILE_CHECK": "error=1"}, DockerfileError,
     "Dockerfile:2:1: lint violation found for rules: MaintainerDeprecated\n"
     "  2 | MAINTAINER me\n    | ^"),
    ("bad-option", "# check=skip\nFROM alpine\n", {}, DockerfileError,
     'Dockerfile:1:1: failed to parse check options: invalid check option "skip"\n'
     "  1 | # check=skip\n    | ^"),
    ("unknown-option", "# check=warn=all\nFROM alpine\n", {}, DockerfileError,
     'Dockerfile:1:1: failed to parse check options: invalid check option "warn"\n'
     "  1 | # check=warn=all\n    | ^"),
    ("bad-bool", "# check=error=yes\nFROM alpine\n", {}, DockerfileError,
     'Dockerfile:1:1: failed to parse check options: failed to parse check option '
     '"error=yes": strconv.ParseBool: parsing "yes": invalid syntax\n'
     "  1 | # check=error=yes\n    | ^"),
    ("bad-build-arg", "FROM alpine\n", {"BUILDKIT_DOCKERFILE_CHECK": "nope"}, UsageError,
     'failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: invalid check option "nope"'),
]


@pytest.mark.parametrize(("dockerfile", "build_args", "kind", "text"),
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(dockerfile: str, build_args: dict[str, str], kind: type[DockyardError],
                text: str) -> None:
    if not text:
        assert _lint(dockerfile, build_args=build_args) == []
        return
    with pytest.raises(kind) as caught:
        _lint(dockerfile, build_args=build_args, check_only=False)
    assert type(caught.value) is kind and str(caught.value) == text
    if kind is DockerfileError and "lint violation" in text:  # --check: returned, not raised
        result = build_graph(dockerfile.encode(), platforms=[AMD64], build_args=build_args,
                             check_only=True)
        assert result.warnings and str(result.check_failure) == text


def test_unconsumed_build_arg_is_a_notice_not_a_rule() -> None:
    result = build_graph(b"# check=error=true\nFROM alpine\n", platforms=[AMD64],
                         build_args={"NOPE": "1", "BUILDKIT_DOCKERFILE_CHECK": "error=true"})
    assert (result.warnings, result.notices) == (
        (), ("One or more build-args [NOPE] were not consumed",))


# (rule, URL, experimental): a sample of the table, pinned
METADATA = [
    ("JSONArgsRecommended", "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
     False),
    ("FromPlatformFlagConstDisallowed",
     "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/", False),
    ("InvalidDefinitionDescription",
     "https://docs.docker.com/go/dockerfile/rule/invalid-definition-description/", True),
]


@pytest.mark.parametrize(("rule", "url", "experimental"), METADATA)
def test_rule_metadata(rule: str, url: str, experimental: bool) -> None:
    assert (RULES[rule].url, RULES[rule].experimental) == (url, experimental)


def test_warning_carries_description_and_url() -> None:
    result = build_graph(b"FROM alpine\nMAINTAINER me\n", platforms=[AMD64])
    (warning,) = result.warnings
    assert (warning.description, warning.url) == (
        "The MAINTAINER instruction is deprecated, use a label instead to define an image "
        "author", "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/")
