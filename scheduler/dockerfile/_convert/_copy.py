"""COPY and ADD: FileOp copy actions from the context, a stage, an image, a URL, a git
repository or a heredoc; ``--link`` as a copy onto an empty state joined by a MergeOp."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from ..._graph import Copy, FileAction, FileOp, MergeOp, Mkfile, SourceOp
from .._ast import Node
from .._instructions import AddCommand, CopyCommand
from ._context import Conversion
from ._expand import expand_heredoc
from ._names import prefix_command, uppercase_command
from ._sources import GitSource, http_filename, is_http, parse_git
from ._state import StageState

_CLAUSE = r"[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+"
_SYMBOLIC = re.compile(rf"{_CLAUSE}(?:,{_CLAUSE})*")


@dataclass(slots=True)
class _Plan:
    """The actions of one COPY/ADD and the inputs they index (input 0: the target)."""

    inputs: list[str] = field(default_factory=list)
    actions: list[FileAction] = field(default_factory=list)
    history: list[str] = field(default_factory=list)

    def input(self, digest: str) -> int:
        if digest not in self.inputs:
            self.inputs.append(digest)
        return self.inputs.index(digest)


def dispatch_copy(conv: Conversion, state: StageState, command: CopyCommand | AddCommand,
                  source_root: str | None = None, from_stage: bool = False) -> None:
    """``source_root``/``from_stage``: the ``--from`` state (None root: empty)."""
    node, is_add = command.node, isinstance(command, AddCommand)
    chmod = _check_chmod(conv, node, command.chmod)
    dest = _destination(state, command.dest)
    link = command.link and not chmod
    plan = _Plan(inputs=[state.root] if state.root and not link else [])
    env = state.env()
    name = prefix_command(state, uppercase_command(conv.display(node.original, env, node)),
                          multi_platform=conv.options.multi_platform,
                          platform=state.platform)
    for src in _paths(command):
        plan.history.append(src)
        _add_source(conv, state, command, plan, src, dest, name, source_root, from_stage)
    for doc in command.source_contents:
        plan.history.append("<<" + doc.name)
        data = expand_heredoc(doc.content, env, node=node, filename=conv.filename) \
            if doc.expand else doc.content
        _add_heredoc(conv, state, command, plan, doc.name, data, dest)
    _finish(conv, state, command, plan, name, link)
    flags = _history_flags(command)
    verb = "ADD" if is_add else "COPY"
    state.config.commit(" ".join([verb, *flags, *plan.history, command.dest]) + " # buildkit",
                        layer=True)


def _paths(command: CopyCommand | AddCommand) -> list[str]:
    heredocs = {doc.name for doc in command.source_contents}
    return [s for s in command.sources
            if s not in heredocs and not (s.startswith("<<") and s.lstrip("<-") in heredocs)]


def _history_flags(command: CopyCommand | AddCommand) -> list[str]:
    flags = ["--parents"] if isinstance(command, CopyCommand) and command.parents else []
    if command.chown:
        flags.append("--chown=" + command.chown)
    if command.chmod:
        flags.append("--chmod=" + command.chmod)
    return flags


def _check_chmod(conv: Conversion, node: Node, chmod: str | None) -> str:
    if not chmod:
        return ""
    if chmod.isdigit():
        if any(c in "89" for c in chmod) or int(chmod, 8) > 0o7777:
            raise node.error(f"invalid chmod parameter: '{chmod}'. it should be octal string "
                             "and between 0 and 07777", conv.filename, at="--chmod")
        return chmod
    if not _SYMBOLIC.fullmatch(chmod):
        raise node.error(f"invalid chmod parameter: '{chmod}'. it should be octal string "
                         "and between 0 and 07777", conv.filename, at="--chmod")
    return chmod


def _destination(state: StageState, dest: str) -> str:
    """BuildKit's pathRelativeToWorkingDir: absolute, cleaned, trailing slash kept."""
    keep_slash = dest.endswith(("/", "/.")) or dest in ("", ".")
    joined = posixpath.normpath(posixpath.join(state.cwd, dest or "."))
    if joined.startswith("//"):
        joined = "/" + joined.lstrip("/")
    return joined + "/" if keep_slash and not joined.endswith("/") else joined


def _add_source(conv: Conversion, state: StageState, command: CopyCommand | AddCommand,
                plan: _Plan, src: str, dest: str, name: str, source_root: str | None,
                from_stage: bool) -> None:
    git = parse_git(src) if not from_stage else None
    if git is not None:
        _require_add(conv, command, "source can't be a git ref for COPY")
        _add_git(conv, command, plan, git, dest, name)
    elif is_http(src) and not from_stage:
        _require_add(conv, command, "source can't be a URL for COPY")
        _add_http(conv, command, plan, src, dest, name)
    else:
        _add_local(conv, state, command, plan, src, dest, source_root, from_stage)


