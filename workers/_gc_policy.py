"""A worker's garbage-collection policies: what its background collector keeps.

The shape is BuildKit's (``buildkitd.toml``'s ``[[worker.oci.gcpolicy]]``, cmd/buildkitd/
config/gcpolicy.go): an ordered list of policies, each with

- ``keep-storage`` (BuildKit's ``keepBytes``): a size (binary units, as ``dockyard prune
  --keep-storage``: ``512MB``, ``20GB``) or a percent of the disk the root is on
  (``10%``); the collector removes least recently used entries until the store is at
  most this big (no keep-storage: no bound, only keep-duration applies);
- ``keep-duration`` (``keepDuration``): entries used within this long are kept
  (``48h``, ``90m``; no keep-duration: any age);
- ``filter`` (``filters``): the kinds the policy may remove -- ``image`` (layers of base
  images), ``exec`` (results of the build's own steps: RUN, COPY, ADD, ...), ``context``
  (context snapshots: the contents kept of clients' contexts and the layers made of
  them), ``cachemount`` (``RUN --mount=type=cache`` directories).  BuildKit's names are
  read too: ``type==source.local`` (context), ``type==exec.cachemount`` (cachemount),
  ``type==source.git.checkout`` (context), ``type==regular`` (image and exec);
- ``all`` (``all``): a policy without a filter takes image, exec and context entries;
  with ``all = true`` it takes cache mounts too, as ``dockyard prune --all``.

Policies run in order, each over what the ones before left.  The default is BuildKit's
(``DefaultGCPolicy``), with 10% of the disk as its cap (BuildKit's ``DiskSpacePercentage``
on Unix): context and cache mounts unused for 48h above 512MB; anything unused for 60
days above the cap; the store under the cap; then with cache mounts too.
``DOCKYARD_CACHE_MAX`` (workers/_cache_limit.py), when set in a worker's environment,
adds one more after them, ``keep-storage=MAX`` (``with_cache_max``).

Forms: ``parse_policy`` reads one ``--gc-policy`` value
(``keep-storage=1GB,keep-duration=48h,filter=exec,filter=cachemount,all=true``);
``load_config`` reads a TOML file (``[[gcpolicy]]`` tables with ``keepBytes``,
``keepDuration``, ``filters``, ``all``; top-level ``gc``, ``interval``, ``grace``).
``GcSettings`` is what a worker is started with; it crosses Ray as a plain map
(``to_wire``/``from_wire``).
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dockyard.scheduler._errors import UsageError

from ._cache_limit import cache_limit, parse_size

__all__ = ["CONFIG_ENV", "KINDS", "POLICY_ENV", "GcPolicy", "GcSettings", "default_policies",
           "format_duration", "load_config", "parse_duration", "parse_policy",
           "settings_from_environ", "settings_from_flags", "with_cache_max"]

#: The kinds of data a policy can filter on, in ``du``'s order.
KINDS: Final = ("image", "exec", "context", "cachemount")
#: The kinds a policy without a filter takes (``all`` adds cache mounts, as prune --all).
_DEFAULT_KINDS: Final = frozenset({"image", "exec", "context"})
_BUILDKIT_TYPES: Final = {"source.local": ("context",), "exec.cachemount": ("cachemount",),
                          "source.git.checkout": ("context",), "regular": ("image", "exec")}
#: The embedded service's policy file and policies (``;`` between policies).
CONFIG_ENV: Final = "DOCKYARD_GC_CONFIG"
POLICY_ENV: Final = "DOCKYARD_GC_POLICY"
_DURATION: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_SECONDS: Final = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DEFAULT_PERCENT: Final = 10.0  # BuildKit's DiskSpacePercentage (Unix)
_DEFAULT_INTERVAL: Final = 600.0  # seconds between background runs (and after each build)
_DEFAULT_GRACE: Final = 60.0  # what was used this recently and nobody leased is kept


def parse_duration(text: str | int | float, what: str) -> float:
    """Seconds of ``48h``, ``1h30m``, ``90s``, ``60d`` or a number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip()
        parts = _DURATION.findall(value)
        if not value or "".join(n + u for n, u in parts) != value:
            raise UsageError(f"invalid {what} {text!r}: expected a duration such as 48h, "
                             "90m, 60d or a number of seconds")
        seconds = sum(float(n) * _SECONDS[u] for n, u in parts)
    if seconds < 0:
        raise UsageError(f"invalid {what} {text!r}: a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length and seconds % length == 0:
            return f"{int(seconds // length)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class GcPolicy:
    """One policy (see the module docstring).  Invariant: at most one of ``keep_bytes``
    and ``keep_percent``; ``kinds`` a non-empty subset of ``KINDS``."""

    keep_bytes: int | None = None  # the store's bound in bytes
    keep_percent: float | None = None  # the bound as a percent of the root's disk
    keep_duration: float | None = None  # seconds: what was used this recently stays
    kinds: frozenset[str] = _DEFAULT_KINDS  # what it may remove

    def bound(self, root: Path) -> int | None:
        """The bytes this policy keeps the store under, on ``root``'s disk (None: none)."""
        if self.keep_percent is None:
            return self.keep_bytes
        return int(_disk_size(root) * self.keep_percent / 100)

    def describe(self) -> str:
        """One line, as ``--gc-policy`` spells it."""
        parts = []
        if self.keep_percent is not None:
            parts.append(f"keep-storage={self.keep_percent:g}%")
        elif self.keep_bytes is not None:
            parts.append(f"keep-storage={self.keep_bytes}")
        if self.keep_duration is not None:
            parts.append(f"keep-duration={format_duration(self.keep_duration)}")
        if self.kinds == _DEFAULT_KINDS | {"cachemount"}:
            parts.append("all=true")
        elif self.kinds != _DEFAULT_KINDS:
            parts += [f"filter={kind}" for kind in KINDS if kind in self.kinds]
        return ",".join(parts)

    def to_wire(self) -> dict[str, Any]:
        return {"keep_bytes": self.keep_bytes, "keep_percent": self.keep_percent,
                "keep_duration": self.keep_duration, "kinds": sorted(self.kinds)}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> GcPolicy:
        return _checked(wire.get("keep_bytes"), wire.get("keep_percent"),
                        wire.get("keep_duration"), frozenset(wire.get("kinds") or ()),
                        "the worker's gc policy")


def _disk_size(root: Path) -> int:
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).total


