"""Which Dockerfiles are accepted: one table, checked against BuildKit and against ours.

A row is ``(case id, Dockerfile, BuildKit 20.10's verdict, our verdict)``:

- BuildKit's verdict is ``None`` (it builds) or a piece of its error message, checked by
  ``test_buildkit_agrees`` on the private dockerd (``FROM scratch`` only; whatever would
  run or fetch something sits in a stage the target does not need, so 20.10 parses and
  checks it but never executes it).
- Our verdict is ``None`` (``_parser.parse`` then ``_instructions.parse_dockerfile`` accept
  it) or the line our ``DockerfileError`` must name, checked by ``test_frontend_agrees``.
  Where BuildKit names a line ("dockerfile parse error line N") it must be the same line.

Only what the parser and the instruction layer decide is here; what BuildKit checks later
(signal names, port specs, chmod values, stage cycles, missing files) belongs to the
converter's tests.  Rows marked NEWER are features 20.10's frontend rejects ("Unknown flag",
heredocs read as instructions) and current BuildKit accepts: ours follows current BuildKit.
"""

from __future__ import annotations

import importlib
import re

import pytest
from _buildkit import PrivateDockerd

from dockyard.scheduler._errors import DockerfileError

UNUSED = "FROM scratch AS unused\n"  # a stage the build target does not need
TARGET = "FROM scratch\n"
LONG_LINE = "dockerfile line greater than max allowed size of 65535"

Row = tuple[str, str, str | None, int | None]