def _require_add(conv: Conversion, command: CopyCommand | AddCommand, message: str) -> None:
    if not isinstance(command, AddCommand):
        raise command.node.error(message, conv.filename)


def _add_git(conv: Conversion, command: CopyCommand | AddCommand, plan: _Plan,
             git: GitSource, dest: str, name: str) -> None:
    assert isinstance(command, AddCommand)
    attrs = [("fullurl", git.remote)]
    if command.keep_git_dir:
        attrs.append(("keepgitdir", "true"))
    if git.subdir:
        attrs.append(("subdir", git.subdir))
    if command.checksum:
        attrs.append(("checksum", command.checksum))
    digest = conv.sink.add(SourceOp(identifier=git.identifier, attrs=tuple(sorted(attrs))),
                           (), name, None, location=conv.location(command.node))
    plan.actions.append(Copy(
        src=plan.input(digest), src_path="/", dest_path=dest, chown=command.chown or "",
        chmod=command.chmod or "", follow_symlinks=False, copy_dir_contents=False,
        allow_wildcard=False, allow_empty_wildcard=False, exclude=tuple(command.exclude)))


def _add_http(conv: Conversion, command: CopyCommand | AddCommand, plan: _Plan, url: str,
              dest: str, name: str) -> None:
    assert isinstance(command, AddCommand)
    filename = http_filename(url)
    attrs = [("filename", filename)]
    if command.checksum:
        attrs.append(("checksum", command.checksum))
    digest = conv.sink.add(SourceOp(identifier=url, attrs=tuple(sorted(attrs))), (), name,
                           None, location=conv.location(command.node))
    plan.actions.append(Copy(
        src=plan.input(digest), src_path=filename, dest_path=dest,
        chown=command.chown or "", chmod=command.chmod or "", follow_symlinks=False,
        copy_dir_contents=False, attempt_unpack=bool(command.unpack),
        allow_wildcard=False, allow_empty_wildcard=False, exclude=tuple(command.exclude)))


def _add_local(conv: Conversion, state: StageState, command: CopyCommand | AddCommand,
               plan: _Plan, src: str, dest: str, source_root: str | None,
               from_stage: bool) -> None:
    if from_stage and source_root is None:
        raise command.node.error(f"cannot copy from an empty stage: {src} does not exist",
                                 conv.filename, at=src)
    root = source_root if from_stage else conv.context_source()
    assert root is not None
    parents = isinstance(command, CopyCommand) and command.parents
    src_path, include = _split_parents(src) if parents else (_clean(src), ())
    if not from_stage:
        conv.context_paths.add(_clean(src))
    unpack = command.unpack if isinstance(command, AddCommand) else False
    plan.actions.append(Copy(
        src=plan.input(root), src_path=src_path, dest_path=dest,
        chown=command.chown or "", chmod=command.chmod or "",
        attempt_unpack=isinstance(command, AddCommand) if unpack is None else unpack,
        include=include, exclude=tuple(command.exclude), parents=parents))


def _clean(src: str) -> str:
    return posixpath.normpath("/" + src).replace("//", "/")


def _split_parents(src: str) -> tuple[str, tuple[str, ...]]:
    """``--parents``: ``a/./b/*`` keeps ``b/*`` under the destination; no ``/./``: the
    whole path."""
    parent, sep, pattern = src.partition("/./")
    if not sep:
        parent, pattern = "/", src
    return _clean(parent), (_clean(pattern).lstrip("/"),)


def _add_heredoc(conv: Conversion, state: StageState, command: CopyCommand | AddCommand,
                 plan: _Plan, doc_name: str, data: str, dest: str) -> None:
    op = FileOp(actions=(Mkfile(path="/" + doc_name, data=data),), base=None)
    digest = conv.sink.add(op, (), "[internal] preparing inline document", state.platform,
                           location="")
    plan.actions.append(Copy(
        src=plan.input(digest), src_path="/" + doc_name, dest_path=dest,
        chown=command.chown or "", chmod=command.chmod or "", follow_symlinks=False,
        copy_dir_contents=False, allow_wildcard=False, allow_empty_wildcard=False))


def _finish(conv: Conversion, state: StageState, command: CopyCommand | AddCommand,
            plan: _Plan, name: str, link: bool) -> None:
    base = 0 if state.root and not link else None
    op = FileOp(actions=tuple(plan.actions), base=base)
    location = conv.location(command.node)
    copied = conv.sink.add(op, plan.inputs, name, state.platform, location=location)
    if not link or state.root is None:
        state.root = copied
        return
    merge_name = name.replace("] ", "] LINK ", 1) if name.startswith("[") else "LINK " + name
    state.root = conv.sink.add(MergeOp(), (state.root, copied), merge_name, state.platform,
                               location=location)