def _checked(keep_bytes: int | None, keep_percent: float | None,
             keep_duration: float | None, kinds: frozenset[str], where: str) -> GcPolicy:
    if keep_percent is not None and not 0 < keep_percent <= 100:
        raise UsageError(f"invalid gc policy ({where}): keep-storage {keep_percent:g}% is "
                         "not a percent of the disk between 0 and 100")
    if keep_bytes is not None and keep_bytes < 0:
        raise UsageError(f"invalid gc policy ({where}): keep-storage cannot be negative")
    unknown = sorted(kinds - set(KINDS))
    if unknown or not kinds:
        raise UsageError(f"invalid gc policy ({where}): unknown kind {unknown[0]!r}"
                         if unknown else f"invalid gc policy ({where}): no kind to remove",
                         hint=f"filters name {', '.join(KINDS)} (or BuildKit's "
                              "type==source.local, type==exec.cachemount, type==regular)")
    if keep_bytes is None and keep_percent is None and keep_duration is None:
        raise UsageError(f"invalid gc policy ({where}): it has neither keep-storage nor "
                         "keep-duration, so it would remove everything it filters",
                         hint="give keep-storage=0 to mean that")
    return GcPolicy(keep_bytes, keep_percent, keep_duration, kinds)


def _storage(text: str | int, where: str) -> tuple[int | None, float | None]:
    """(bytes, percent) of a keep-storage value."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text, None
    value = str(text).strip()
    if value.endswith("%"):
        try:
            return None, float(value[:-1])
        except ValueError:
            pass
        raise UsageError(f"invalid gc policy ({where}): keep-storage {value!r} is not a "
                         "percent such as 10%")
    try:
        return parse_size(value, f"gc policy ({where}): keep-storage"), None
    except UsageError as err:
        raise UsageError(err.message, hint="a size such as 512MB or 20GB, or a percent of "
                                           "the disk such as 10%") from None


def _kinds(filters: Iterable[str], where: str) -> set[str]:
    """The kinds named by filter values (ours, or BuildKit's ``type==X``, comma-joined)."""
    kinds: set[str] = set()
    for value in filters:
        for item in str(value).split(","):
            name = item.strip()
            for prefix in ("type==", "type="):
                name = name.removeprefix(prefix)
            if name in KINDS:
                kinds.add(name)
            elif name in _BUILDKIT_TYPES:
                kinds.update(_BUILDKIT_TYPES[name])
            else:
                raise UsageError(f"invalid gc policy ({where}): unknown filter {item!r}",
                                 hint=f"filters name {', '.join(KINDS)} (or BuildKit's "
                                      "type==source.local, type==exec.cachemount, "
                                      "type==regular); ages go in keep-duration")
    return kinds


def _flag_all(text: str, where: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise UsageError(f"invalid gc policy ({where}): all={text!r} is not true or false")
    return text.lower() == "true"


def _policy(storage: str | int | None, duration: str | int | float | None,
            filters: Iterable[str], everything: bool, where: str) -> GcPolicy:
    keep_bytes, percent = _storage(storage, where) if storage is not None else (None, None)
    seconds = (parse_duration(duration, f"gc policy ({where}): keep-duration")
               if duration is not None else None)
    kinds = _kinds(filters, where) or set(_DEFAULT_KINDS)
    if everything:
        kinds |= {"cachemount"}
    return _checked(keep_bytes, percent, seconds, frozenset(kinds), where)


def parse_policy(text: str, where: str = "--gc-policy") -> GcPolicy:
    """One ``--gc-policy`` value: ``keep-storage=SIZE|N%``, ``keep-duration=DURATION``,
    ``filter=KIND`` (repeated; BuildKit's ``type==KIND`` too), ``all=true``,
    comma-separated."""
    storage: str | None = None
    duration: str | None = None
    filters: list[str] = []
    everything = False
    for item in text.split(","):
        key, equals, value = item.strip().partition("=")
        if not equals or not value:
            raise UsageError(f"invalid gc policy ({where}): {item.strip()!r} is not "
                             "key=value", hint="e.g. keep-storage=10GB,keep-duration=48h")
        if key == "keep-storage":
            storage = value
        elif key == "keep-duration":
            duration = value
        elif key == "filter":
            filters.append(value)
        elif key == "type":  # BuildKit's own spelling of a filter: type==KIND
            filters.append(item.strip())
        elif key == "all":
            everything = _flag_all(value, where)
        else:
            raise UsageError(f"invalid gc policy ({where}): unknown key {key!r}",
                             hint="keys: keep-storage, keep-duration, filter, all")
    return _policy(storage, duration, filters, everything, where)


def default_policies() -> tuple[GcPolicy, ...]:
    """BuildKit's default policies (see the module docstring)."""
    cap = _DEFAULT_PERCENT
    return (GcPolicy(keep_bytes=512 * 10**6, keep_duration=48 * 3600.0,
                     kinds=frozenset({"context", "cachemount"})),
            GcPolicy(keep_percent=cap, keep_duration=60 * 86400.0),
            GcPolicy(keep_percent=cap),
            GcPolicy(keep_percent=cap, kinds=_DEFAULT_KINDS | {"cachemount"}))


def with_cache_max(settings: GcSettings, environ: Mapping[str, str] = os.environ
                   ) -> GcSettings:
    """``settings`` with ``DOCKYARD_CACHE_MAX`` (the worker's environment) as one more
    policy, ``keep-storage=MAX``, after the others."""
    limit = cache_limit(environ)
    if limit is None:
        return settings
    return GcSettings(settings.enabled, (*settings.policies, GcPolicy(keep_bytes=limit)),
                      settings.interval, settings.grace, settings.source)


@dataclass(frozen=True, slots=True)
class GcSettings:
    """A worker's collector: on or off, its policies in order, how often it runs
    (``interval`` seconds, and after each build), and ``grace``: what was used this
    recently and no build leased (a layer being written, a record not yet put) stays."""

    enabled: bool = True
    policies: tuple[GcPolicy, ...] = field(default_factory=default_policies)
    interval: float = _DEFAULT_INTERVAL
    grace: float = _DEFAULT_GRACE
    source: str = "default"  # where the policies came from, for ``du``

    def to_wire(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "interval": self.interval, "grace": self.grace,
                "source": self.source, "policies": [p.to_wire() for p in self.policies]}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any] | None) -> GcSettings:
        if not wire:
            return cls()
        return cls(enabled=bool(wire.get("enabled", True)),
                   policies=tuple(GcPolicy.from_wire(p) for p in wire.get("policies") or ()),
                   interval=float(wire.get("interval", _DEFAULT_INTERVAL)),
                   grace=float(wire.get("grace", _DEFAULT_GRACE)),
                   source=str(wire.get("source", "")))

    def describe(self) -> list[str]:
        """``du``'s lines for these settings."""
        if not self.enabled:
            return [f"GC: off ({self.source})"]
        head = (f"GC: every {format_duration(self.interval)} and after each build, "
                f"policies from {self.source}")
        return [head, *(f"  {index}: {policy.describe()}"
                        for index, policy in enumerate(self.policies, 1))]


