"""``.dockerignore`` files: reading them and matching paths against their patterns.

Pure: no filesystem access (the client's context walker in ``dockyard.cluster._context`` uses it).
The semantics are moby's (``patternmatcher`` and ``patternmatcher/ignorefile``) and
tonistiigi/fsutil's walker, as BuildKit applies them to a local build context:

- a line is a comment only when ``#`` is its very first character; other lines are
  trimmed, blank ones dropped, ``!`` marks an exception (a pattern that re-includes), and
  each pattern is cleaned like Go's ``filepath.Clean`` with a leading ``/`` removed;
- ``*`` and ``?`` never cross a ``/``; ``**`` crosses any number of directories; ``[...]``
  classes and ``\\`` escapes work as in Go's ``filepath.Match``;
- the last pattern that matches a path decides, and a pattern that matches a directory
  matches everything under it.

Paths given to the matcher are relative, slash-separated and clean (``a/b``, not ``./a/b``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from .._errors import DockerfileError

__all__ = ["IgnoreLine", "MatchInfo", "PatternMatcher", "parse_ignore_file",
           "parse_ignore_lines"]

MatchInfo = tuple[bool, ...]
"""Per pattern, whether it matches a directory or one of its parents (for a walk)."""

# Go's unicode.IsSpace: what strings.TrimSpace removes (Python's str.strip removes more).
_GO_SPACE = (" \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
             "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_BOM = "\ufeff"
# The characters that make an exception pattern more than a literal path prefix (fsutil).
_GLOB_CHARS = frozenset("*[]?^\\")


@dataclass(frozen=True, slots=True)
class IgnoreLine:
    """One pattern of an ignore file, where it came from.

    ``pattern`` is what ``parse_ignore_file`` returns for the line (``!`` kept);
    ``line`` and ``column`` (1-based) locate the pattern's first character in ``source``,
    the physical line as written.
    """

    pattern: str
    line: int
    column: int
    source: str


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: the shortest equivalent path, ``"."`` for the empty one."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _go_dir(path: str) -> str:
    """Go's ``path.Dir``: everything before the last slash, cleaned."""
    return go_clean(path[: path.rfind("/") + 1])


def _clean_pattern(body: str) -> str:
    cleaned = go_clean(body)
    return cleaned[1:] if len(cleaned) > 1 and cleaned[0] == "/" else cleaned


def _body_column(raw: str, body_start: int, body: str) -> int:
    """The 1-based column where ``body`` starts in ``raw``, searching from ``body_start``."""
    found = raw.find(body, body_start) if body else -1
    return (found if found >= 0 else body_start) + 1


def _read_line(raw: str, number: int) -> IgnoreLine | None:
    """One physical line -> its pattern, or None for a comment or a blank line."""
    if raw.startswith("#"):
        return None
    text = raw.strip(_GO_SPACE)
    if not text:
        return None
    start = raw.find(text)
    if text[0] != "!":
        return IgnoreLine(_clean_pattern(text), number, start + 1, raw)
    body = text[1:].strip(_GO_SPACE)
    if not body:
        return IgnoreLine("!", number, start + 1, raw)
    column = _body_column(raw, start + 1, body)
    return IgnoreLine("!" + _clean_pattern(body), number, column, raw)


def parse_ignore_lines(text: str) -> list[IgnoreLine]:
    """The patterns of an ignore file with their positions (see ``parse_ignore_file``)."""
    lines = text.split("\n")
    lines[0] = lines[0].removeprefix(_BOM)
    result: list[IgnoreLine] = []
    for number, raw in enumerate(lines, start=1):
        entry = _read_line(raw.removesuffix("\r"), number)
        if entry is not None:
            result.append(entry)
    return result


