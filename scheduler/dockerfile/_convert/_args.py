"""ARG: predefined platform args, meta args (before the first FROM), stage ARGs, build-arg
overrides, proxy variables, and the unconsumed-build-arg warning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..._platform import Platform
from .._instructions import ArgCommand
from .._lint import CHECK_BUILD_ARG
from ._context import SANDBOX_HOSTNAME_ARG, Conversion
from ._expand import NON_ENV_ARGS
from ._proxy import PROXY_ARGS
from ._state import StageState


def predefined_args(build: Platform, target: Platform, target_stage: str,
                    overrides: Mapping[str, str]) -> dict[str, str]:
    """BUILDPLATFORM/OS/ARCH/VARIANT, TARGETPLATFORM/OS/ARCH/VARIANT and TARGETSTAGE; a
    --build-arg of the same name wins."""
    values = {
        "BUILDPLATFORM": str(build), "BUILDOS": build.os, "BUILDOSVERSION": "",
        "BUILDARCH": build.architecture, "BUILDVARIANT": build.variant,
        "TARGETPLATFORM": str(target), "TARGETOS": target.os, "TARGETOSVERSION": "",
        "TARGETARCH": target.architecture, "TARGETVARIANT": target.variant,
        "TARGETSTAGE": target_stage,
    }
    return {key: overrides.get(key, value) for key, value in values.items()}


def apply_meta_args(conv: Conversion, meta_args: Sequence[ArgCommand]) -> None:
    """Evaluate the ARGs before the first FROM into ``conv.global_args`` in order: a
    --build-arg wins, otherwise the default expanded with the args so far."""
    build_args = conv.options.build_args
    for command in meta_args:
        for spec in command.args:
            conv.consumed_args.add(spec.key)
            if spec.key in build_args:
                conv.global_args[spec.key] = build_args[spec.key]
            elif spec.default is not None:
                value = conv.expand(spec.default, conv.global_args, command.node).result
                conv.global_args[spec.key] = value


def dispatch_arg(conv: Conversion, state: StageState, command: ArgCommand) -> None:
    """A stage ARG: its value is the --build-arg, else its expanded default, else the meta
    arg (or predefined arg) of the same name; ARG values are seen by later commands and
    RUN, never stored in the image config."""
    parts = []
    for spec in command.args:
        conv.consumed_args.add(spec.key)
        value = _arg_value(conv, state, command, spec.key, spec.default)
        parts.append(spec.key if value is None else f"{spec.key}={value}")
        if value is None:  # no value: the one inherited from the base stage stays
            value = state.args.get(spec.key)
        elif spec.key not in NON_ENV_ARGS:
            state.vars[spec.key] = value
        state.args.pop(spec.key, None)
        state.args[spec.key] = value
    state.config.commit("ARG " + " ".join(parts), layer=False)


def _arg_value(conv: Conversion, state: StageState, command: ArgCommand, key: str,
               default: str | None) -> str | None:
    if key in conv.options.build_args:
        return conv.options.build_args[key]
    if default is not None:
        return conv.expand_in_stage(default, state, command.node)
    return conv.global_args.get(key)


def unconsumed_notice(conv: Conversion) -> str | None:
    """The classic builder's notice for --build-args no ARG declared.  BuildKit reports
    nothing (moby/buildkit#2128) and has no lint rule for it, so this is a plain build
    notice, not a CheckWarning: ``# check=`` does not apply to it."""
    unused = sorted(set(conv.options.build_args) - conv.consumed_args - PROXY_ARGS
                    - set(conv.global_args) - {CHECK_BUILD_ARG, SANDBOX_HOSTNAME_ARG})
    if not unused:
        return None
    return f"One or more build-args [{' '.join(unused)}] were not consumed"