def _interval(value: Any, what: str) -> float:
    seconds = parse_duration(value, what)
    if seconds <= 0:
        raise UsageError(f"invalid {what} {value!r}: it must be more than 0s")
    return seconds


def load_config(path: Path) -> GcSettings:
    """The settings of a TOML policy file (see the module docstring)."""
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise UsageError(f"cannot read the gc policy file {path}: {err.strerror or err}",
                         hint="check the path given to --gc-config") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"invalid gc policy file {path}: {err}",
                         hint="it is TOML with [[gcpolicy]] tables") from None
    unknown = sorted(set(data) - {"gc", "interval", "grace", "gcpolicy"})
    if unknown:
        raise UsageError(f"invalid gc policy file {path}: unknown setting {unknown[0]!r}",
                         hint="settings: gc, interval, grace, [[gcpolicy]]")
    entries = data.get("gcpolicy", [])
    if not isinstance(entries, list):
        raise UsageError(f"invalid gc policy file {path}: gcpolicy must be [[gcpolicy]] "
                         "tables")
    policies = tuple(_table(entry, f"{where}, gcpolicy {index}")
                     for index, entry in enumerate(entries, 1))
    enabled = data.get("gc", True)
    if not isinstance(enabled, bool):
        raise UsageError(f"invalid gc policy file {path}: gc must be true or false")
    return GcSettings(enabled=enabled,
                      policies=policies or default_policies(),
                      interval=_interval(data.get("interval", _DEFAULT_INTERVAL),
                                         f"interval in {path}"),
                      grace=parse_duration(data.get("grace", _DEFAULT_GRACE),
                                           f"grace in {path}"),
                      source=where if policies else f"{where} (default policies)")


