"""BuildKit's frontend subrequests that ``build --call`` asks for: ``targets`` (the
stages of a Dockerfile) and ``outline`` (the build args, secrets and ssh agents a target
uses), as plain data in the JSON shape of BuildKit's frontend/subrequests packages, and
their text forms as buildx prints them (``targets_text``, ``outline_text``).

Descriptions come from comments as BuildKit reads them: among the comment lines right
above an instruction (blank lines between them allowed, a bare ``#`` ends them), the one
that starts with the stage's or the arg's name and a space; the rest of it is the
description (``# build Compile the binary`` above ``FROM golang AS build``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from typing import Any

from ._ast import Node
from ._instructions import ArgCommand, CopyCommand, Dockerfile, RunCommand, Stage, parse_dockerfile
from ._parser import parse
from .shell import process_word

__all__ = ["list_targets", "outline", "outline_text", "targets_text"]


def list_targets(data: bytes, filename: str = "Dockerfile") -> dict[str, Any]:
    """Every stage, the last one the default (BuildKit's ``frontend.targets``)."""
    typed, lines = _typed(data, filename)
    found = []
    for stage in typed.stages:
        target: dict[str, Any] = {}
        if stage.name:
            target["name"] = stage.name
        if stage.index == len(typed.stages) - 1:
            target["default"] = True
        description = _description(lines, stage.node, stage.original_name or "")
        if description:
            target["description"] = description
        if stage.base_name:
            target["base"] = stage.base_name
        if stage.platform:
            target["platform"] = stage.platform
        target["Location"] = _location(stage.node)
        found.append(target)
    return {"Targets": found, "Sources": [base64.b64encode(data).decode()]}


def outline(data: bytes, filename: str = "Dockerfile", target: str | None = None
            ) -> dict[str, Any]:
    """The target's name and description, and the build args (their defaults and
    descriptions), secrets and ssh agents of the stages it needs (``frontend.outline``)."""
    typed, lines = _typed(data, filename)
    stage = _target(typed, target)
    needed = _needed(typed, stage)
    result: dict[str, Any] = {}
    if stage.name:
        result["name"] = stage.name
    description = _description(lines, stage.node, stage.original_name or "")
    if description:
        result["description"] = description
    parts = {"args": _args(typed, needed, lines), "secrets": _mounts(needed, "secret"),
             "ssh": _mounts(needed, "ssh")}
    result |= {key: value for key, value in parts.items() if value}
    result["sources"] = [base64.b64encode(data).decode()]
    return result


# --- text forms (buildx prints these for --call=targets / --call=outline) --------------


def targets_text(targets: dict[str, Any]) -> str:
    rows = [("TARGET", "DESCRIPTION")]
    for entry in targets["Targets"]:
        name = entry.get("name", "")
        if entry.get("default"):
            name = f"{name} (default)" if name else "(default)"
        rows.append((name, entry.get("description", "")))
    return _table(rows, padding=1)


def outline_text(result: dict[str, Any]) -> str:
    blocks = []
    if result.get("name") or result.get("description"):
        head = [("TARGET:", result.get("name") or "(default)")]
        if result.get("description"):
            head.append(("DESCRIPTION:", result["description"]))
        blocks.append(_table(head, padding=1))
    if result.get("args"):
        blocks.append(_table([("BUILD ARG", "VALUE", "DESCRIPTION")] + [
            (a["name"], a.get("value", ""), a.get("description", "")) for a in result["args"]],
            padding=3))
    for key, title in (("secrets", "SECRET"), ("ssh", "SSH")):
        if result.get(key):
            blocks.append(_table([(title, "REQUIRED")] + [
                (s["name"], "true" if s.get("required") else "") for s in result[key]],
                padding=3))
    return "".join(block + "\n" for block in blocks)


def _table(rows: Sequence[Sequence[str]], padding: int) -> str:
    """Go's tabwriter: each cell but the last of a row padded to its column's width."""
    widths = [max(len(row[i]) for row in rows) + padding for i in range(len(rows[0]) - 1)]
    return "".join("".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                   + row[-1] + "\n" for row in rows)


# --- reading the Dockerfile ------------------------------------------------------------


def _typed(data: bytes, filename: str) -> tuple[Dockerfile, list[str]]:
    lines = data.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    return parse_dockerfile(parse(data, filename)), lines


def _description(lines: Sequence[str], node: Node, name: str) -> str:
    if not name:
        return ""
    for comment in _comments_above(lines, node.start_line):
        for prefix in (name + " ", name.lower() + " "):
            if comment.startswith(prefix):
                return comment[len(prefix):]
    return ""


def _comments_above(lines: Sequence[str], line: int) -> list[str]:
    found: list[str] = []
    for text in reversed(lines[:line - 1]):
        stripped = text.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        comment = stripped[1:].strip()
        if not comment:
            break
        found.insert(0, comment)
    return found


def _location(node: Node) -> dict[str, Any]:
    return {"ranges": [{"start": {"line": node.start_line}, "end": {"line": node.end_line}}]}


def _target(typed: Dockerfile, target: str | None) -> Stage:
    if target is None:
        return typed.stages[-1]
    for stage in typed.stages:
        if stage.name == target.lower():
            return stage
    from .._errors import UsageError  # noqa: PLC0415 -- only for this refusal

    raise UsageError(f"target stage {target!r} could not be found")


def _needed(typed: Dockerfile, target: Stage) -> list[Stage]:
    """``target`` and the stages it reads (FROM, COPY --from, RUN --mount from=), in
    Dockerfile order."""
    by_name = {s.name: s for s in typed.stages if s.name}
    by_index = {str(s.index): s for s in typed.stages}
    seen: dict[int, Stage] = {}
    pending = [target]
    while pending:
        stage = pending.pop()
        if stage.index in seen:
            continue
        seen[stage.index] = stage
        for ref in _references(stage):
            found = by_name.get(ref.lower()) or by_index.get(ref)
            if found is not None and found.index < stage.index:
                pending.append(found)
    return [seen[index] for index in sorted(seen)]


def _references(stage: Stage) -> Iterator[str]:
    yield stage.base_name
    for command in stage.commands:
        if isinstance(command, CopyCommand) and command.from_:
            yield command.from_
        if isinstance(command, RunCommand):
            yield from (m.from_ for m in command.mounts if m.from_)


def _args(typed: Dockerfile, needed: Sequence[Stage], lines: Sequence[str]
          ) -> list[dict[str, Any]]:
    """The meta ARGs the needed stages use (in a FROM or redeclared), then their own
    ARGs, each name once, in Dockerfile order."""
    declared = [(command, spec) for stage in needed for command in stage.commands
                if isinstance(command, ArgCommand) for spec in command.args]
    words = " ".join(f"{s.base_name} {s.platform or ''}" for s in needed)
    redeclared = {spec.key for _, spec in declared}
    meta = [(command, spec) for command in typed.meta_args for spec in command.args
            if spec.key in redeclared or f"${spec.key}" in words or f"${{{spec.key}" in words]
    found: dict[str, dict[str, Any]] = {}
    for command, spec in [*meta, *declared]:
        if spec.key in found:
            if spec.default is not None and "value" not in found[spec.key]:
                found[spec.key]["value"] = _value(spec.default, found)
            continue
        entry: dict[str, Any] = {"name": spec.key}
        description = _description(lines, command.node, spec.key)
        if description:
            entry["description"] = description
        if spec.default is not None:
            entry["value"] = _value(spec.default, found)
        entry["location"] = _location(command.node)
        found[spec.key] = entry
    return list(found.values())


def _value(default: str, found: dict[str, dict[str, Any]]) -> str:
    """An ARG's default as the build would see it (quotes removed, earlier args
    expanded); as written when it does not expand."""
    env = {name: str(entry.get("value", "")) for name, entry in found.items()}
    try:
        return process_word(default, env)
    except Exception:  # noqa: BLE001 -- a malformed default is shown as written
        return default


def _mounts(needed: Sequence[Stage], kind: str) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for stage in needed:
        for command in stage.commands:
            if not isinstance(command, RunCommand):
                continue
            for mount in command.mounts:
                if mount.type != kind:
                    continue
                name = mount.id or ("default" if kind == "ssh" else "")
                entry = found.setdefault(name, {"name": name,
                                                "location": _location(command.node)})
                if mount.required:
                    entry["required"] = True
    return list(found.values())
