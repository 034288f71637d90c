"""Shell-word expansion (dockyard.scheduler.dockerfile.shell) against BuildKit's lexer behaviour.

Success cases are data files (data/shell_word.txt, data/shell_words.txt); errors, matched
names and lexer options are tables here.  Expectations come from BuildKit's own tests
(frontend/dockerfile/shell/envVarTest, wordsTest, lex_test.go), the Dockerfile reference
("Environment replacement") and reading lex.go -- not from this implementation's output.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler.dockerfile import shell
from dockyard.scheduler.dockerfile.shell import Expansion, Lexer, process_word, process_words

DATA = Path(__file__).parent / "data"

Case = tuple[str, dict[str, str], str, str]  # input, env, escape, expected text


def _read_cases(name: str) -> list[Any]:
    return list(_walk_cases(name))


def _walk_cases(name: str) -> Iterator[Any]:
    """Walk a data file: `ENV k=v` and `ESCAPE c` lines set the context of later cases."""
    env: dict[str, str] = {}
    escape = "\\"
    path = DATA / name
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("ENV "):
            key, _, value = line[4:].partition("=")
            env[key] = json.loads(value) if value.startswith('"') else value
        elif line.startswith("ESCAPE "):
            escape = line[7:]
        else:
            source, bar, expected = line.rpartition(" |")
            assert bar, f"{name}:{number}: no ' |' in {line!r}"
            yield pytest.param(source.strip(), dict(env), escape, expected.strip(),
                               id=f"{name}:{number}")


@pytest.mark.parametrize(("word", "env", "escape", "expected"), _read_cases("shell_word.txt"))
def test_process_word(word: str, env: dict[str, str], escape: str, expected: str) -> None:
    assert process_word(word, MappingProxyType(env), escape) == expected
    assert Lexer(escape).expand(word, env).result == expected


@pytest.mark.parametrize(("word", "env", "escape", "expected"), _read_cases("shell_words.txt"))
def test_process_words(word: str, env: dict[str, str], escape: str, expected: str) -> None:
    assert process_words(word, MappingProxyType(env), escape) == json.loads(expected)
    assert list(Lexer(escape).expand(word, env).words) == json.loads(expected)


ENV = {"PWD": "/home", "SHELL": "bash", "FOO": "xxyy", "EMPTY": "", "BS": "\\", "ARG": "x"}
Q = "unexpected end of statement while looking for matching"

# (input, escape, the whole message); the environment is ENV.
ERRORS: list[tuple[str, str, str]] = [
    # unterminated quotes (envVarTest)
    (r"he'llo", "\\", rf"""failed to process "he'llo": {Q} single-quote"""),
    (r"he\\'llo", "\\", rf"""failed to process "he\\\\'llo": {Q} single-quote"""),
    (r"'hello", "\\", rf"""failed to process "'hello": {Q} single-quote"""),
    (r'"hello', "\\", rf"""failed to process "\"hello": {Q} double-quote"""),
    (r'"hello\"', "\\", rf"""failed to process "\"hello\\\"": {Q} double-quote"""),
    ('"a`', "`", rf"""failed to process "\"a`": {Q} double-quote"""),
    (r"안'녕하세요", "\\", rf"""failed to process "안'녕하세요": {Q} single-quote"""),
    # Go's %q escapes in the quoted word (scheduler/dockerfile/_goquote.py)
    ("a\tb\x01'", "\\", rf"""failed to process "a\tb\x01'": {Q} single-quote"""),
    # bad substitutions (envVarTest)
    ("${}", "\\", 'failed to process "${}": syntax error: bad substitution'),
    ("he${}xx", "\\", 'failed to process "he${}xx": syntax error: bad substitution'),
    ("${{aaa}", "\\", 'failed to process "${{aaa}": syntax error: bad substitution'),
    ("${{aaa:-bbb}", "\\", 'failed to process "${{aaa:-bbb}": syntax error: bad substitution'),
    ("${:}", "\\", 'failed to process "${:}": syntax error: bad substitution'),
    ("${:-bbb}", "\\", 'failed to process "${:-bbb}": syntax error: bad substitution'),
    ("${:+bbb}", "\\", 'failed to process "${:+bbb}": syntax error: bad substitution'),
    # missing braces and slashes
    ("${", "\\", "failed to process \"${\": syntax error: missing '}'"),
    ("${aaa", "\\", "failed to process \"${aaa\": syntax error: missing '}'"),
    ("he${PWD", "\\", "failed to process \"he${PWD\": syntax error: missing '}'"),
    ("${aaa:-bbb", "\\", "failed to process \"${aaa:-bbb\": syntax error: missing '}'"),
    ("${aaa:-bbb ${foo}", "\\",
     "failed to process \"${aaa:-bbb ${foo}\": syntax error: missing '}'"),
    ("${a:", "\\", "failed to process \"${a:\": syntax error: missing '}'"),
    ("${a:-'x}", "\\", "failed to process \"${a:-'x}\": syntax error: missing '}'"),
    ("${a:-${b:?}", "\\", "failed to process \"${a:-${b:?}\": syntax error: missing '}'"),
    ("${a:-x\\}", "\\", "failed to process \"${a:-x\\\\}\": syntax error: missing '}'"),
    ("${FOO//ww}", "\\", "failed to process \"${FOO//ww}\": syntax error: missing '/' in ${}"),
    ("${FOO//}", "\\", "failed to process \"${FOO//}\": syntax error: missing '/' in ${}"),
    ("${FOO/a}", "\\", "failed to process \"${FOO/a}\": syntax error: missing '/' in ${}"),
    ("${FOO/a/b", "\\", "failed to process \"${FOO/a/b\": syntax error: missing '}'"),
    ("\t${", "\\", "failed to process \"\\t${\": syntax error: missing '}'"),
    ("${\n}", "\\", 'failed to process "${\\n}": unsupported modifier (\n) in substitution'),
    # unsupported modifiers
    ("he${.}", "\\", 'failed to process "he${.}": unsupported modifier (.) in substitution'),
    ("he${XXX:YYY}", "\\",
     'failed to process "he${XXX:YYY}": unsupported modifier (:Y) in substitution'),
    ("he${PWD:=000}xx", "\\",
     'failed to process "he${PWD:=000}xx": unsupported modifier (:=) in substitution'),
    ("${FOO=aaa}", "\\",
     'failed to process "${FOO=aaa}": unsupported modifier (=) in substitution'),
    ("${FOO=}", "\\", 'failed to process "${FOO=}": unsupported modifier (=) in substitution'),
    ("${a:}b}", "\\", 'failed to process "${a:}b}": unsupported modifier (:}) in substitution'),
    ("${!a}", "\\", 'failed to process "${!a}": unsupported modifier (a) in substitution'),
    ("${a b}", "\\", 'failed to process "${a b}": unsupported modifier ( ) in substitution'),
    # required variables
    ("${BAZ?ccc}", "\\", 'failed to process "${BAZ?ccc}": BAZ: ccc'),
    ("${EMPTY:?bbb}", "\\", 'failed to process "${EMPTY:?bbb}": EMPTY: bbb'),
    ("${BAZ:?}", "\\", 'failed to process "${BAZ:?}": BAZ: is not allowed to be unset'),
    ("${BAZ?}", "\\", 'failed to process "${BAZ?}": BAZ: is not allowed to be unset'),
    ("${EMPTY:?}", "\\", 'failed to process "${EMPTY:?}": EMPTY: is not allowed to be empty'),
    ("${EMPTY:?message here$ARG}", "\\",
     'failed to process "${EMPTY:?message here$ARG}": EMPTY: message herex'),
    ("${BAZ?message here$ARG}", "\\",
     'failed to process "${BAZ?message here$ARG}": BAZ: message herex'),
    ("${a:-${b:?}}", "\\", 'failed to process "${a:-${b:?}}": b: is not allowed to be unset'),
    # bad patterns
    (r"${FOO#\x}", "\\",
     r"""failed to process "${FOO#\\x}": invalid pattern (\x) in substitution: """
     r"""invalid escape '\x'"""),
    (r"${FOO/\a/b}", "\\",
     r"""failed to process "${FOO/\\a/b}": invalid pattern (\a) in substitution: """
     r"""invalid escape '\a'"""),
    (r"${FOO%$BS}", "\\",
     r"""failed to process "${FOO%$BS}": invalid pattern (\) in substitution: """
     r"""invalid escape '\' at end of pattern"""),
]