def parse_ignore_file(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, in order, as moby's ``ReadAll`` gives them.

    A leading UTF-8 BOM is dropped; a line starting with ``#`` is a comment; lines are
    trimmed and blank ones skipped; a pattern (and the part after ``!``) is cleaned
    (``./a/../b`` -> ``b``, ``/a/`` -> ``a``).  A line that is only ``!`` stays ``"!"``:
    it is the matcher that rejects it.
    """
    return [entry.pattern for entry in parse_ignore_lines(text)]


# --- pattern syntax (Go's filepath.Match rules) ------------------------------------------

def _class_item_end(pattern: str, at: int) -> int | None:
    """The index after one class character (``x`` or ``\\x``) at ``at``; None if malformed.

    Like Go, a class item may not be ``-`` or ``]`` unescaped, and may not end the pattern.
    """
    if at >= len(pattern) or pattern[at] in "-]":
        return None
    if pattern[at] == "\\":
        at += 1
        if at >= len(pattern):
            return None
    at += 1
    return at if at < len(pattern) else None


def _class_end(pattern: str, start: int) -> int | None:
    """The index after the ``]`` closing the class opened at ``start``; None if malformed."""
    at = start + 1
    if at < len(pattern) and pattern[at] == "^":
        at += 1
    ranges = 0
    while not (at < len(pattern) and pattern[at] == "]" and ranges > 0):
        end = _class_item_end(pattern, at)
        if end is not None and pattern[end] == "-":
            end = _class_item_end(pattern, end + 1)
        if end is None:
            return None
        at, ranges = end, ranges + 1
    return at + 1


def syntax_error_at(pattern: str) -> int | None:
    """The index of the construct that makes ``pattern`` malformed, None if it is valid."""
    at = 0
    while at < len(pattern):
        char = pattern[at]
        if char == "\\":
            if at + 1 >= len(pattern):
                return at
            at += 2
        elif char == "[":
            end = _class_end(pattern, at)
            if end is None:
                return at
            at = end
        else:
            at += 1
    return None


# --- compiled patterns -------------------------------------------------------------------

class _Kind(Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    REGEXP = "regexp"


def _class_char(body: str, at: int) -> tuple[str, int]:
    """One class character (``x`` or ``\\x``) at ``at``, regex-escaped, and the next index."""
    if body[at] == "\\":
        at += 1
    return re.escape(body[at]), at + 1


def _class_regex(body: str) -> str:
    """A Python character class for a (validated) Go class body, brackets excluded."""
    negate = body.startswith("^")
    out, at = ["[^" if negate else "["], 1 if negate else 0
    while at < len(body):
        low, at = _class_char(body, at)
        out.append(low)
        if at < len(body) and body[at] == "-":
            high, at = _class_char(body, at + 1)
            out.append("-" + high)
    return "".join(out) + "]"


@dataclass(slots=True)
class _Compiler:
    """Turns one cleaned pattern into moby's match kind plus, for REGEXP, a regex."""

    text: str
    at: int = 0
    kind: _Kind = _Kind.EXACT
    regex: str = ""

    def run(self) -> tuple[_Kind, re.Pattern[str] | None]:
        first = True
        while self.at < len(self.text):
            self._step(first)
            first = False
        if self.kind is not _Kind.REGEXP:
            return self.kind, None
        return self.kind, re.compile(self.regex, re.DOTALL)

    def _step(self, first: bool) -> None:
        char = self.text[self.at]
        self.at += 1
        if char == "*" and self._peek() == "*":
            self._double_star(first)
        elif char == "*":
            self._add("[^/]*")
        elif char == "?":
            self._add("[^/]")
        elif char == "\\" and self.at < len(self.text):
            self._add(re.escape(self.text[self.at]))
            self.at += 1
        elif char == "[":
            end = _class_end(self.text, self.at - 1) or len(self.text)
            self._add(_class_regex(self.text[self.at:end - 1]))
            self.at = end
        elif char == "]":
            self._add(re.escape(char))
        else:
            self.regex += re.escape(char)

    def _double_star(self, first: bool) -> None:
        self.at += 1
        if self._peek() == "/":
            self.at += 1
        if self.at < len(self.text):
            self._add("(?:.*/)?")
        elif self.kind is _Kind.EXACT:
            self.kind = _Kind.PREFIX
        else:
            self._add(".*")
        if first:
            self.kind = _Kind.SUFFIX

    def _peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def _add(self, regex: str) -> None:
        self.regex += regex
        self.kind = _Kind.REGEXP


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str
    exception: bool
    kind: _Kind
    regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, text: str, exception: bool) -> _Pattern:
        kind, regex = _Compiler(text).run()
        return cls(text, exception, kind, regex)

    def match(self, path: str) -> bool:
        if self.kind is _Kind.EXACT:
            return path == self.text
        if self.kind is _Kind.PREFIX:
            return path.startswith(self.text[:-2])
        if self.kind is _Kind.SUFFIX:
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None

    def match_or_parent(self, path: str, parents: list[str]) -> bool:
        return self.match(path) or any(self.match(parent) for parent in parents)

    @property
    def literal_prefix(self) -> bool:
        """True when the pattern, less a trailing ``/**`` or ``/*``, has no glob character."""
        stem = self.text.removesuffix("/**").removesuffix("/*")
        return not _GLOB_CHARS.intersection(stem)