ROWS: list[Row] = [
    # --- accepted by both ---------------------------------------------------------------
    ("minimal", "FROM scratch\n", None, None),
    ("lowercase", "from scratch\nenv a=1\n", None, None),
    ("indented", "  FROM   scratch\n", None, None),
    ("meta-arg", "ARG A=1\nFROM scratch\n", None, None),
    ("platform", "FROM --platform=linux/arm64 scratch\n", None, None),
    ("platform-arg", "FROM --platform=$BUILDPLATFORM scratch\n", None, None),
    ("stage-case", "FROM scratch AS A\nFROM a\n", None, None),
    ("continued-from", "FROM scratch \\\n  AS b\n", None, None),
    ("continuation-eof", "FROM scratch\nENV A=1 \\\n", None, None),
    ("continuation-blank", "FROM scratch\nENV A=1 \\\n\n  B=2\n", None, None),
    ("continuation-comment", "FROM scratch\nENV A=1 \\\n# note\n  B=2\n", None, None),
    ("escape-backtick", "# escape=`\nFROM scratch\nENV A=1 `\n B=2\n", None, None),
    ("late-directive", "FROM scratch\n# escape=x\n", None, None),
    ("env-legacy", "FROM scratch\nENV A 1 2\n", None, None),
    ("env-repeat", "FROM scratch\nENV A=1 A=2\n", None, None),
    ("label-quoted-key", 'FROM scratch\nLABEL "a b"=c\n', None, None),
    ("label-many", 'FROM scratch\nLABEL a=1 b="two words" c=\n', None, None),
    ("arg-many", "FROM scratch\nARG a b\n", None, None),
    ("user-words", "FROM scratch\nUSER a b\n", None, None),
    ("workdir-words", "FROM scratch\nWORKDIR a b\n", None, None),
    ("maintainer", "FROM scratch\nMAINTAINER me\n", None, None),
    ("expose", "FROM scratch\nEXPOSE 80/tcp 53/udp 8000-8010\n", None, None),
    ("stopsignal", "FROM scratch\nSTOPSIGNAL SIGKILL\n", None, None),
    ("shell-json", 'FROM scratch\nSHELL ["/bin/sh", "-c"]\n', None, None),
    ("cmd-json", 'FROM scratch\nCMD ["a", "b"]\n', None, None),
    ("cmd-bad-json", 'FROM scratch\nCMD ["a", "b"\n', None, None),
    ("cmd-single-quotes", "FROM scratch\nCMD [\"a\", 'b']\n", None, None),
    ("cmd-empty", "FROM scratch\nCMD\n", None, None),
    ("entrypoint-empty", "FROM scratch\nENTRYPOINT\n", None, None),
    ("entrypoint-cmd", 'FROM scratch\nENTRYPOINT ["a"]\nCMD a b\n', None, None),
    ("onbuild", "FROM scratch\nONBUILD RUN echo hi\n", None, None),
    ("healthcheck-none", "FROM scratch\nHEALTHCHECK NONE\n", None, None),
    ("healthcheck-flags",
     "FROM scratch\nHEALTHCHECK --interval=5s --timeout=3s --start-period=1s --retries=3"
     " CMD true\n", None, None),
    ("mount-cache",
     UNUSED + "RUN --mount=type=cache,target=/c,id=x,sharing=locked echo\n" + TARGET,
     None, None),
    ("mount-cache-owner",
     UNUSED + "RUN --mount=type=cache,target=/c,mode=0755,uid=1,gid=2,ro x\n" + TARGET,
     None, None),
    ("mount-secret",
     UNUSED + "RUN --mount=type=secret,id=a,target=/s,mode=0400,uid=1,gid=1,required x\n"
     + TARGET, None, None),
    ("mount-ssh",
     UNUSED + "RUN --mount=type=ssh,id=default,target=/s,required=true x\n" + TARGET,
     None, None),
    ("mount-tmpfs", UNUSED + "RUN --mount=type=tmpfs,target=/t x\n" + TARGET, None, None),
    ("mount-bind",
     UNUSED + "RUN --mount=type=bind,from=x,source=/a,target=/b,rw x\n" + TARGET, None, None),
    ("copy-chmod-octal", UNUSED + "COPY --chmod=755 a /b\n" + TARGET, None, None),
    ("copy-chmod-symbolic", UNUSED + "COPY --chmod=u+x a /b\n" + TARGET, None, None),
    ("add-chown-chmod", UNUSED + "ADD --chown=1 --chmod=644 a /b\n" + TARGET, None, None),
    # --- NEWER: 20.10 rejects, current BuildKit (and ours) accepts -------------------------
    ("heredoc", UNUSED + "RUN <<EOF\necho hi\nEOF\n" + TARGET,
     "line 3: unknown instruction: ECHO", None),
    ("run-network", UNUSED + "RUN --network=none echo hi\n" + TARGET,
     "Unknown flag: network", None),
    ("mount-tmpfs-size", UNUSED + "RUN --mount=type=tmpfs,target=/t,size=10m x\n" + TARGET,
     "unexpected key 'size' in 'size=10m'", None),
    ("copy-link", UNUSED + "COPY --link a /b\n" + TARGET, "Unknown flag: link", None),
    ("copy-parents", UNUSED + "COPY --parents a /b\n" + TARGET, "Unknown flag: parents", None),
    ("copy-exclude", UNUSED + "COPY --exclude=x a /b\n" + TARGET, "Unknown flag: exclude", None),
    ("add-checksum",
     UNUSED + "ADD --checksum=sha256:" + "0" * 64 + " http://x/y /b\n" + TARGET,
     "Unknown flag: checksum", None),
    ("add-keep-git-dir",
     UNUSED + "ADD --keep-git-dir=true https://example.invalid/a/b.git /b\n" + TARGET,
     "Unknown flag: keep-git-dir", None),
    ("healthcheck-retries-0", "FROM scratch\nHEALTHCHECK --retries=0 CMD true\n",
     "--retries must be at least 1 (not 0)", None),
    ("healthcheck-start-interval", "FROM scratch\nHEALTHCHECK --start-interval=1s CMD true\n",
     "Unknown flag: start-interval", None),
    # --- rejected by both -----------------------------------------------------------------
    ("empty", "\n", "file with no instructions", 1),
    ("only-comment", "# only a comment\n", "file with no instructions", 1),
    ("unknown-instruction", "FROM scratch\nRUNX foo\n", "unknown instruction: RUNX", 2),
    ("unknown-bare", "FROM scratch\nRUNX\n", "unknown instruction: RUNX", 2),
    ("bad-escape", "# escape=x\nFROM scratch\n", "invalid escape token 'x'", 1),
    ("two-escapes", "# escape=\\\n# escape=\\\nFROM scratch\n",
     "only one escape parser directive can be used", 2),
    ("backtick-then-backslash", "# escape=`\n# comment\nFROM scratch\nENV A=1 \\\n",
     "can't find = in", 4),
    ("no-stage", "ENV A=1\nFROM scratch\n", "no build stage in current context", 1),
    ("from-empty", "FROM\n", "FROM requires either one or three arguments", 1),
    ("from-as-alone", "FROM scratch AS\n", "FROM requires either one or three arguments", 1),
    ("from-two-names", "FROM scratch AS a b\n", "FROM requires either one or three arguments",
     1),
    ("from-asx", "FROM scratch ASX a\n", "FROM requires either one or three arguments", 1),
    ("stage-digit", "FROM scratch as 1a\n", 'invalid name for build stage: "1a"', 1),
    ("from-unknown-flag", "FROM --bogus=1 scratch\n", "Unknown flag: bogus", 1),
    ("env-empty", "FROM scratch\nENV\n", "ENV requires at least one argument", 2),
    ("env-one-word", "FROM scratch\nENV A\n", "ENV must have two arguments", 2),
    ("env-missing-equals", "FROM scratch\nENV A=1 B\n", "can't find = in \"B\"", 2),
    ("env-blank-name", "FROM scratch\nENV =x\n", "ENV names can not be blank", 2),
    ("label-one-word", "FROM scratch\nLABEL a\n", "LABEL must have two arguments", 2),
    ("label-blank-name", "FROM scratch\nLABEL =x\n", "LABEL names can not be blank", 2),
    ("arg-empty", "FROM scratch\nARG\n", "ARG requires at least one argument", 2),
    ("meta-arg-empty", "ARG\nFROM scratch\n", "ARG requires at least one argument", 1),
    ("arg-blank-name", "FROM scratch\nARG =x\n", "ARG names can not be blank", 2),
    ("shell-not-json", "FROM scratch\nSHELL /bin/sh -c\n",
     "SHELL requires the arguments to be in JSON form", 2),
    ("onbuild-empty", "FROM scratch\nONBUILD\n", "ONBUILD requires at least one argument", 2),
    ("onbuild-onbuild", "FROM scratch\nONBUILD ONBUILD RUN x\n",
     "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", 2),
    ("onbuild-from", "FROM scratch\nONBUILD FROM x\n",
     "FROM isn't allowed as an ONBUILD trigger", 2),
    ("onbuild-maintainer", "FROM scratch\nONBUILD MAINTAINER x\n",
     "MAINTAINER isn't allowed as an ONBUILD trigger", 2),
    ("healthcheck-empty", "FROM scratch\nHEALTHCHECK\n",
     "HEALTHCHECK requires at least one argument", 2),
    ("healthcheck-none-args", "FROM scratch\nHEALTHCHECK NONE extra\n",
     "HEALTHCHECK NONE takes no arguments", 2),
    ("healthcheck-cmd-empty", "FROM scratch\nHEALTHCHECK CMD\n",
     "Missing command after HEALTHCHECK CMD", 2),
    ("healthcheck-bad-duration", "FROM scratch\nHEALTHCHECK --interval=bogus CMD true\n",
     'invalid duration "bogus"', 2),
    ("healthcheck-no-unit", "FROM scratch\nHEALTHCHECK --interval=10 CMD true\n",
     'missing unit in duration "10"', 2),
    ("healthcheck-retries-negative", "FROM scratch\nHEALTHCHECK --retries=-1 CMD true\n",
     "--retries must be at least 1 (not -1)", 2),
    ("healthcheck-unknown-flag", "FROM scratch\nHEALTHCHECK --bogus=1 CMD true\n",
     "Unknown flag: bogus", 2),
    ("expose-empty", "FROM scratch\nEXPOSE\n", "EXPOSE requires at least one argument", 2),
    ("stopsignal-empty", "FROM scratch\nSTOPSIGNAL\n",
     "STOPSIGNAL requires exactly one argument", 2),
    ("workdir-empty", "FROM scratch\nWORKDIR\n", "WORKDIR requires exactly one argument", 2),
    ("user-empty", "FROM scratch\nUSER\n", "USER requires exactly one argument", 2),
    ("volume-empty", "FROM scratch\nVOLUME\n", "VOLUME requires at least one argument", 2),
    ("maintainer-empty", "FROM scratch\nFROM scratch\nMAINTAINER\n",
     "MAINTAINER requires exactly one argument", 3),
    ("copy-one-arg", "FROM scratch\nCOPY a\n", "COPY requires at least two arguments", 2),
    ("add-one-arg", "FROM scratch\nADD a\n", "ADD requires at least two arguments", 2),
    ("copy-flag-only", "FROM scratch\nCOPY --chown\n", "COPY requires at least two arguments",
     2),
    ("copy-flag-no-value", "FROM scratch\nCOPY --chmod a /b\n",
     "Missing a value on flag: chmod", 2),
    ("copy-unknown-flag", "FROM scratch\nCOPY --bogus a /b\n", "Unknown flag: bogus", 2),
    ("run-unknown-flag", UNUSED + "RUN --bogus echo hi\n" + TARGET, "Unknown flag: bogus", 2),
    ("mount-bad-type", UNUSED + "RUN --mount=type=bogus,target=/t echo hi\n" + TARGET,
     'unsupported mount type "bogus"', 2),
    ("mount-bad-sharing",
     UNUSED + "RUN --mount=type=cache,target=/c,sharing=bogus x\n" + TARGET,
     'unsupported sharing value "bogus"', 2),
    ("mount-bad-uid", UNUSED + "RUN --mount=type=cache,target=/c,uid=abc x\n" + TARGET,
     "invalid value abc for uid", 2),
    ("mount-unknown-key", UNUSED + "RUN --mount=type=cache,target=/c,bogus=1 x\n" + TARGET,
     "unexpected key 'bogus' in 'bogus=1'", 2),
    # --- the line limit: 65,535 bytes before the "\n" (a CRLF's "\r" counts), each
    # physical line alone -- the logical line of continuations may be longer
    ("line-65535", TARGET + "ENV A=" + "x" * 65_529 + "\n", None, None),
    ("line-65536", TARGET + "ENV A=" + "x" * 65_530 + "\n", LONG_LINE, 2),
    ("line-crlf-65535", "FROM scratch\r\nENV A=" + "x" * 65_528 + "\r\n", None, None),
    ("line-crlf-65536", "FROM scratch\r\nENV A=" + "x" * 65_529 + "\r\n", LONG_LINE, 2),
    ("line-no-eol-65535", TARGET + "ENV A=" + "x" * 65_529, None, None),
    ("line-no-eol-65536", TARGET + "ENV A=" + "x" * 65_530, LONG_LINE, 2),
    ("line-continued", TARGET + "ENV A=1 \\\n  B=" + "x" * 65_529 + " \\\n  C="
     + "y" * 65_530 + "\n", None, None),
]