@pytest.mark.parametrize(("word", "escape", "message"), ERRORS)
def test_errors(word: str, escape: str, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        process_word(word, ENV, escape)
    assert caught.value.message == message
    # No position of its own: the caller re-raises it at the instruction.
    assert caught.value.location == "Dockerfile:1:1"


# (input, env, result, matched, unmatched) -- BuildKit TestProcessWithMatches
MATCHES: list[tuple[str, dict[str, str], str, set[str], set[str]]] = [
    ("x", {"DUMMY": "dummy"}, "x", set(), set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}),
    ("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}, set()),
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx  ccc",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx bbb ccc",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${FOO:-}", {}, "", set(), {"FOO"}),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa bbb ",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa  ",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${BAR?bbb}", {"FOO": "xxx", "BAR": ""}, "", {"BAR"}, set()),
    ("${FOO:?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set()),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}),
    ("${FOO/$NEEDLE/$R} - ${FOO//$NEEDLE/$R}",
     {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "R": "/"}, "/foo/b/c.txt - /foo/c.txt",
     {"FOO", "NEEDLE", "R"}, set()),
    ("${FOO///}", {}, "", set(), {"FOO"}),
    # names inside quotes, defaults and patterns count too; $1 and $@ are names
    ("'$A' \"$B\" ${C:-$D} ${E#$F}", {"B": "b", "D": "d"}, "$A b d ", {"B", "D"},
     {"C", "E", "F"}),
    ("$1 $@ $$ $. \\$X", {}, "   $. $X", set(), {"1", "@", "$"}),
]


@pytest.mark.parametrize(("word", "env", "result", "matched", "unmatched"), MATCHES)
def test_matches(word: str, env: dict[str, str], result: str, matched: set[str],
                 unmatched: set[str]) -> None:
    expansion = Lexer().expand(word, env)
    assert expansion == Expansion(result, expansion.words, frozenset(matched),
                                  frozenset(unmatched))


OPTIONS_ENV = {"PWD": "/home"}

# (Lexer options, input, result, words) with OPTIONS_ENV
OPTIONS: list[tuple[dict[str, bool], str, str, list[str]]] = [
    ({"raw_quotes": True}, "\"a b\" 'c d'", "\"a b\" 'c d'", ['"a b"', "'c d'"]),
    ({"raw_quotes": True}, '"$PWD"', '"/home"', ['"/home"']),
    ({"raw_escapes": True}, r"a\ b \$PWD", r"a\ b \$PWD", ["a\\ b", "\\$PWD"]),
    ({"raw_escapes": True}, r'"a\"b"', r'a\"b', ['a\\"b']),
    ({"raw_escapes": True}, "a\\", "a\\", ["a\\"]),
    # BuildKit writes the escape twice when it escapes nothing inside double quotes
    ({"raw_escapes": True}, r'"a\tb"', r"a\\tb", ["a\\\\tb"]),
    ({"skip_process_quotes": True}, "'$PWD' \"$PWD\"", "'/home' \"/home\"",
     ["'/home'", '"/home"']),
    ({"skip_process_quotes": True}, "'a b'", "'a b'", ["'a", "b'"]),
    # an expanded heredoc body: quotes are text, escapes still go (moby/buildkit#3756)
    ({"skip_process_quotes": True}, "echo '$PWD' \"${PWD}\"\n", "echo '/home' \"/home\"\n",
     ["echo", "'/home'", '"/home"']),
    ({"skip_process_quotes": True}, r"a\\b \$PWD 'x\y'", r"a\b $PWD 'xy'",
     ["a\\b", "$PWD", "'xy'"]),
    ({"skip_unset_env": True}, "$nope ${nope} ${nope:-x} ${nope+y} $PWD",
     "$nope ${nope} ${nope:-x} ${nope+y} /home",
     ["$nope", "${nope}", "${nope:-x}", "${nope+y}", "/home"]),
    ({"skip_unset_env": True}, "${nope#a} ${nope//a/b} ${PWD//o/0}",
     "${nope#a} ${nope/a/b} /h0me", ["${nope#a}", "${nope/a/b}", "/h0me"]),
    ({"skip_unset_env": True, "raw_quotes": True}, "\"$nope $PWD\"", '"$nope /home"',
     ['"$nope /home"']),
]


@pytest.mark.parametrize(("options", "word", "result", "words"), OPTIONS)
def test_options(options: dict[str, bool], word: str, result: str, words: list[str]) -> None:
    expansion = Lexer("\\", **options).expand(word, OPTIONS_ENV)
    assert (expansion.result, list(expansion.words)) == (result, words)


@pytest.mark.parametrize("escape", ["", "ab", "/", "'"])
def test_escape_token_must_be_backslash_or_backtick(escape: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        Lexer(escape)
    assert caught.value.message == f"invalid escape token '{escape}' does not match ` or \\"


@pytest.mark.parametrize(("depth", "outcome"), [(60, "x"), (65, "error"), (5000, "error")])
def test_nesting_is_bounded(depth: int, outcome: str) -> None:
    word = "${a:-" * depth + "x" + "}" * depth
    if outcome != "error":
        assert process_word(word, {}) == outcome
        return
    with pytest.raises(DockerfileError) as caught:
        process_word(word, {})
    assert caught.value.message.endswith(": expansions nested more than 64 deep")


def test_env_is_not_mutated() -> None:
    env = {"A": "1"}
    Lexer(skip_unset_env=True).expand("${A:-2} ${B:-3} ${A//1/x} $C", env)
    assert env == {"A": "1"}


_ALPHABET = "${}:-+?#%/\\'\"`*[] \tab_AZ019!@.\né"
_words = st.text(alphabet=_ALPHABET, max_size=40)
_envs = st.dictionaries(st.sampled_from(["a", "b", "AZ", "_", "1", "@", "é"]), _words,
                        max_size=4)


@settings(max_examples=600, deadline=None)
@given(word=_words, env=_envs, escape=st.sampled_from(["\\", "`"]),
       options=st.fixed_dictionaries({
           "raw_quotes": st.booleans(), "raw_escapes": st.booleans(),
           "skip_process_quotes": st.booleans(), "skip_unset_env": st.booleans()}))
def test_fuzz_only_dockerfile_errors(word: str, env: dict[str, str], escape: str,
                                     options: dict[str, bool]) -> None:
    try:
        expansion = Lexer(escape, **options).expand(word, env)
    except DockerfileError as exc:
        assert exc.message.startswith("failed to process ")
        return
    assert isinstance(expansion.result, str)
    assert all(expansion.words)
    assert not expansion.matched & expansion.unmatched


# -- pattern matching: same matches as the regex BuildKit builds, without backtracking ------

def _oracle_regex(pattern: str, greedy: bool) -> re.Pattern[str]:
    """BuildKit's convertShellPatternToRegex, for patterns of ``*``, ``?``, ``\\*``, and
    plain characters: run by Python's backtracking ``re`` (same leftmost-first rules)."""
    body = re.sub(r"\\\*|\*|\?|[^*?]", lambda m: {
        "\\*": r"\*", "*": ".*" if greedy else ".*?", "?": "."}.get(m[0], re.escape(m[0])),
        pattern)
    return re.compile(body)


_glob_patterns = st.lists(st.sampled_from(["*", "?", "\\*", "a", "b", "\n"]),
                          max_size=8).map("".join)
_glob_values = st.text(alphabet="ab*\n", max_size=12)


@settings(max_examples=1500, deadline=None)
@given(pattern=_glob_patterns, value=_glob_values, greedy=st.booleans(),
       anchored=st.booleans(), start=st.integers(0, 3))
def test_glob_matches_like_backtracking_regex(pattern: str, value: str, greedy: bool,
                                              anchored: bool, start: int) -> None:
    start = min(start, len(value))
    glob = shell._compile_pattern(pattern, greedy=greedy, budget=shell._Budget(10**9))
    regex = _oracle_regex(pattern, greedy)
    match = (regex.match if anchored else regex.search)(value, start)
    assert glob.search(value, start, anchored=anchored) == (match.span() if match else None)


# (operator, pattern, value of v): each took seconds to hours with backtracking regexes
HOSTILE: list[tuple[str, str, str]] = [
    ("#", "*a" * 20 + "*b", "a" * 10_000),
    ("##", "*a" * 20 + "*b", "a" * 10_000),
    ("%", "a*" * 20 + "b*", "a" * 10_000),
    ("%%", "a*" * 20 + "b*", "a" * 10_000),
    ("/", "*a" * 20 + "*b", "a" * 10_000),
    ("/", "?*" * 20 + "b", "a" * 10_000),
    ("//", "a*" * 20 + "b", ("a" * 50 + "\n") * 200),
]


@pytest.mark.parametrize(("operator", "pattern", "value"), HOSTILE)
def test_pattern_work_is_bounded(operator: str, pattern: str, value: str) -> None:
    budget = shell._Budget(10**9)
    if operator.startswith("/"):
        glob = shell._compile_pattern(pattern, greedy=True, budget=budget)
        assert glob.search(value, 0, anchored=False) is None
    else:
        assert shell._trim(operator[0], operator[1:] + pattern, value, budget) == value
    # One search: at most a step per character per pattern position.
    assert 0 < budget.used <= (len(value) + 1) * (len(pattern) + 1)
    suffix = "/x}" if operator.startswith("/") else "}"
    assert process_word("${v" + operator + pattern + suffix, {"v": value}) == value


def test_pattern_work_limit_names_the_word(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shell, "_MATCH_STEP_LIMIT", 1000)
    assert process_word("${v//a*b/x}", {"v": "a" * 100}) == "a" * 100
    with pytest.raises(DockerfileError) as caught:
        process_word("${v//a*b/x}", {"v": "a" * 1000})
    assert caught.value.message == (
        'failed to process "${v//a*b/x}": pattern matching needs more than 1000 steps')


def _python_calls(run: Any) -> int:
    """How many Python functions ``run()`` calls: the work of a word, counted, not timed."""
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


BIG = shell.MAX_WORD_SIZE // 2
# (word, env, options): each expands to MAX_WORD_SIZE characters (one word or many)
LARGE_WORDS: list[tuple[str, dict[str, str], dict[str, bool]]] = [
    ("$A$A", {"A": "x" * BIG}, {}),
    ("$A$A", {"A": "x " * (BIG // 2)}, {}),
    ('"$A$A"', {"A": "x " * (BIG // 2)}, {}),
    ("${A}'" + "y" * 1000 + "'${A:-z}", {"A": "x" * (BIG - 500)}, {}),
    ("x" * BIG + "\\ " + "y" * (BIG - 1), {}, {}),
    ("'" + "x" * BIG + "'\"" + "y" * BIG + '"', {}, {}),
    ("$A$A", {"A": "'x\"" * (BIG // 3)}, {"skip_process_quotes": True}),
]


@pytest.mark.parametrize(("word", "env", "options"), LARGE_WORDS)
def test_expansion_work_is_linear(word: str, env: dict[str, str],
                                  options: dict[str, bool]) -> None:
    """A word at the size limit costs a handful of Python calls per piece of the word,
    not one (or more) per character: the 256 KiB words here once cost 250,000 calls and
    seconds of string copying each."""
    lexer = Lexer(**options)
    expansion = lexer.expand(word, env)
    assert len(expansion.result) <= shell.MAX_WORD_SIZE
    assert _python_calls(lambda: lexer.expand(word, env)) < 200


# (word, env, the variable named): one past the limit, each refused at once
TOO_LONG: list[tuple[str, dict[str, str], str]] = [
    ("$A$B$A", {"A": "x" * BIG, "B": "y"}, "$A alone is 131072 characters"),
    ("${B}x", {"B": "y" * shell.MAX_WORD_SIZE}, "$B alone is 262144 characters"),
    ('"${A:-$B$B}"', {"B": "y" * (BIG + 1), "A": ""}, "$B alone is 131073 characters"),
    ("${A//?/${B}}", {"A": "aaa", "B": "y" * BIG}, "$B alone is 131072 characters"),
    ("x" * BIG + "y" * BIG + "z", {}, ""),
]


@pytest.mark.parametrize(("word", "env", "named"), TOO_LONG)
def test_expanded_word_size_is_bounded(word: str, env: dict[str, str], named: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        process_words(word, env)
    limit = f"the expanded word would be longer than {shell.MAX_WORD_SIZE} characters"
    assert caught.value.message.endswith(f": {limit}" + (f" ({named})" if named else ""))
    assert caught.value.hint is not None and "ARG and ENV" in caught.value.hint
    assert len(str(caught.value)) < 1000  # the word is shown cut short


def test_replacement_work_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """``${v//?/r}`` multiplies r by the length of v: held to the size limit as it grows,
    and each replacement costs steps."""
    with pytest.raises(DockerfileError) as caught:
        process_word("${A//?/${B}}", {"A": "a" * 100_000, "B": "b" * 100_000})
    assert "longer than 262144 characters" in caught.value.message
    monkeypatch.setattr(shell, "_MATCH_STEP_LIMIT", 1000)
    with pytest.raises(DockerfileError) as caught:
        process_word("${A//?/\\$0\\$0}", {"A": "a" * 1000})
    assert caught.value.message.endswith("pattern matching needs more than 1000 steps")
