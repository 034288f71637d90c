"""``.dockerignore`` reading and matching, as tables.

Sources: moby/patternmatcher's tests (TestMatches, the filepath.Match table, the
multi-pattern cases), moby/patternmatcher/ignorefile's ReadAll test, the Dockerfile
reference's ".dockerignore file" section, and tonistiigi/fsutil's walker (dir skipping).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler.dockerfile._dockerignore import (
    IgnoreLine,
    PatternMatcher,
    parse_ignore_file,
    parse_ignore_lines,
)

# --- parse_ignore_file: (file text, patterns) ---------------------------------------------

PARSE_CASES: list[tuple[str, list[str]]] = [
    # moby ignorefile_test.go ReadAll
    ("test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ",
     ["test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path", "!", "!"]),
    ("", []),
    ("\n\n   \n\t\n", []),
    ("# only a comment", []),
    ("  # not a comment: '#' must come first", ["# not a comment: '#' must come first"]),
    ("#comment\nfoo\n  #x", ["foo", "#x"]),
    ("\ufeffnode_modules", ["node_modules"]),
    ("\ufeff# comment after a BOM", []),
    ("a\r\nb\r\n", ["a", "b"]),
    ("trailing   \t", ["trailing"]),
    ("   leading", ["leading"]),
    ("./a/../b", ["b"]),
    ("a//b///c", ["a/b/c"]),
    ("dir/", ["dir"]),
    ("/dir/", ["dir"]),
    ("//abs", ["abs"]),
    ("/", ["/"]),
    (".", ["."]),
    ("./", ["."]),
    ("a/..", ["."]),
    ("..", [".."]),
    ("../x", ["../x"]),
    ("*/temp*\n*/*/temp*\ntemp?", ["*/temp*", "*/*/temp*", "temp?"]),
    ("**/*.go\n!vendor/**", ["**/*.go", "!vendor/**"]),
    ("!./keep/../this", ["!this"]),
    ("! \t spaced", ["!spaced"]),
    ("!/abs/", ["!abs"]),
    ("!!double", ["!!double"]),
    ("a\\ b", ["a\\ b"]),
    ("a\rb", ["a\rb"]),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_ignore_file(text: str, expected: list[str]) -> None:
    assert parse_ignore_file(text) == expected


LINE_CASES: list[tuple[str, list[tuple[str, int, int]]]] = [
    ("a\n\n# c\n  b\n!  c", [("a", 1, 1), ("b", 4, 3), ("!c", 5, 4)]),
    ("\ufeffx\n\t!y", [("x", 1, 1), ("!y", 2, 3)]),
    ("  ./z/../q", [("q", 1, 3)]),
]


@pytest.mark.parametrize(("text", "expected"), LINE_CASES)
def test_parse_ignore_lines_positions(text: str, expected: list[tuple[str, int, int]]) -> None:
    lines = parse_ignore_lines(text)
    assert [(entry.pattern, entry.line, entry.column) for entry in lines] == expected


# --- one pattern: (pattern, path, exact, with parents) ------------------------------------
# moby TestMatches: "exact" is MatchesExact; "with parents" is MatchesOrParentMatches
# (an "inexact" row in moby's table matches only through a parent directory).

E, P, F = "exact", "via a parent", "fail"

SINGLE_CASES: list[tuple[str, str, str]] = [
    ("**", "file", E), ("**", "file/", E), ("**/", "file", E), ("**/", "file/", E),
    ("**", "/", E), ("**/", "/", E), ("**", "dir/file", E), ("**/", "dir/file", E),
    ("**", "dir/file/", E), ("**/", "dir/file/", E), ("**/**", "dir/file", E),
    ("**/**", "dir/file/", E), ("dir/**", "dir/file", E), ("dir/**", "dir/file/", E),
    ("dir/**", "dir/dir2/file", E), ("dir/**", "dir/dir2/file/", E), ("**/dir", "dir", E),
    ("**/dir", "dir/file", P), ("**/dir2/*", "dir/dir2/file", E),
    ("**/dir2/*", "dir/dir2/file/", P), ("**/dir2/**", "dir/dir2/dir3/file", E),
    ("**/dir2/**", "dir/dir2/dir3/file/", E), ("**file", "file", E), ("**file", "dir/file", E),
    ("**/file", "dir/file", E), ("**file", "dir/dir/file", E), ("**/file", "dir/dir/file", E),
    ("**/file*", "dir/dir/file", E), ("**/file*", "dir/dir/file.txt", E),
    ("**/file*txt", "dir/dir/file.txt", E), ("**/file*.txt", "dir/dir/file.txt", E),
    ("**/file*.txt*", "dir/dir/file.txt", E), ("**/**/*.txt", "dir/dir/file.txt", E),
    ("**/**/*.txt2", "dir/dir/file.txt", F), ("**/*.txt", "file.txt", E),
    ("**/**/*.txt", "file.txt", E), ("a**/*.txt", "a/file.txt", E),
    ("a**/*.txt", "a/dir/file.txt", E), ("a**/*.txt", "a/dir/dir/file.txt", E),
    ("a/*.txt", "a/dir/file.txt", F), ("a/*.txt", "a/file.txt", E),
    ("a/*.txt**", "a/file.txt", E), ("a[b-d]e", "ae", F), ("a[b-d]e", "ace", E),
    ("a[b-d]e", "aae", F), ("a[^b-d]e", "aze", E), (".*", ".foo", E), (".*", "foo", F),
    ("abc.def", "abcdef", F), ("abc.def", "abc.def", E), ("abc.def", "abcZdef", F),
    ("abc?def", "abcZdef", E), ("abc?def", "abcdef", F), ("**/foo/bar", "foo/bar", E),
    ("**/foo/bar", "dir/foo/bar", E), ("**/foo/bar", "dir/dir2/foo/bar", E),
    ("abc/**", "abc", F), ("abc/**", "abc/def", E), ("abc/**", "abc/def/ghi", E),
    ("**/.foo", ".foo", E), ("**/.foo", "bar.foo", F), ("a(b)c/def", "a(b)c/def", E),
    ("a(b)c/def", "a(b)c/xyz", F), ("a.|)$(}+{bc", "a.|)$(}+{bc", E),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", E),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", E),
    ("a\\\\", "a\\", E), ("a\\*b", "a*b", E),
    # moby's kinds of match, as they show through: "**x" is a plain suffix test,
    # "x**" a plain prefix test, a literal pattern a string comparison.
    ("**file", "afile", E), ("**/file", "afile", F), ("dir**", "dirty/x", E),
    ("dir/**", "dir", F), ("**", "", E), ("a.b/**", "a.b/c", E), ("a.b/**", "aXb/c", F),
    ("a^b", "a^b", E), ("*", "a/b", P), ("*", ".", E), ("?", "ab", F),
    ("a/b", "a/b/c/d", P), ("a/b", "a", F), ("a", "b/a", F), ("*/a", "b/a/c", P),
    ("[\\]a]x", "]x", E),
    ("*.md", "README.md", E), ("*.md", "docs/README.md", F), ("**/*.md", "docs/README.md", E),
    ("a]b", "a]b", E), ("[[]", "[", E), ("[a-c]/*", "b/x/y", P), ("[!a]", "!", E),
    ("[*]", "*", E), ("[?]", "x", F), ("ñ?", "ñé", E), ("[α-ω]", "λ", E),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), SINGLE_CASES)
def test_single_pattern(pattern: str, path: str, expected: str) -> None:
    matcher = PatternMatcher([pattern])
    assert matcher.matches_exact(path) is (expected == E)
    assert matcher.matches(path) is (expected != F)
    assert matcher.match_in_walk(path)[0] is (expected != F)
    assert _walk_match(matcher, path) is (expected != F)


# Go's filepath.Match table (via moby's TestMatch): (pattern, path, matches).
GO_MATCH_CASES: list[tuple[str, str, bool]] = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "abc", True), ("a*", "ab/c", True), ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False), ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True), ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False), ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False), ("ab[c]", "abc", True), ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False), ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True), ("a\\*b", "a*b", True), ("a\\*b", "ab", False),
    ("a?b", "a☺b", True), ("a[^a]b", "a☺b", True), ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False), ("[a-ζ]*", "α", True), ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False), ("a*b", "a/b", False), ("[\\]a]", "]", True),
    ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True),
    ("[x\\-]", "z", False), ("[\\-x]", "x", True), ("[\\-x]", "-", True),
    ("[\\-x]", "a", False), ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), GO_MATCH_CASES)
def test_go_filepath_match_table(pattern: str, path: str, expected: bool) -> None:
    assert PatternMatcher([pattern]).matches(path) is expected


# --- several patterns: (patterns, path, excluded) -----------------------------------------

MULTI_CASES: list[tuple[list[str], str, bool]] = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["*"], "fileutils.go", True),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    ([], "any/path/there", False),
    (["", "  "], "x", False),
    # the reference's examples
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "CHANGES.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README-public.md", False),
    (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "somedir/temp", True),
    (["*/temp*"], "temp", False),
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["temp?"], "tempa", True),
    (["temp?"], "tempab", False),
    (["**/*.go"], "a/b/c.go", True),
    # an exception re-includes a directory's content; a later pattern excludes again
    (["a", "!a/b"], "a/b/c", False),
    (["a", "!a/b", "a/b/c"], "a/b/c/d", True),
    (["a/*", "!a"], "a/b", False),
    (["!a", "a"], "a/x", True),
    (["**", "!**/keep"], "deep/er/keep", False),
    (["**", "!**/keep"], "deep/er/keep/inside", False),
    (["**", "!**/keep"], "deep/er/other", True),
    (["**", "!keep/*.txt"], "keep/a.txt", False),
    (["**", "!keep/*.txt"], "keep", True),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI_CASES)
def test_several_patterns(patterns: list[str], path: str, expected: bool) -> None:
    assert PatternMatcher(patterns).matches(path) is expected


def _walk_match(matcher: PatternMatcher, path: str) -> bool:
    """Match ``path`` the way a walk does: each parent directory first, its info passed on."""
    info = None
    parts = path.split("/")
    for depth in range(1, len(parts)):
        _, info = matcher.match_in_walk("/".join(parts[:depth]), info)
    return matcher.match_in_walk(path, info)[0]


# A walk passes each directory's results down to its entries; it must decide as `matches`
# does.  Current fsutil does not in the first rows (it records a pattern it skipped for
# the directory as unmatched: it excludes "a/b", "docs/deep/keep.md"); Docker 20.10's
# BuildKit does, as checked against it.  (patterns, path, excluded)
WALK_CASES: list[tuple[list[str], str, bool]] = [
    (["a/*", "!a"], "a/b", False),
    (["*", "!a", "a/*", "!a"], "a/c/d.txt", False),
    (["**", "!**/keep.md", "docs/deep"], "docs/deep/keep.md", True),
    (["**", "!**/keep.md", "docs/deep/**"], "docs/deep/keep.md", True),
    (["a/*", "!a"], "a", False),
    (["a", "!a/b"], "a/b/c", False),
    (["a", "!a/b", "a/b/c"], "a/b/c/d", True),
    (["**", "!**/keep"], "deep/er/keep/inside", False),
    (["*.txt", "!a"], "a/b.txt", False),
    (["x/y", "!x"], "x/y/z", False),
    (["!x", "x/y"], "x/y/z", True),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), WALK_CASES)
def test_walk_matching(patterns: list[str], path: str, expected: bool) -> None:
    matcher = PatternMatcher(patterns)
    assert matcher.matches(path) is expected
    assert matcher.match_in_walk(path)[0] is expected
    assert _walk_match(matcher, path) is expected


# --- skipping a directory whole: (patterns, directory, may skip) --------------------------

SKIP_CASES: list[tuple[list[str], str, bool]] = [
    (["node_modules"], "node_modules", True),
    (["a", "!b"], "a", True),
    (["a", "!a/keep"], "a", False),
    (["a", "!a"], "a", False),
    (["a", "!ab/keep"], "a", True),
    (["a", "!a/keep/**"], "a", False),
    (["a", "!x/*"], "a", True),
    (["a", "!x/*"], "x", False),
    (["a", "!**/keep"], "a", False),
    (["a", "!*.txt"], "a", False),
    (["a", "!x/[ab]"], "a", False),
    (["a", "!x\\*"], "a", False),
    (["a/b", "!a/b/c/d"], "a/b", False),
    (["a/b", "!a/b/c/d"], "a/bc", True),
]


@pytest.mark.parametrize(("patterns", "directory", "expected"), SKIP_CASES)
def test_may_skip_dir(patterns: list[str], directory: str, expected: bool) -> None:
    assert PatternMatcher(patterns).may_skip_dir(directory) is expected


@pytest.mark.parametrize(("patterns", "expected"), [
    ([], False), (["a", "b"], False), (["docs", "!docs/README.md"], True),
    (["docs", "  !docs/README.md"], True), (["docs", "!docs/README.md  "], True),
])
def test_exclusions(patterns: list[str], expected: bool) -> None:
    assert PatternMatcher(patterns).exclusions() is expected


def test_patterns_are_cleaned_and_blank_ones_dropped() -> None:
    # moby cleans each raw pattern, "!" included: "!a/../b" loses its "!" (an ignore
    # file never shows this, as parse_ignore_file cleans after the "!").
    matcher = PatternMatcher(["docs", "", "  ./config/ ", "!a/../b", "!./c"])
    assert matcher.patterns == ["docs", "config", "b", "!./c"]


# --- errors: (file text, the whole message) -----------------------------------------------

ERROR_CASES: list[tuple[str, str]] = [
    ("[", ".dockerignore:1:1: syntax error in pattern: [\n  1 | [\n    | ^"),
    ("ok\n  foo/[ab\n", ".dockerignore:2:7: syntax error in pattern: foo/[ab\n"
     "  2 |   foo/[ab\n    |       ^"),
    ("!", '.dockerignore:1:1: illegal exclusion pattern: "!"\n  1 | !\n    | ^'),
    ("# c\n  !   ", '.dockerignore:2:3: illegal exclusion pattern: "!"\n  2 |   !   \n    |   ^'),
    ("!a[", ".dockerignore:1:3: syntax error in pattern: a[\n  1 | !a[\n    |   ^"),
    ("a\\", ".dockerignore:1:2: syntax error in pattern: a\\\n  1 | a\\\n    |  ^"),
    ("[]a]", ".dockerignore:1:1: syntax error in pattern: []a]\n  1 | []a]\n    | ^"),
    ("x/[z-a]", ".dockerignore:1:1: syntax error in pattern: x/[z-a]\n  1 | x/[z-a]\n    | ^"),
    ("./b/[x-", ".dockerignore:1:1: syntax error in pattern: b/[x-\n  1 | ./b/[x-\n    | ^"),
]


@pytest.mark.parametrize(("text", "message"), ERROR_CASES)
def test_bad_patterns(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        PatternMatcher.from_text(text)
    assert str(caught.value) == message


# Go's filepath.Match syntax errors (moby's table), each rejected with a DockerfileError.
BAD_PATTERNS = ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[",
                "[^]", "[]", "a/[b", "[\\"]


@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_go_syntax_errors(pattern: str) -> None:
    with pytest.raises(DockerfileError, match="syntax error in pattern"):
        PatternMatcher([pattern])


def test_error_names_the_ignore_file() -> None:
    with pytest.raises(DockerfileError) as caught:
        PatternMatcher.from_text("\n\nbad[", filename="app.Dockerfile.dockerignore")
    assert (caught.value.filename, caught.value.line, caught.value.column) == (
        "app.Dockerfile.dockerignore", 3, 4)


def test_a_plain_list_reports_the_index_as_the_line() -> None:
    with pytest.raises(DockerfileError) as caught:
        PatternMatcher(["a", "b", "!"])
    assert caught.value.line == 3


def test_ignore_lines_keep_their_position() -> None:
    line = IgnoreLine("q[", 7, 3, "  q[")
    with pytest.raises(DockerfileError) as caught:
        PatternMatcher([line])
    assert (caught.value.line, caught.value.column) == (7, 4)


# --- whatever the input: a matcher or a DockerfileError, and matching never raises --------

@given(text=st.text(alphabet=st.sampled_from(list("ab/*?[]^!-\\. \n#\t")), max_size=40),
       path=st.text(alphabet=st.sampled_from(list("ab/*.[]-")), max_size=12))
def test_any_ignore_file(text: str, path: str) -> None:
    try:
        matcher = PatternMatcher.from_text(text)
    except DockerfileError:
        return
    assert matcher.matches(path) is matcher.match_in_walk(path)[0]
    matcher.matches_exact(path)
    matcher.may_skip_dir(path)
