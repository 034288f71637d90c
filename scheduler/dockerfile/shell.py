"""Shell-word expansion of Dockerfile arguments, as BuildKit's frontend does it.

``process_word`` turns one argument into one string: ``$name`` and ``${name...}`` are
replaced from ``env``, quotes and escapes are removed.  ``process_words`` does the same and
then splits the result into words on unquoted whitespace (text coming from an expansion
outside double quotes is split too; quoted and escaped text is not; empty words vanish).

Supported forms (semantics of ``frontend/dockerfile/shell/lex.go``)::

    $v  ${v}                      value, "" when unset
    ${v:-w}  ${v-w}               w when v is unset (or empty, with the colon)
    ${v:+w}  ${v+w}               w when v is set (and not empty, with the colon)
    ${v:?m}  ${v?m}               error "v: m" when v is unset (or empty, with the colon)
    ${v#p}  ${v##p}  ${v%p}  ${v%%p}   remove the shortest/longest matching prefix/suffix
    ${v/p/r}  ${v//p/r}           replace the first/every match of p by r

Patterns know ``*`` and ``?`` and the escapes ``\\*``, ``\\?``, ``\\\\``; brackets are
literal (BuildKit has no bracket expressions).  ``$1``, ``$@``, ``$$``... are looked up
as names like any other.  A ``$`` not followed by a name is kept.  Inside single quotes
nothing is special; inside double quotes only ``$`` and the escape character are, and the
escape character escapes only ``"``, ``$`` and itself.

Which lexer BuildKit uses where: most instructions (ENV, LABEL, ARG defaults, WORKDIR, USER,
COPY/ADD sources and flags, FROM...) take ``Lexer(directives.escape)`` with quote removal;
EXPOSE and the like split with ``process_words``; an expanded heredoc body (``<<EOF`` with
an unquoted delimiter) takes ``Lexer("\\", skip_process_quotes=True)`` -- always the
backslash, quotes kept as text, escapes still removed.  ``Expansion.unmatched`` feeds the
UndefinedVar check, ``Expansion.matched`` the "this ARG was used" tracking.

Every error is a ``DockerfileError`` at the default position (``Dockerfile:1:1``), because a
word has no position of its own.  The caller knows the instruction: catch the error and
raise ``node.error(exc.message, filename, at=word)`` in its place.

Nothing here mutates ``env``.  Every word of one instruction must be expanded against the
environment as it was *before* that instruction (``ENV a=1 b=$a`` reads the old ``a``):
that is the caller's job -- pass the old mapping, build the new one afterwards.

Deviations from BuildKit, where its behaviour is an accident of Go:

- ``${name`` cut short after the name says ``syntax error: missing '}'`` (Go prints an
  "unsupported modifier" with a replacement character);
- a pattern ending in a lone ``\\`` says ``invalid escape '\\' at end of pattern``;
- expansions nested more than 64 deep are refused instead of recursing without bound;
- patterns are matched without backtracking (``_Glob``: the same matches Go's ``regexp``
  and Python's ``re`` find, in ``len(value) * len(pattern)`` steps at most), and one word
  may spend at most ``_MATCH_STEP_LIMIT`` steps on them: past that it fails with
  ``pattern matching needs more than N steps`` rather than stall the frontend (a
  ``${v//p/r}`` replacement costs a step per piece of ``r`` too);
- an expanded word, and every text it is built from, holds at most ``MAX_WORD_SIZE``
  characters (256 KiB; BuildKit has no limit): past it the word fails with ``the expanded
  word would be longer than N characters`` naming its longest variable, and a hint.  Work
  is linear in the word and what it expands to, so the limit bounds the time too;
- a word over 120 characters is shown cut short in error messages.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .._errors import DockerfileError
from ._goquote import quote_shown

__all__ = ["MAX_WORD_SIZE", "Expansion", "Lexer", "process_word", "process_words"]

_EOF = ""
_ESCAPE_TOKENS = ("\\", "`")
# Names the POSIX shell reserves; BuildKit reads each as a one-character name.
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
# Go's unicode.IsSpace: the Latin-1 spaces plus the White_Space property.
_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SPLIT = re.compile("[" + re.escape("".join(sorted(_SPACES))) + "]+")
_MAX_DEPTH = 64
# Characters one expanded word may hold: twice the longest string Linux hands a process
# (MAX_ARG_STRLEN, 128 KiB), four times BuildKit's longest Dockerfile line.  Every text a
# word is built from (the word, each ${...} inside it, a ${v//p/r} replacement) is held to
# it as it grows, so no word costs more than a few times this much work.
MAX_WORD_SIZE = 256 * 1024
# Pattern-matching steps (one thread advanced over one character) allowed in one word.
# A search costs at most len(value) * (len(pattern) + 1) steps, so no real Dockerfile
# comes near; the limit only stops ${v//p/r} on huge values from stalling the frontend.
_MATCH_STEP_LIMIT = 5_000_000
_MISSING_BRACE = "syntax error: missing '}'"
_MISSING_SLASH = "syntax error: missing '/' in ${}"


@dataclass(frozen=True, slots=True)
class Expansion:
    """The outcome of expanding one word.

    ``result`` is the word as one string, ``words`` the same split as ``process_words``
    splits it.  ``matched`` are the variable names that were looked up and found in the
    environment, ``unmatched`` those looked up and not found (the UndefinedVar check and
    the "ARG is used" tracking read them); the two never share a name.
    """

    result: str
    words: tuple[str, ...]
    matched: frozenset[str]
    unmatched: frozenset[str]


class Lexer:
    """Expands words with one escape character and one set of options.

    ``raw_quotes`` keeps quote characters in the output, ``raw_escapes`` keeps escape
    characters, ``skip_process_quotes`` treats quotes as ordinary characters, and
    ``skip_unset_env`` leaves a reference to an unset variable as written (``$v``,
    ``${v}``, ``${v:-w}``...).  ``max_size`` bounds each expanded word (a heredoc body,
    many lines long, is given more).  A ``Lexer`` holds no per-word state: it is safe to
    share.
    """

    def __init__(
        self,
        escape: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_process_quotes: bool = False,
        skip_unset_env: bool = False,
        max_size: int = MAX_WORD_SIZE,
    ) -> None:
        if escape not in _ESCAPE_TOKENS:
            raise DockerfileError(f"invalid escape token '{escape}' does not match ` or \\")
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_process_quotes = skip_process_quotes
        self.skip_unset_env = skip_unset_env
        self.max_size = max_size

    def __repr__(self) -> str:
        return f"Lexer(escape={self.escape!r})"

    def expand(self, word: str, env: Mapping[str, str]) -> Expansion:
        """Expand ``word`` against ``env``; the result, its words and the names seen."""
        state = _Expander(self, word, env)
        try:
            result, words = state.run()
        except DockerfileError as exc:
            raise DockerfileError(f"failed to process {quote_shown(word)}: {exc.message}",
                                  hint=exc.hint) from None
        except RecursionError:
            message = "expansion nested too deeply"
            raise DockerfileError(f"failed to process {quote_shown(word)}: {message}") from None
        return Expansion(result, tuple(words), frozenset(state.matched),
                         frozenset(state.unmatched))

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """``word`` expanded to one string."""
        return self.expand(word, env).result

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """``word`` expanded, then split on unquoted whitespace; empty words dropped."""
        return list(self.expand(word, env).words)


def process_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand ``word`` to one string; quotes and escapes removed.  See the module doc."""
    return Lexer(escape).process_word(word, env)


