"""The instructions that only change the image config: ENV, LABEL, USER, EXPOSE, VOLUME,
STOPSIGNAL, HEALTHCHECK, SHELL, CMD, ENTRYPOINT, ONBUILD, MAINTAINER."""

from __future__ import annotations

import re

from ..._graph import Healthcheck
from .._instructions import (
    CmdCommand,
    EntrypointCommand,
    EnvCommand,
    ExposeCommand,
    HealthcheckCommand,
    LabelCommand,
    MaintainerCommand,
    OnbuildCommand,
    ShellCommand,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
)
from ._context import Conversion
from ._names import go_duration, go_list, go_quote_list
from ._run import with_shell
from ._state import StageState

_SIGNALS = frozenset({
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
    "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
    "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
})
_RT_SIGNAL = re.compile(r"RTM(?:IN|AX)(?:[+-]\d+)?")
_PORT = re.compile(r"(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?", re.IGNORECASE)


def dispatch_env(conv: Conversion, state: StageState, command: EnvCommand) -> None:
    for pair in command.env:
        state.set_env(pair.key, pair.value)
    text = " ".join(f"{p.key}={p.value}" for p in command.env)
    state.config.commit("ENV " + text, layer=False)


def dispatch_label(conv: Conversion, state: StageState, command: LabelCommand) -> None:
    for pair in command.labels:
        state.config.labels[pair.key] = pair.value
    text = " ".join(f"{p.key}={p.value}" for p in command.labels)
    state.config.commit("LABEL " + text, layer=False)


def dispatch_maintainer(conv: Conversion, state: StageState, command: MaintainerCommand
                        ) -> None:
    state.config.author = command.maintainer
    state.config.commit("MAINTAINER " + command.maintainer, layer=False)


def dispatch_user(conv: Conversion, state: StageState, command: UserCommand) -> None:
    state.config.user = command.user
    state.config.commit("USER " + command.user, layer=False)


def dispatch_expose(conv: Conversion, state: StageState, command: ExposeCommand) -> None:
    ports: list[str] = []
    for word in command.ports:
        ports += _port_specs(conv, command, word)
    for port in ports:
        state.config.exposed_ports[port] = None
    state.config.commit("EXPOSE " + go_list(ports), layer=False)


def _port_specs(conv: Conversion, command: ExposeCommand, word: str) -> list[str]:
    match = _PORT.fullmatch(word.rsplit(":", 1)[-1])
    if match is None or int(match.group(1)) > 65535 or int(match.group(2) or 0) > 65535:
        raise command.node.error(f"invalid containerPort: {word}", conv.filename, at=word)
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if last < first:
        raise command.node.error(f"invalid range specified for container port: {word}",
                                 conv.filename, at=word)
    proto = (match.group(3) or "tcp").lower()
    return [f"{port}/{proto}" for port in range(first, last + 1)]


def dispatch_volume(conv: Conversion, state: StageState, command: VolumeCommand) -> None:
    for volume in command.volumes:
        if not volume:
            raise command.node.error("VOLUME specified can not be an empty string",
                                     conv.filename)
        state.config.volumes[volume] = None
    state.config.commit("VOLUME " + go_list(command.volumes), layer=False)


def dispatch_stopsignal(conv: Conversion, state: StageState, command: StopSignalCommand
                        ) -> None:
    if not _valid_signal(command.signal):
        raise command.node.error(f"Invalid signal: {command.signal}", conv.filename,
                                 at=command.signal)
    state.config.stop_signal = command.signal
    state.config.commit("STOPSIGNAL " + command.signal, layer=False)


def _valid_signal(text: str) -> bool:
    if text.isdigit():
        return 0 < int(text) <= 64
    name = text.upper().removeprefix("SIG")
    return name in _SIGNALS or bool(_RT_SIGNAL.fullmatch(name))


def dispatch_healthcheck(conv: Conversion, state: StageState, command: HealthcheckCommand
                         ) -> None:
    h = command.health
    state.config.healthcheck = Healthcheck(h.test, h.interval, h.timeout, h.start_period,
                                           h.start_interval, h.retries)
    text = (f"{{Test:{go_list(h.test)} Interval:{go_duration(h.interval)} "
            f"Timeout:{go_duration(h.timeout)} StartPeriod:{go_duration(h.start_period)} "
            f"StartInterval:{go_duration(h.start_interval)} Retries:{h.retries}}}")
    state.config.commit("HEALTHCHECK " + text, layer=False)


def dispatch_shell(conv: Conversion, state: StageState, command: ShellCommand) -> None:
    state.config.shell = tuple(command.shell)
    state.config.commit("SHELL " + go_list(command.shell), layer=False)


def dispatch_cmd(conv: Conversion, state: StageState, command: CmdCommand) -> None:
    args = with_shell(state, command.cmd_line) if command.prepend_shell else command.cmd_line
    state.config.cmd = tuple(args)
    state.cmd_set = True
    state.config.commit("CMD " + go_quote_list(args), layer=False)


def dispatch_entrypoint(conv: Conversion, state: StageState, command: EntrypointCommand
                        ) -> None:
    args = with_shell(state, command.cmd_line) if command.prepend_shell else command.cmd_line
    state.config.entrypoint = tuple(args)
    if not state.cmd_set:
        state.config.cmd = None
    state.config.commit("ENTRYPOINT " + go_quote_list(args), layer=False)


def dispatch_onbuild(conv: Conversion, state: StageState, command: OnbuildCommand) -> None:
    state.config.on_build.append(command.expression)
