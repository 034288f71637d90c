"""Bytes -> AST: a Dockerfile split into instruction nodes with positions, no semantics.

Behaves as BuildKit's ``frontend/dockerfile/parser`` does (directives, comments, line
continuations, flag extraction, per-instruction argument splitting, heredocs), with two
deliberate differences: an unknown instruction is rejected here (BuildKit defers that to
its instruction layer, with the same message), and invalid UTF-8 is an error.

Line length: BuildKit reads lines with Go's ``bufio.Scanner``, whose buffer holds at most
64 KiB, line end included, so every physical line -- instruction, continuation, comment or
heredoc line -- may have at most ``MAX_LINE_BYTES`` (65,535) bytes before its ``\n`` (a
``\r`` of a CRLF counts, so does the BOM on line 1); the logical line joined from
continuations has no limit.  A longer line fails with BuildKit's text, ``dockerfile line
greater than max allowed size of 65535``.  BuildKit reports it after parsing the lines
before it and positions it at the line before (inside a heredoc it says ``unterminated
heredoc`` instead); here it is checked first and positioned at the long line itself.

Every failure is a ``DockerfileError`` naming file, line and column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from .._errors import DockerfileError
from ._ast import Directives, Heredoc, Node, ParseResult
from ._goquote import quote_shown
from ._interrupt import checkpoint
from ._suggest import closest
from .shell import _Words as Words

__all__ = ["INSTRUCTIONS", "MAX_LINE_BYTES", "parse"]

MAX_LINE_BYTES = 65_535  # bufio.MaxScanTokenSize - 1, as BuildKit's message says
_LONG_LINE_HINT = ("split the line with a line continuation (the escape character at its "
                   "end), or move long data into a file that COPY or RUN --mount reads")

# Go's unicode.IsSpace: what BuildKit trims and splits on (Python's isspace differs).
_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007" \
         "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_HEREDOC = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z", re.DOTALL)
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC_INSTRUCTIONS = frozenset({"run", "copy", "add"})
_MAX_ONBUILD_DEPTH = 2  # ONBUILD ONBUILD ... is forbidden later; stop recursing early
_MAX_NESTING = 64  # ${a:-${b:-...}} levels; Python's stack, unlike Go's, is bounded
_NOT_STRINGS = "when using JSON array syntax, arrays must be comprised of strings only"


def _is_space(ch: str) -> bool:
    return ch in _SPACE


def _strip(text: str) -> str:
    return text.strip(_SPACE)


def _lstrip(text: str) -> str:
    return text.lstrip(_SPACE)


def _is_comment(line: str) -> bool:
    return _lstrip(line).startswith("#")


# --------------------------------------------------------------------------- source text

def _check_line_lengths(data: bytes, filename: str) -> None:
    """BuildKit's scanner limit: no line of more than MAX_LINE_BYTES bytes before its \\n."""
    if len(data) <= MAX_LINE_BYTES:
        return
    start = 0
    for line in data.split(b"\n"):
        if len(line) > MAX_LINE_BYTES:
            raise _long_line(data, start, filename)
        start += len(line) + 1


def _long_line(data: bytes, start: int, filename: str) -> DockerfileError:
    """The error for the line at byte ``start``, numbered as ``_decode`` splits lines."""
    before = data[:start]
    number = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
    shown = data[start:start + 200].removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    shown = (shown.splitlines() or [""])[0]
    return DockerfileError(f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES}",
                           filename=filename, line=number, source_line=shown,
                           hint=_LONG_LINE_HINT)


def _decode(source: bytes | str, filename: str) -> str:
    """The text of ``source``: UTF-8 (BOM dropped), line ends normalised to ``\\n``."""
    if isinstance(source, bytes):
        source = source.removeprefix(b"\xef\xbb\xbf")
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _decode_error(source, exc.start, filename) from None
    else:
        text = source.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_error(data: bytes, offset: int, filename: str) -> DockerfileError:
    line_start = data.rfind(b"\n", 0, offset) + 1
    line_end = data.find(b"\n", offset)
    shown = data[line_start:line_end if line_end >= 0 else len(data)]
    prefix = data[line_start:offset].decode("utf-8", "replace")
    return DockerfileError(
        f"invalid UTF-8 (byte 0x{data[offset]:02x}): a Dockerfile must be UTF-8 text",
        filename=filename, line=data.count(b"\n", 0, offset) + 1, column=len(prefix) + 1,
        source_line=shown.decode("utf-8", "replace"))