def _table(entry: Any, where: str) -> GcPolicy:
    if not isinstance(entry, dict):
        raise UsageError(f"invalid gc policy ({where}): not a table")
    unknown = sorted(set(entry) - {"keepBytes", "keepDuration", "filters", "all"})
    if unknown:
        raise UsageError(f"invalid gc policy ({where}): unknown key {unknown[0]!r}",
                         hint="keys: keepBytes, keepDuration, filters, all")
    filters = entry.get("filters", [])
    if isinstance(filters, str) or not isinstance(filters, list):
        raise UsageError(f"invalid gc policy ({where}): filters must be a list of strings")
    everything = entry.get("all", False)
    if not isinstance(everything, bool):
        raise UsageError(f"invalid gc policy ({where}): all must be true or false")
    return _policy(entry.get("keepBytes"), entry.get("keepDuration"), filters, everything,
                   where)


def settings_from_flags(config: str | None, policies: Iterable[str], interval: str | None,
                        enabled: bool = True) -> GcSettings:
    """``--gc-config FILE``, ``--gc-policy`` (repeated, in order; replaces the file's
    policies), ``--gc-interval``, ``--no-gc``."""
    settings = load_config(Path(config)) if config else GcSettings()
    given = tuple(parse_policy(text) for text in policies)
    if given:
        settings = GcSettings(settings.enabled, given, settings.interval, settings.grace,
                              "--gc-policy")
    if interval is not None:
        settings = GcSettings(settings.enabled, settings.policies,
                              _interval(interval, "--gc-interval"), settings.grace,
                              settings.source)
    if not enabled:
        settings = GcSettings(False, settings.policies, settings.interval, settings.grace,
                              "--no-gc")
    return settings


def settings_from_environ(environ: Mapping[str, str] = os.environ) -> GcSettings:
    """The embedded service's settings: ``DOCKYARD_GC_CONFIG`` (a policy file) and
    ``DOCKYARD_GC_POLICY`` (policies as ``--gc-policy`` spells them, ``;`` between them;
    ``off`` turns the collector off)."""
    text = environ.get(POLICY_ENV, "").strip()
    if text.lower() == "off":
        return settings_from_flags(environ.get(CONFIG_ENV) or None, (), None, enabled=False)
    policies = [part for part in text.split(";") if part.strip()]
    settings = settings_from_flags(environ.get(CONFIG_ENV) or None, (), None)
    if policies:
        given = tuple(parse_policy(part.strip(), POLICY_ENV) for part in policies)
        settings = GcSettings(settings.enabled, given, settings.interval, settings.grace,
                              POLICY_ENV)
    return settings