def process_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand ``word`` and split it into words as BuildKit's ``ProcessWords`` does."""
    return Lexer(escape).process_words(word, env)


@functools.cache
def _plain_run(escape: str, stop: str, quotes: bool) -> re.Pattern[str]:
    """Characters ``_scan`` may take in one go: none that starts a quote, an escape or an
    expansion, nor ``stop``."""
    special = "$" + escape + stop + ("'\"" if quotes else "")
    return re.compile(f"[^{re.escape(special)}]+")


_DOUBLE_QUOTED_RUN = {escape: re.compile('[^"$' + re.escape(escape) + "]+")
                      for escape in _ESCAPE_TOKENS}


class _Cursor:
    """Reads a word a character (or a run of plain text) at a time; ``_EOF`` ("") past
    the end.

    Like Go's text/scanner, a byte-order mark at the very start is skipped.
    """

    def __init__(self, text: str) -> None:
        self._text = text.removeprefix("\ufeff")
        self._pos = 0  # index of the next character; never beyond len(_text)

    def peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else _EOF

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self._pos += 1
        return ch

    def run(self, pattern: re.Pattern[str]) -> str:
        """The text ``pattern`` matches here, consumed; "" when it does not match."""
        found = pattern.match(self._text, self._pos)
        if found is None:
            return ""
        self._pos = found.end()
        return found.group()

    def until(self, ch: str) -> str | None:
        """The text before the next ``ch``, consumed with it; None (all consumed) when
        there is none."""
        end = self._text.find(ch, self._pos)
        if end < 0:
            self._pos = len(self._text)
            return None
        text, self._pos = self._text[self._pos:end], end + 1
        return text