def _physical_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# ----------------------------------------------------------------------------- directives

@dataclass(slots=True)
class _DirectiveState:
    """Directives seen so far; ``done`` once a line is not a directive (none may follow)."""

    escape: str = "\\"
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    done: bool = False

    def feed(self, stripped: str, number: int) -> bool:
        """Read one left-trimmed line; True when it was a directive. Raises ``ValueError``
        (turned into a DockerfileError by the caller) for a repeated or bad directive."""
        if self.done:
            return False
        match = _DIRECTIVE.match(_lstrip(stripped[1:])) if stripped.startswith("#") else None
        name = match.group(1).lower() if match else ""
        if match is None or name not in _KNOWN_DIRECTIVES:
            self.done = True
            return False
        if name in self.values:
            raise _SourceError(f"only one {name} parser directive can be used")
        value = match.group(2)
        if name == "escape" and value not in ("\\", "`"):
            raise _SourceError(f"invalid escape token '{value}' does not match ` or \\")
        self.values[name], self.lines[name] = value, number
        self.escape = self.values.get("escape", "\\")
        return True

    def result(self) -> Directives:
        return Directives(escape=self.escape, syntax=self.values.get("syntax"),
                          check=self.values.get("check"), lines=dict(self.lines))


class _SourceError(Exception):
    """Internal: a message waiting for its position; never leaves this module."""

    def __init__(self, message: str, at: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.at = at


def _continuation(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")


def _trim_continuation(line: str, pattern: re.Pattern[str]) -> tuple[str, bool]:
    """The line without its trailing escape, and whether the instruction ends here."""
    if pattern.search(line):
        return pattern.sub(r"\1", line, count=1), False
    return line, True


# ---------------------------------------------------------------------- command splitting

def _split_command(line: str) -> tuple[str, tuple[str, ...], str]:
    """(keyword as written, flags, rest of the line)."""
    parts = _WHITESPACE.split(_strip(line), maxsplit=1)
    if len(parts) < 2:
        return parts[0], (), ""
    rest, flags = _extract_flags(parts[1])
    return parts[0], flags, _strip(rest)


@dataclass(slots=True)
class _FlagScan:
    """State of the leading ``--flag`` scan (BuildKit's extractBuilderFlags)."""

    line: str
    pos: int = 0
    words: list[str] = field(default_factory=list)

    def word(self) -> tuple[str, bool]:
        """Read one word from ``pos`` (quotes removed, ``\\`` escaping); (word, blank_ok)."""
        out: list[str] = []
        quote, blank_ok = "", False
        while self.pos < len(self.line):
            ch = self.line[self.pos]
            if not quote and _is_space(ch):
                break
            self.pos += 1
            if not quote and ch in "'\"":
                quote, blank_ok = ch, True
                continue
            if quote and ch == quote:
                quote = ""
                continue
            if ch == "\\":
                if self.pos == len(self.line):
                    break
                ch = self.line[self.pos]
                self.pos += 1
            out.append(ch)
        return "".join(out), blank_ok


def _extract_flags(line: str) -> tuple[str, tuple[str, ...]]:
    """Split the leading ``--name[=value]`` words off ``line``: (rest, flags)."""
    scan = _FlagScan(line)
    while True:
        while scan.pos < len(line) and _is_space(line[scan.pos]):
            scan.pos += 1
        if not line.startswith("--", scan.pos):
            return line[scan.pos:], tuple(scan.words)
        word, blank_ok = scan.word()
        if word == "--":
            return line[scan.pos:], tuple(scan.words)
        if blank_ok or word:
            scan.words.append(word)


# ------------------------------------------------------------------- per-instruction args

@dataclass(frozen=True, slots=True)
class _Args:
    values: tuple[str, ...] = ()
    json: bool = False
    legacy_kv: bool = False


def _words(rest: str, escape: str) -> list[str]:
    """Whitespace-separated words, quotes and escapes kept (BuildKit's parseWords)."""
    words: list[str] = []
    word: list[str] = []
    quote, blank_ok, index = "", False, 0
    while index < len(rest):
        ch = rest[index]
        index += 1
        if not quote and _is_space(ch):
            if blank_ok or word:
                words.append("".join(word))
            word, blank_ok = [], False
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote, blank_ok = ch, True
        elif ch == escape and quote != "'":
            if index == len(rest):
                quote = ""
                continue
            word.append(ch)
            ch = rest[index]
            index += 1
        word.append(ch)
    if blank_ok or word:
        words.append("".join(word))
    return words


def _name_values(rest: str, escape: str, keyword: str) -> _Args:
    """ENV/LABEL: ``k=v ...`` pairs, or the legacy ``k v`` form."""
    words = _words(rest, escape)
    if not words:
        return _Args()
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _SourceError(f"{keyword} must have two arguments")
        return _Args((parts[0], parts[1]), legacy_kv=True)
    pairs: list[str] = []
    for word in words:
        if "=" not in word:
            raise _SourceError(f"Syntax error - can't find = in {quote_shown(word)}. "
                               "Must be of the form: name=value", at=word)
        key, value = word.split("=", 1)
        if not key:
            raise _SourceError(f"{keyword} names can not be blank", at=word)
        pairs += (key, value)
    return _Args(tuple(pairs))


def _whitespace_list(rest: str) -> _Args:
    return _Args(tuple(_WHITESPACE.split(rest))) if rest else _Args()


def _json_strings(rest: str) -> list[str] | None:
    """The JSON array of strings ``rest`` holds, or None when it is not a JSON array."""
    text = _lstrip(rest)
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise _SourceError(_NOT_STRINGS)
    return [re.sub("[\ud800-\udfff]", "\ufffd", item) for item in value]


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _maybe_json(rest: str) -> _Args:
    if not rest:
        return _Args()
    items = _json_strings(rest)
    return _Args((rest,)) if items is None else _Args(tuple(items), json=True)


def _maybe_json_list(rest: str) -> _Args:
    items = _json_strings(rest)
    return _whitespace_list(rest) if items is None else _Args(tuple(items), json=True)


def _health(rest: str) -> _Args:
    """HEALTHCHECK: the type word, then a RUN-style command."""
    if not rest:
        return _Args()
    sep = next((i for i, ch in enumerate(rest) if _is_space(ch)), len(rest))
    command = _maybe_json(_lstrip(rest[sep:]))
    return _Args((rest[:sep], *command.values), json=command.json)


def _string(rest: str) -> _Args:
    return _Args((rest,)) if rest else _Args()


_Splitter = Callable[[str, str, str], _Args]
_SPLITTERS: dict[str, _Splitter] = {
    "add": lambda rest, esc, kw: _maybe_json_list(rest),
    "arg": lambda rest, esc, kw: _Args(tuple(_words(rest, esc))),
    "cmd": lambda rest, esc, kw: _maybe_json(rest),
    "copy": lambda rest, esc, kw: _maybe_json_list(rest),
    "entrypoint": lambda rest, esc, kw: _maybe_json(rest),
    "env": lambda rest, esc, kw: _name_values(rest, esc, "ENV"),
    "expose": lambda rest, esc, kw: _whitespace_list(rest),
    "from": lambda rest, esc, kw: _whitespace_list(rest),
    "healthcheck": lambda rest, esc, kw: _health(rest),
    "label": lambda rest, esc, kw: _name_values(rest, esc, "LABEL"),
    "maintainer": lambda rest, esc, kw: _string(rest),
    "onbuild": lambda rest, esc, kw: _string(rest),
    "run": lambda rest, esc, kw: _maybe_json(rest),
    "shell": lambda rest, esc, kw: _maybe_json(rest),
    "stopsignal": lambda rest, esc, kw: _string(rest),
    "user": lambda rest, esc, kw: _string(rest),
    "volume": lambda rest, esc, kw: _maybe_json_list(rest),
    "workdir": lambda rest, esc, kw: _string(rest),
}
INSTRUCTIONS: tuple[str, ...] = tuple(sorted(_SPLITTERS))
"""The 18 instruction names, lower-case, sorted."""


# ------------------------------------------------------------------ unknown instructions

def _suggestion(keyword: str) -> str:
    """BuildKit's " (did you mean run?)" for a near miss (distance < 3), else ""."""
    if len(keyword) > 32:
        return ""
    best = closest(keyword.lower(), INSTRUCTIONS)
    if not best:
        return ""
    if keyword == keyword.upper() and keyword != keyword.lower():
        best = best.upper()
    return f" (did you mean {best}?)"


def _unknown(keyword: str) -> _SourceError:
    return _SourceError(f"unknown instruction: {keyword}{_suggestion(keyword)}", at=keyword)


# -------------------------------------------------------------------------- heredoc words

class _LexError(Exception):
    """Internal: the shell-word scan of a line failed (BuildKit then finds no heredocs)."""


class _ShellWords:
    """Just enough of BuildKit's shell lexer to find heredoc words: an empty environment
    with unset variables kept as written, ``\\`` as escape, quotes/escapes optionally kept."""

    def __init__(self, text: str, *, raw_quotes: bool, raw_escapes: bool) -> None:
        self.text = text
        self.pos = 0
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.depth = 0  # nesting of ${...} being scanned; bounded by _MAX_NESTING

    def split(self) -> list[str]:
        return self._until("", self.raw_escapes)[1]

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _next(self) -> str:
        ch = self._peek()
        self.pos += 1 if ch else 0
        return ch

    def _until(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _SourceError(f"variable expansions nested deeper than {_MAX_NESTING} levels")
        try:
            return self._scan(stop, raw_escapes)
        finally:
            self.depth -= 1

    def _scan(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        result: list[str] = []
        sink = Words()
        while (ch := self._peek()):
            if ch == stop:
                self.pos += 1
                return "".join(result), sink.result()
            if ch in "$'\"<":
                piece = self._special(ch, raw_escapes)
                result.append(piece)
                (sink.add_text if ch == "$" else sink.add_raw)(piece)
                continue
            self.pos += 1
            if ch == "\\":
                if raw_escapes:
                    sink.add_raw(ch)
                    result.append(ch)
                if not (ch := self._next()):
                    break
                sink.add_raw(ch)
            else:
                sink.add_char(ch)
            result.append(ch)
        if stop:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), sink.result()

    def _special(self, ch: str, raw_escapes: bool) -> str:
        if ch == "$":
            return self._dollar()
        if ch == "'":
            return self._single()
        if ch == "<":
            return self._redirect()
        return self._double(raw_escapes)

    def _redirect(self) -> str:
        """``<<`` keeps the blanks after it, so ``<< EOF`` is one word (as in BuildKit)."""
        self.pos += 1
        if self._peek() != "<":
            return "<"
        start = self.pos - 1
        self.pos += 1
        while self._peek() and self._peek() in " \t\r\n":
            self.pos += 1
        return self.text[start:self.pos]

    def _single(self) -> str:
        self.pos += 1
        out = ["'"] if self.raw_quotes else []
        while (ch := self._next()) != "'":
            if not ch:
                raise _LexError("unexpected end of statement while looking for matching "
                                "single-quote")
            out.append(ch)
        return "".join(out) + ("'" if self.raw_quotes else "")

    def _double(self, raw_escapes: bool) -> str:
        quote = self._next()
        out = [quote] if self.raw_quotes else []
        while (ch := self._peek()) != '"':
            if not ch:
                raise _LexError("unexpected end of statement while looking for matching "
                                "double-quote")
            if ch == "$":
                out.append(self._dollar())
                continue
            self.pos += 1
            if ch == "\\":
                if raw_escapes:
                    out.append(ch)
                if self._peek() and self._peek() in '"$\\':
                    ch = self._next()
                elif not self._peek():
                    continue
            out.append(ch)
        self.pos += 1
        return "".join(out) + ('"' if self.raw_quotes else "")

    def _dollar(self) -> str:
        self.pos += 1
        if self._peek() != "{":
            return "$" + self._name()
        self.pos += 1
        if not self._peek():
            raise _LexError("syntax error: missing '}'")
        if self._peek() in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self._name()
        modifier = self._next()
        if modifier == "}":
            return "${" + name + "}"
        if modifier == ":":
            modifier += self._next()
        if modifier[:1] in (":", "+", "-", "?", "#", "%"):
            word = self._until("}", modifier[-1:] in ("#", "%"))[0]
            return "${" + name + modifier + word + "}"
        if modifier == "/":
            if self._peek() == "/":
                self.pos += 1
            pattern = self._until("/", True)[0]
            return "${" + name + "/" + pattern + "/" + self._until("}", True)[0] + "}"
        raise _LexError(f"unsupported modifier ({modifier}) in substitution")

    def _name(self) -> str:
        start = self.pos
        first = self._peek()
        if first.isdecimal():
            while self._peek().isdecimal():
                self.pos += 1
            return self.text[start:self.pos]
        if first and first in "@*#?-$!":
            self.pos += 1
            return first
        while (ch := self._peek()) and (ch.isalpha() or ch.isdecimal() or ch == "_"):
            self.pos += 1
        return self.text[start:self.pos]


def _shell_words(text: str, *, raw_quotes: bool, raw_escapes: bool) -> list[str]:
    return _ShellWords(text, raw_quotes=raw_quotes, raw_escapes=raw_escapes).split()


def _heredoc_words(line: str) -> list[tuple[str, Heredoc]]:
    """The heredocs a RUN/COPY/ADD line opens, in order, each with the word as written."""
    try:
        words = _shell_words(line, raw_quotes=True, raw_escapes=True)
    except _LexError:
        return []
    found = []
    for word in words:
        heredoc = _heredoc_from_word(word)
        if heredoc is not None:
            found.append((word, heredoc))
    return found


def _heredoc_from_word(word: str) -> Heredoc | None:
    match = _HEREDOC.match(word)
    if match is None or not match.group(3):
        return None
    fd, chomp, rest = match.group(1), match.group(2) == "-", match.group(3)
    try:
        plain = _shell_words(rest, raw_quotes=False, raw_escapes=False)
        if len(plain) != 1:
            return None
        quoted = _shell_words(rest, raw_quotes=True, raw_escapes=False)
    except _LexError as exc:
        raise _SourceError(f"failed to process {quote_shown(rest)}: {exc}", at=word) from None
    expand = _quote_count(plain[0]) == _quote_count(quoted[0])
    return Heredoc(name=plain[0], content="", expand=expand, chomp=chomp,
                   file_descriptor=int(fd) if fd else None)


def _quote_count(text: str) -> int:
    return text.count("'") + text.count('"')


# ------------------------------------------------------------------------------ the parser

@dataclass(slots=True)
class _Logical:
    """One logical instruction line being assembled from physical lines."""

    text: str
    start: int
    end: int
    comments: tuple[str, ...]
    empty_lines: tuple[int, ...]


class _Parser:
    """Walks the physical lines once; ``index`` is the 0-based next line to read."""

    def __init__(self, lines: list[str], filename: str) -> None:
        self.lines = lines
        self.filename = filename
        self.index = 0
        self.directives = _DirectiveState()
        self.comments: list[str] = []

    def run(self) -> ParseResult:
        nodes = tuple(self._nodes())
        if not nodes:
            last = len(self.lines)
            raise DockerfileError("file with no instructions", filename=self.filename,
                                  line=last, source_line=self.lines[-1] if last else None)
        return ParseResult(filename=self.filename, directives=self.directives.result(),
                           nodes=nodes, source_lines=tuple(self.lines))

    def _nodes(self) -> Iterator[Node]:
        while self.index < len(self.lines):
            checkpoint()
            logical = self._logical()
            if logical is not None:
                yield self._with_heredocs(self._node(logical))
                self.comments = []

    def _error(self, exc: _SourceError, start: int, end: int) -> DockerfileError:
        column = len(self.lines[start - 1]) - len(_lstrip(self.lines[start - 1])) + 1
        stub = Node(instruction="", keyword="", args=(), start_line=start, end_line=end,
                    lines=tuple(self.lines[start - 1:end]), column=column)
        return stub.error(exc.message, self.filename, at=exc.at)

    def _logical(self) -> _Logical | None:
        """Read the next instruction's physical lines; None for a comment or blank line."""
        raw = self.lines[self.index]
        self.index += 1
        start = self.index
        self._note_comment(raw)
        stripped = _lstrip(raw)
        try:
            if self.directives.feed(stripped, start):
                self.comments.pop()
        except _SourceError as exc:
            raise self._error(exc, start, start) from None
        pattern = _continuation(self.directives.escape)
        text, ended = _trim_continuation("" if _is_comment(stripped) else stripped, pattern)
        if ended and not text:
            return None
        parts, empty = [text], []
        while not ended and self.index < len(self.lines):
            raw = self.lines[self.index]
            self.index += 1
            if _is_comment(raw):
                continue
            if not _lstrip(raw):
                empty.append(self.index)
                continue
            text, ended = _trim_continuation(raw, pattern)
            parts.append(text)
        return _Logical("".join(parts), start, self.index, tuple(self.comments), tuple(empty))

    def _note_comment(self, raw: str) -> None:
        if _is_comment(raw):
            comment = _strip(raw[1:])
            if comment:
                self.comments.append(comment)
            else:
                self.comments = []

    def _node(self, logical: _Logical) -> Node:
        try:
            node = self._build(logical.text, logical, depth=0)
        except _SourceError as exc:
            raise self._error(exc, logical.start, logical.end) from None
        return replace(node, comments=logical.comments,
                       empty_continuation_lines=logical.empty_lines)

    def _build(self, line: str, logical: _Logical, depth: int) -> Node:
        keyword, flags, rest = _split_command(line)
        instruction = keyword.lower()
        splitter = _SPLITTERS.get(instruction)
        if splitter is None and depth == 0:
            raise _unknown(keyword)
        args = splitter(rest, self.directives.escape, keyword) if splitter else _Args()
        lines = tuple(self.lines[logical.start - 1:logical.end])
        sub = None
        if instruction == "onbuild" and rest and depth < _MAX_ONBUILD_DEPTH:
            sub = self._build(rest, logical, depth + 1)
        return Node(instruction=instruction, keyword=keyword, args=args.values,
                    start_line=logical.start, end_line=logical.end, flags=flags,
                    json=args.json, legacy_kv=args.legacy_kv, sub=sub, original=line,
                    lines=lines, column=_column(lines, keyword))

    # ---------------------------------------------------------------------- heredocs

    def _with_heredocs(self, node: Node) -> Node:
        target = node.sub if node.instruction == "onbuild" and node.sub else node
        if target.instruction not in _HEREDOC_INSTRUCTIONS or target.json:
            return node
        if "<<" not in node.original:
            return node
        try:
            words = _heredoc_words(node.original)
        except _SourceError as exc:
            raise node.error(exc.message, self.filename, at=exc.at) from None
        heredocs = tuple(self._read_body(node, word, doc) for word, doc in words)
        if not heredocs:
            return node
        end = self.index
        lines = tuple(self.lines[node.start_line - 1:end])
        sub = replace(node.sub, heredocs=heredocs, end_line=end, lines=lines) \
            if node.sub else None
        return replace(node, heredocs=heredocs, end_line=end, lines=lines, sub=sub)

    def _read_body(self, node: Node, word: str, heredoc: Heredoc) -> Heredoc:
        body: list[str] = []
        while self.index < len(self.lines):
            raw = self.lines[self.index]
            self.index += 1
            candidate = raw.lstrip("\t") if heredoc.chomp else raw
            if candidate == heredoc.name:
                return replace(heredoc, content="".join(body))
            body.append((raw.lstrip("\t") if heredoc.chomp else raw) + "\n")
        raise node.error("unterminated heredoc", self.filename, at=word)


def _column(lines: tuple[str, ...], keyword: str) -> int:
    for line in lines:
        index = line.find(keyword) if keyword else -1
        if index >= 0:
            return index + 1
    return 1


def parse(source: bytes | str, filename: str = "Dockerfile") -> ParseResult:
    """Parse a Dockerfile into nodes with positions; raise ``DockerfileError`` on bad input.

    ``source`` may be bytes (UTF-8, optional BOM) or text; CRLF and CR line ends are
    accepted.  Nothing is expanded or validated beyond what BuildKit's parser checks, plus
    unknown instructions.
    """
    data = source if isinstance(source, bytes) else source.encode("utf-8", "surrogatepass")
    _check_line_lengths(data, filename)
    text = _decode(source, filename)
    return _Parser(_physical_lines(text), filename).run()