def _parent_paths(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``: the directories above a path, outermost first."""
    parent = _go_dir(path)
    if parent == ".":
        return []
    parts = parent.split("/")
    return ["/".join(parts[: index + 1]) for index in range(len(parts))]


def _as_lines(patterns: Iterable[str | IgnoreLine]) -> list[IgnoreLine]:
    """Plain strings get their position in the list as their line number."""
    return [entry if isinstance(entry, IgnoreLine) else IgnoreLine(entry, index, 1, entry)
            for index, entry in enumerate(patterns, start=1)]


def _pattern_error(message: str, entry: IgnoreLine, filename: str, offset: int = 0
                   ) -> DockerfileError:
    return DockerfileError(message, filename=filename, line=entry.line,
                           column=entry.column + offset, source_line=entry.source)


def _compile_line(entry: IgnoreLine, filename: str) -> _Pattern | None:
    """One ignore line -> its compiled pattern (None for a blank one), or DockerfileError."""
    text = entry.pattern.strip(_GO_SPACE)
    if not text:
        return None
    text = go_clean(text)
    exception = text[0] == "!"
    if text == "!":
        raise _pattern_error('illegal exclusion pattern: "!"', entry, filename)
    body = text[1:] if exception else text
    bad = syntax_error_at(body)
    if bad is not None:
        verbatim = entry.source[entry.column - 1:].startswith(body)
        raise _pattern_error(f"syntax error in pattern: {body}", entry, filename,
                             bad if verbatim else 0)
    try:
        return _Pattern.compile(body, exception)
    except re.error as error:  # a class range like [z-a], which Go's regexp rejects too
        raise _pattern_error(f"syntax error in pattern: {body}", entry, filename) from error


class PatternMatcher:
    """moby's ``PatternMatcher``: is a context path excluded by an ignore file's patterns?

    ``patterns`` are strings as ``parse_ignore_file`` returns them, or ``IgnoreLine``s
    (from ``parse_ignore_lines``) so that errors point at the right line.  A malformed
    pattern raises ``DockerfileError`` naming ``filename``, the line and the column.
    """

    def __init__(self, patterns: Iterable[str | IgnoreLine], *,
                 filename: str = ".dockerignore") -> None:
        self.filename = filename
        compiled = (_compile_line(entry, filename) for entry in _as_lines(patterns))
        self._patterns = tuple(pattern for pattern in compiled if pattern is not None)
        self._exceptions = tuple(p for p in self._patterns if p.exception)

    @classmethod
    def from_text(cls, text: str, *, filename: str = ".dockerignore") -> PatternMatcher:
        """The matcher for the content of an ignore file."""
        return cls(parse_ignore_lines(text), filename=filename)

    def __repr__(self) -> str:
        return (f"PatternMatcher({self.filename!r}, patterns={len(self._patterns)}, "
                f"exceptions={len(self._exceptions)})")

    @property
    def patterns(self) -> list[str]:
        """The cleaned patterns, ``!`` restored on exceptions."""
        return [("!" if p.exception else "") + p.text for p in self._patterns]

    def exclusions(self) -> bool:
        """True when some pattern is a ``!`` exception (moby's ``Exclusions``)."""
        return bool(self._exceptions)

    def matches(self, path: str) -> bool:
        """True when ``path`` is excluded: it or one of its parent directories matches,
        and no later exception re-includes it (moby's ``MatchesOrParentMatches``)."""
        parents = _parent_paths(path)
        matched = False
        for pattern in self._patterns:
            if pattern.exception == matched and pattern.match_or_parent(path, parents):
                matched = not pattern.exception
        return matched

    def matches_exact(self, path: str) -> bool:
        """Like ``matches`` but without looking at parent directories."""
        matched = False
        for pattern in self._patterns:
            if pattern.exception == matched and pattern.match(path):
                matched = not pattern.exception
        return matched

    def match_in_walk(self, path: str, parent: MatchInfo | None = None
                      ) -> tuple[bool, MatchInfo]:
        """``matches`` for a walk: ``parent`` is what this returned for the directory of
        ``path`` (None: work it out from the path).  Returns whether ``path`` is excluded
        and the info to pass on to its own entries.

        The info says, per pattern, whether it matches the path or one of its parents,
        so each entry costs one test per pattern whatever its depth.  (BuildKit's fsutil
        reuses parent results too, but records a pattern as unmatched wherever it skipped
        it, so ``["a/*", "!a"]`` excludes ``a/b`` in its walk; Docker 20.10 includes it,
        as ``matches`` does, and so do we.)
        """
        if not self._patterns:  # no .dockerignore: nothing to test, entry after entry
            return False, ()
        if parent is None:
            ancestors = _parent_paths(path)
            parent = tuple(p.match_or_parent(ancestors[-1], ancestors[:-1]) if ancestors
                           else False for p in self._patterns)
        info = tuple(above or p.match(path) for above, p in zip(parent, self._patterns,
                                                                 strict=True))
        matched = False
        for pattern, hit in zip(self._patterns, info, strict=True):
            if hit and pattern.exception == matched:
                matched = not pattern.exception
        return matched, info

    def may_skip_dir(self, path: str) -> bool:
        """True when no exception can re-include anything under the directory ``path``,
        so a walk may skip an excluded directory whole.

        As fsutil decides it: only when every exception is a literal path (a trailing
        ``/*`` or ``/**`` allowed) and none lies under ``path``.
        """
        if not all(pattern.literal_prefix for pattern in self._exceptions):
            return False
        below = path + "/"
        return not any(_stem(p.text).startswith(below) for p in self._exceptions)


def _stem(text: str) -> str:
    return text.removesuffix("/**").removesuffix("/*") + "/"
