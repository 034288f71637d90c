"""The proxy variables BuildKit passes to RUN without an ARG declaring them."""

from __future__ import annotations

from collections.abc import Mapping

#: Each proxy variable in both of its spellings, as BuildKit's llb ``ProxyEnv`` holds them.
PROXY_PAIRS = (
    ("HTTP_PROXY", "http_proxy"), ("HTTPS_PROXY", "https_proxy"),
    ("FTP_PROXY", "ftp_proxy"), ("NO_PROXY", "no_proxy"), ("ALL_PROXY", "all_proxy"),
)
PROXY_ARGS = frozenset(name for pair in PROXY_PAIRS for name in pair)


def proxy_environment(build_args: Mapping[str, str], env: Mapping[str, str]
                      ) -> tuple[str, ...]:
    """``NAME=value`` for RUN from the proxy build args: a proxy given in either spelling
    sets both (``--build-arg http_proxy=X`` gives ``HTTP_PROXY=X`` too), as BuildKit's
    executor does; a spelling given itself keeps its own value.  Names the RUN's
    environment already sets (a declared ARG, an ENV) and empty values are left out."""
    out = []
    for pair in PROXY_PAIRS:
        given = [build_args[name] for name in pair if build_args.get(name)]
        for name in pair:
            if given and name not in env:
                out.append(f"{name}={build_args.get(name) or given[0]}")
    return tuple(sorted(out))