_LINE = re.compile(r"dockerfile parse error line (\d+)")


def _frontend_error(text: str) -> DockerfileError | None:
    """Our parser and instruction layer on ``text``: the error, or None when accepted."""
    parser = pytest.importorskip(
        "dockyard.scheduler.dockerfile._parser",
        reason="dockyard.scheduler.dockerfile._parser not landed yet")
    instructions = importlib.import_module("dockyard.scheduler.dockerfile._instructions")
    if not hasattr(instructions, "parse_dockerfile"):
        pytest.skip("dockyard.scheduler.dockerfile._instructions.parse_dockerfile not landed yet")
    try:
        instructions.parse_dockerfile(parser.parse(text))
    except DockerfileError as exc:
        return exc
    return None


@pytest.mark.oracle
@pytest.mark.parametrize(("case", "text", "verdict", "line"), ROWS, ids=[r[0] for r in ROWS])
def test_buildkit_agrees(
    buildkit: PrivateDockerd, case: str, text: str, verdict: str | None, line: int | None
) -> None:
    result = buildkit.build(text)
    if verdict is None:
        assert result.ok, f"BuildKit rejected {case}: {result.error_text}"
        return
    assert not result.ok, f"BuildKit accepted {case}"
    assert verdict in result.error_text
    reported = _LINE.search(result.error_text)
    if reported and line is not None:
        assert int(reported.group(1)) == line


@pytest.mark.parametrize(("case", "text", "verdict", "line"), ROWS, ids=[r[0] for r in ROWS])
def test_frontend_agrees(case: str, text: str, verdict: str | None, line: int | None) -> None:
    error = _frontend_error(text)
    if line is None:
        assert error is None, f"we rejected {case}:\n{error}"
        return
    assert error is not None, f"we accepted {case}; BuildKit says: {verdict}"
    assert (error.line, error.filename) == (line, "Dockerfile"), str(error)
