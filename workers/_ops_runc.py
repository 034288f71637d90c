"""One container run through runc, with its output streamed: the part of an exec op that
talks to runc (a stand-in until workers/_executor.py lands; same contract).

``run_container(bundle, spec, state_root=..., output=...)`` writes ``config.json`` into the
bundle, runs ``runc run`` in the foreground (stdio are pipes, no terminal), hands every chunk
of stdout (1) and stderr (2) to ``output`` and returns the exit code.  Cancelled, it kills
the container, waits for runc and deletes the container before re-raising: nothing keeps
running and nothing stays mounted.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler._errors import SolveError

from ._snapshots import finish_shielded

__all__ = ["run_container"]

OutputFn = Callable[[int, bytes], None]


def _runc() -> str:
    found = shutil.which("runc")
    if found is None:
        raise SolveError("runc is not installed on this worker",
                         hint="install Debian's runc package (make setup)")
    return found


async def run_container(bundle: Path, spec: dict[str, Any], *, state_root: Path,
                        output: OutputFn) -> int:
    """Run the container ``spec`` describes; return its exit code."""
    runc = _runc()
    (bundle / "config.json").write_text(json.dumps(spec))
    state_root.mkdir(parents=True, exist_ok=True)
    name = "dockyard-" + uuid.uuid4().hex[:16]
    try:
        process = await asyncio.create_subprocess_exec(
            runc, "--root", str(state_root), "run", "--bundle", str(bundle), name,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as err:
        raise SolveError(f"cannot start runc: {err.strerror}") from None
    try:
        await asyncio.gather(_pump(process.stdout, 1, output),
                             _pump(process.stderr, 2, output))
        return await process.wait()
    except asyncio.CancelledError:
        await finish_shielded(_kill(runc, state_root, name, process))
        raise


async def _pump(stream: asyncio.StreamReader | None, number: int, output: OutputFn) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        output(number, chunk)


async def _kill(runc: str, state_root: Path, name: str,
                process: asyncio.subprocess.Process) -> None:
    await _quiet(runc, "--root", str(state_root), "kill", name, "KILL")
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()
    await _quiet(runc, "--root", str(state_root), "delete", "--force", name)


async def _quiet(*args: str) -> None:
    child = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.DEVNULL)
    await child.wait()