class _Words:
    """Accumulates shell words (``process_words``, and the parser's heredoc scan), in
    pieces joined once per word (adding text costs its length, never the length of the
    word so far)."""

    def __init__(self) -> None:
        self._word: list[str] = []  # pieces of the word being built; may be all ""
        self._done: list[str] = []  # finished words, never empty strings

    def add_char(self, ch: str) -> None:
        """An unquoted character: whitespace ends the current word."""
        if ch in _SPACES:
            self._end_word()
        else:
            self._word.append(ch)

    def add_text(self, text: str) -> None:
        """Unquoted text (an expansion): split like characters typed."""
        first, *rest = _SPLIT.split(text)
        self._word.append(first)
        if rest:
            self._end_word()
            *whole, last = rest
            self._done.extend(filter(None, whole))
            self._word.append(last)

    def add_raw(self, text: str) -> None:
        """Quoted or escaped text: never split."""
        self._word.append(text)

    def result(self) -> list[str]:
        self._end_word()
        return self._done

    def _end_word(self) -> None:
        word = "".join(self._word)
        if word:
            self._done.append(word)
        self._word = []


class _Expander:
    """The state of expanding one word: where we are and which names were looked up."""

    def __init__(self, lexer: Lexer, word: str, env: Mapping[str, str]) -> None:
        self._lexer = lexer
        self._escape = lexer.escape
        self._cursor = _Cursor(word)
        self._env = env
        self._raw_escapes = lexer.raw_escapes  # changes inside ${v#p}, ${v%p}, ${v/p/r}
        self._depth = 0  # how many ${...} enclose the current position
        self._budget = _Budget(_MATCH_STEP_LIMIT, lexer.max_size)  # shared by the word
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def run(self) -> tuple[str, list[str]]:
        return self._scan(_EOF)

    # -- the word, quotes and escapes ------------------------------------------------

    def _until(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Scan up to and including ``stop`` with escapes kept or not."""
        saved, self._raw_escapes = self._raw_escapes, raw_escapes
        try:
            return self._scan(stop)
        finally:
            self._raw_escapes = saved

    def _scan(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        size = 0  # len("".join(result)), held to the budget's size limit
        words = _Words()
        plain = _plain_run(self._escape, stop, not self._lexer.skip_process_quotes)
        while (ch := self._cursor.peek()) != _EOF:
            if stop and ch == stop:
                self._cursor.next()
                return "".join(result), words.result()
            if piece := self._cursor.run(plain):
                words.add_text(piece)
            else:
                piece = self._piece(ch, words)
            size = self._budget.grow(size, piece)
            result.append(piece)
        if stop:
            raise DockerfileError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def _piece(self, ch: str, words: _Words) -> str:
        """Consume what starts at ``ch``; record it in ``words`` and return its text."""
        if ch == "$":
            text = self._dollar()
            words.add_text(text)
        elif ch in "'\"" and not self._lexer.skip_process_quotes:
            text = self._single_quoted() if ch == "'" else self._double_quoted()
            words.add_raw(text)
        else:
            text = self._plain(words)
        return text

    def _plain(self, words: _Words) -> str:
        ch = self._cursor.next()
        if ch != self._escape:
            words.add_char(ch)
            return ch
        kept = ch if self._raw_escapes else ""
        words.add_raw(kept)
        escaped = self._cursor.next()  # an escape at the very end is dropped
        words.add_raw(escaped)
        return kept + escaped

    def _single_quoted(self) -> str:
        self._cursor.next()
        text = self._cursor.until("'")
        if text is None:
            raise DockerfileError(
                "unexpected end of statement while looking for matching single-quote")
        return f"'{text}'" if self._lexer.raw_quotes else text

    def _double_quoted(self) -> str:
        quote = self._cursor.next()
        text = [quote] if self._lexer.raw_quotes else []
        size = len(text)  # len("".join(text)), held to the budget's size limit
        plain = _DOUBLE_QUOTED_RUN[self._escape]
        while (ch := self._cursor.peek()) != '"':
            if ch == _EOF:
                raise DockerfileError(
                    "unexpected end of statement while looking for matching double-quote")
            piece = self._cursor.run(plain) or (
                self._dollar() if ch == "$" else self._double_quoted_char())
            size = self._budget.grow(size, piece)
            text.append(piece)
        self._cursor.next()
        if self._lexer.raw_quotes:
            text.append(ch)
        return "".join(text)

    def _double_quoted_char(self) -> str:
        """Inside double quotes the escape character escapes only ", $ and itself."""
        ch = self._cursor.next()
        if ch != self._escape:
            return ch
        kept = ch if self._raw_escapes else ""
        following = self._cursor.peek()
        if following == _EOF:
            return kept
        if following in ('"', "$", self._escape):
            return kept + self._cursor.next()
        return kept + ch

    # -- $ expansions ------------------------------------------------------------------

    def _dollar(self) -> str:
        self._cursor.next()
        if self._cursor.peek() != "{":
            return self._bare()
        self._cursor.next()
        self._depth += 1
        try:
            return self._braced()
        finally:
            self._depth -= 1

    def _bare(self) -> str:
        name = self._name()
        if not name:
            return "$"
        value = self._lookup(name)
        if value is None:
            return "$" + name if self._lexer.skip_unset_env else ""
        return value

    def _braced(self) -> str:
        if self._depth > _MAX_DEPTH:
            raise DockerfileError(f"expansions nested more than {_MAX_DEPTH} deep")
        first = self._cursor.peek()
        if first == _EOF:
            raise DockerfileError(_MISSING_BRACE)
        if first in "{}:":
            raise DockerfileError("syntax error: bad substitution")
        name = self._name()
        op = self._cursor.next()
        if op == "}":
            return self._braced_value(name)
        if op == "/":
            return self._replace(name)
        if op == ":":
            return self._modifier(name, op + self._cursor.next())
        if op == _EOF:
            raise DockerfileError(_MISSING_BRACE)
        if op in "+-?#%":
            return self._modifier(name, op)
        raise DockerfileError(f"unsupported modifier ({op}) in substitution")

    def _braced_value(self, name: str) -> str:
        value = self._lookup(name)
        if value is None:
            return f"${{{name}}}" if self._lexer.skip_unset_env else ""
        return value

    def _modifier(self, name: str, op: str) -> str:
        """``${name<op>word}``: op is one of - + ? # % , optionally after a colon."""
        kind = op[-1:]
        word = self._nested("}", kind in ("#", "%"), _MISSING_BRACE)
        value = self._lookup(name)
        if value is None and self._lexer.skip_unset_env:
            return f"${{{name}{op}{word}}}"
        absent = value is None or (op.startswith(":") and value == "")
        if kind == "-":
            return word if absent or value is None else value
        if kind == "+":
            return "" if absent else word
        if kind == "?":
            return _required(name, value, word, colon=op.startswith(":"))
        if kind in ("#", "%"):
            return _trim(kind, word, value or "", self._budget)
        raise DockerfileError(f"unsupported modifier ({op}) in substitution")

    def _replace(self, name: str) -> str:
        """``${name/pattern/replacement}`` and ``${name//pattern/replacement}``."""
        every = self._cursor.peek() == "/"
        if every:
            self._cursor.next()
        pattern = self._nested("/", True, _MISSING_SLASH)
        replacement = self._nested("}", True, _MISSING_BRACE)
        value = self._lookup(name)
        if value is None and self._lexer.skip_unset_env:
            # BuildKit writes a single slash back, even for ${name//p/r}.
            return f"${{{name}/{pattern}/{replacement}}}"
        glob = _compile_pattern(pattern, greedy=True, budget=self._budget)
        if every:
            return _replace_all(glob, value or "", replacement, self._budget)
        return _replace_first(glob, value or "", replacement)

    def _nested(self, stop: str, raw_escapes: bool, missing: str) -> str:
        """The word inside ${...} up to ``stop``; cut short by the end -> ``missing``."""
        try:
            return self._until(stop, raw_escapes)[0]
        except DockerfileError:
            if self._cursor.peek() == _EOF:
                raise DockerfileError(missing) from None
            raise

    def _name(self) -> str:
        """A name: digits only, one special character, or letters, digits and _."""
        first = self._cursor.peek()
        if first.isdecimal():
            return self._take(str.isdecimal)
        if first in _SPECIAL_PARAMS:
            return self._cursor.next()
        return self._take(_is_name_char)

    def _take(self, accept: Callable[[str], bool]) -> str:
        taken = []
        while (ch := self._cursor.peek()) != _EOF and accept(ch):
            taken.append(self._cursor.next())
        return "".join(taken)

    def _lookup(self, name: str) -> str | None:
        if name in self._env:
            self.matched.add(name)
            value = self._env[name]
            self._budget.saw(name, value)
            return value
        self.unmatched.add(name)
        return None


def _is_name_char(ch: str) -> bool:
    return ch.isalpha() or ch.isdecimal() or ch == "_"


def _required(name: str, value: str | None, message: str, *, colon: bool) -> str:
    """``${name?message}`` / ``${name:?message}``."""
    if value is None:
        raise DockerfileError(f"{name}: {message or 'is not allowed to be unset'}")
    if colon and value == "":
        raise DockerfileError(f"{name}: {message or 'is not allowed to be empty'}")
    return value


# -- patterns ------------------------------------------------------------------------------


def _trim(kind: str, word: str, value: str, budget: _Budget) -> str:
    """``#``/``##`` remove a prefix, ``%``/``%%`` a suffix; doubled means longest."""
    greedy = word.startswith(kind)
    pattern = word[1:] if greedy else word
    if kind == "#":
        return _trim_prefix(pattern, value, greedy, budget)
    # The shortest rightmost match is the shortest leftmost match of the reversed text.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy, budget)[::-1]


def _trim_prefix(pattern: str, value: str, greedy: bool, budget: _Budget) -> str:
    span = _compile_pattern(pattern, greedy=greedy, budget=budget).search(value, 0,
                                                                          anchored=True)
    return value[span[1]:] if span else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern, keeping each ``\\x`` escape pair in its order."""
    tokens: list[str] = []
    index = 0
    while index < len(pattern):
        size = 2 if pattern[index] == "\\" and index + 1 < len(pattern) else 1
        tokens.append(pattern[index:index + size])
        index += size
    return "".join(reversed(tokens))


class _Budget:
    """What one word may cost: pattern-matching steps (spent so far, and how many are
    allowed) and the size of each text it is built from."""

    def __init__(self, limit: int, size_limit: int = MAX_WORD_SIZE) -> None:
        self.limit = limit
        self.used = 0  # steps spent; never above limit without raising
        self.size_limit = size_limit
        self._largest = ("", 0)  # the longest variable value looked up: (name, length)

    def spend(self, steps: int) -> None:
        self.used += steps
        if self.used > self.limit:
            raise DockerfileError(f"pattern matching needs more than {self.limit} steps")

    def saw(self, name: str, value: str) -> None:
        """A variable was looked up: the longest one is named if the word grows too long."""
        if len(value) >= self._largest[1]:
            self._largest = (name, len(value))

    def grow(self, size: int, piece: str) -> int:
        """``size`` plus ``piece``; past the size limit, the error naming the variable."""
        size += len(piece)
        if size > self.size_limit:
            raise self._too_long()
        return size

    def _too_long(self) -> DockerfileError:
        name, length = self._largest
        culprit = f" (${name} alone is {length} characters)" if name else ""
        return DockerfileError(
            f"the expanded word would be longer than {self.size_limit} characters{culprit}",
            hint=f"a word may expand to at most {self.size_limit} characters: keep large "
                 "data out of ARG and ENV values (COPY it in as a file, or pass it with "
                 "RUN --mount=type=secret)")


# A pattern token: (kind, character); the character matters for _LITERAL only.
_LITERAL, _ANY, _STAR = 0, 1, 2
_Token = tuple[int, str]


def _compile_pattern(pattern: str, *, greedy: bool, budget: _Budget) -> _Glob:
    """A shell pattern (``*``, ``?``, ``\\`` escapes) ready to match."""
    try:
        tokens = _pattern_tokens(pattern)
    except DockerfileError as exc:
        raise DockerfileError(
            f"invalid pattern ({pattern}) in substitution: {exc.message}") from None
    return _Glob(tokens, greedy=greedy, budget=budget)


def _pattern_tokens(pattern: str) -> tuple[_Token, ...]:
    cursor = _Cursor(pattern)
    out: list[_Token] = []
    while (ch := cursor.next()) != _EOF:
        if ch == "*":
            out.append((_STAR, ""))
        elif ch == "?":
            out.append((_ANY, ""))
        elif ch != "\\":
            out.append((_LITERAL, ch))
        elif (escaped := _pattern_escape(cursor)) is not None:
            out.append((_LITERAL, escaped))
    return tuple(out)


def _pattern_escape(cursor: _Cursor) -> str | None:
    """After a backslash: ``\\}`` and ``\\/`` lose it (None), ``\\*``, ``\\?``,
    ``\\\\`` are the literal character."""
    following = cursor.peek()
    if following in ("}", "/"):
        return None
    cursor.next()
    if following == _EOF:
        raise DockerfileError("invalid escape '\\' at end of pattern")
    if following not in ("*", "?", "\\"):
        raise DockerfileError(f"invalid escape '\\{following}'")
    return following


class _Glob:
    """A parsed pattern, matched as BuildKit's regex (``*`` -> ``.*`` or ``.*?``, ``?`` ->
    ``.``) matches: leftmost-first, neither wildcard crossing a newline.

    Instead of backtracking, the search runs every way through the pattern at once, one
    character at a time (a Pike VM): a thread is a pattern position and the index where its
    match began, kept in priority order, at most one per position.  A search therefore
    costs at most ``len(value) * (len(pattern) + 1)`` steps, charged to ``budget``, and
    finds exactly the match a backtracking engine (Python's ``re``, Go's ``regexp``) finds.
    """

    def __init__(self, tokens: tuple[_Token, ...], *, greedy: bool, budget: _Budget) -> None:
        self._tokens = tokens
        self._greedy = greedy
        self._budget = budget
        plain = all(kind == _LITERAL for kind, _ in tokens)
        self._literal = "".join(ch for _, ch in tokens) if plain else None

    def search(self, value: str, start: int, *, anchored: bool) -> tuple[int, int] | None:
        """The span of the first match at or after ``start`` (only at it if ``anchored``)."""
        if self._literal is not None:
            return self._search_literal(self._literal, value, start, anchored)
        found: tuple[int, int] | None = None
        threads: list[tuple[int, int]] = []
        seen: set[int] = set()
        for pos in range(start, len(value) + 1):
            if found is None and (pos == start or not anchored):
                self._add(0, pos, threads, seen)
            if not threads:
                break
            self._budget.spend(len(threads))
            threads, seen, found = self._step(value, pos, threads, found)
        return found

    @staticmethod
    def _search_literal(text: str, value: str, start: int,
                        anchored: bool) -> tuple[int, int] | None:
        if anchored:
            return (start, start + len(text)) if value.startswith(text, start) else None
        index = value.find(text, start)
        return None if index < 0 else (index, index + len(text))

    def _step(self, value: str, pos: int, threads: list[tuple[int, int]],
              found: tuple[int, int] | None
              ) -> tuple[list[tuple[int, int]], set[int], tuple[int, int] | None]:
        """Advance every thread over ``value[pos]``; a match drops the threads after it."""
        following: list[tuple[int, int]] = []
        seen: set[int] = set()
        char = value[pos] if pos < len(value) else None
        for state, begin in threads:
            if state == len(self._tokens):
                return following, seen, (begin, pos)
            kind, literal = self._tokens[state]
            if char is None or not (char == literal if kind == _LITERAL else char != "\n"):
                continue
            self._add(state if kind == _STAR else state + 1, begin, following, seen)
        return following, seen, found

    def _add(self, state: int, begin: int, threads: list[tuple[int, int]],
             seen: set[int]) -> None:
        """Add ``state`` and the states a run of stars lets it skip to, in priority order:
        staying in a star first when greedy, leaving it first when lazy."""
        end = state
        while end < len(self._tokens) and self._tokens[end][0] == _STAR and end not in seen:
            end += 1
        stars = range(state, end)
        order = [*stars, end] if self._greedy else [end, *reversed(stars)]
        for each in order:
            if each not in seen:
                seen.add(each)
                threads.append((each, begin))


def _replace_first(glob: _Glob, value: str, replacement: str) -> str:
    span = glob.search(value, 0, anchored=False)
    if span is None:
        return value
    return value[:span[0]] + replacement + value[span[1]:]


def _replace_all(glob: _Glob, value: str, template: str, budget: _Budget) -> str:
    """Go's ``Regexp.ReplaceAllString``: an empty match right after a match is skipped,
    and ``$0``/``$$`` in the replacement are expanded (BuildKit passes it through).  Each
    replacement costs the budget a step per piece of the template, and the result is held
    to its size limit as it grows."""
    pieces = _template_pieces(template)
    out: list[str] = []
    size = 0  # len("".join(out))
    last_end = 0
    search_at = 0
    while search_at <= len(value):
        span = glob.search(value, search_at, anchored=False)
        if span is None:
            break
        start, end = span
        size = budget.grow(size, value[last_end:start])
        out.append(value[last_end:start])
        if end > last_end or start == 0:
            budget.spend(len(pieces))
            for piece in pieces:
                text = value[start:end] if piece is None else piece
                size = budget.grow(size, text)
                out.append(text)
        last_end = end
        search_at = search_at + 1 if search_at + 1 > end else end
    out.append(value[last_end:])
    return "".join(out)


def _template_pieces(template: str) -> tuple[str | None, ...]:
    """Go's ``Regexp.Expand`` for a regex without groups, prepared once: ``$$`` is ``$``,
    ``$0`` and ``${0}`` the match (None here), any other ``$name`` nothing, a ``$`` without
    a name itself.  Empty pieces are left out."""
    out: list[str | None] = []
    index = 0
    while (dollar := template.find("$", index)) >= 0:
        out.append(template[index:dollar])
        index = dollar + 1
        if template.startswith("$", index):
            out.append("$")
            index += 1
            continue
        found = _template_name(template, index)
        if found is None:
            out.append("$")
            continue
        name, index = found
        out.append(None if name == "0" else "")
    out.append(template[index:])
    return tuple(piece for piece in out if piece != "")


def _template_name(template: str, start: int) -> tuple[str, int] | None:
    """The name of ``$name`` or ``${name}`` at ``start`` and the index after it."""
    braced = template.startswith("{", start)
    end = begin = start + braced
    while end < len(template) and _is_name_char(template[end]):
        end += 1
    if end == begin:
        return None
    if not braced:
        return template[begin:end], end
    if not template.startswith("}", end):
        return None
    return template[begin:end], end + 1
