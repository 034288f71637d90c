"""The local cache's automatic limit (a policy a worker needs lives below the cluster
package, STYLE.md habit 13).

``DOCKYARD_CACHE_MAX`` (a size, ``20GB``; unset, empty or ``off``: none) is one more
policy of every worker's garbage collector (workers/_gc_policy.py ``with_cache_max``,
run after each build by workers/_gc.py), after its own.  ``enforce_cache_limit`` applies
the limit to one backend at once: least recently used first, never what was used in the
last ``RUNNING_GRACE`` seconds (other builds may be running), blobs and records only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from dockyard.scheduler._errors import CacheError, UsageError

if TYPE_CHECKING:
    from dockyard.cache_backends._local import LocalBackend
    from dockyard.cache_backends._protocol import PruneReport

__all__ = ["CACHE_MAX_ENV", "RUNNING_GRACE", "cache_limit", "enforce_cache_limit",
           "parse_size"]

CACHE_MAX_ENV: Final = "DOCKYARD_CACHE_MAX"
#: What was used this recently is never pruned while a service runs.
RUNNING_GRACE: Final = 3600.0
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", re.IGNORECASE)


def parse_size(text: str, flag: str = "--keep-storage") -> int:
    """Bytes of ``20GB``/``512m``/``1.5g``/``100`` (binary units, as buildx's flag)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"invalid {flag} {text!r}: expected a size such as 512MB or 20GB")
    power = " kmgtp".index((match.group(2) or " ").lower())
    return int(float(match.group(1)) * 1024 ** power)


def cache_limit(environ: Mapping[str, str] = os.environ) -> int | None:
    """The bytes ``DOCKYARD_CACHE_MAX`` allows the local cache, or None (no limit)."""
    text = environ.get(CACHE_MAX_ENV, "").strip()
    if text.lower() in ("", "off"):
        return None
    try:
        return parse_size(text, CACHE_MAX_ENV)
    except UsageError:
        raise CacheError(f"invalid {CACHE_MAX_ENV} {text!r}: expected a size such as 20GB, "
                         "or off", hint=f"fix or unset {CACHE_MAX_ENV} in the service's "
                         "environment") from None


async def enforce_cache_limit(backend: LocalBackend, environ: Mapping[str, str] = os.environ
                              ) -> PruneReport | None:
    """After a build: prune ``backend`` down to ``DOCKYARD_CACHE_MAX`` (least recently used
    first, keeping what was used in the last ``RUNNING_GRACE`` seconds); None when there is
    no limit or the cache is within it."""
    limit = cache_limit(environ)
    if limit is None or (await backend.usage()).total_bytes <= limit:
        return None
    return await backend.prune(keep_bytes=limit, older_than=RUNNING_GRACE)
