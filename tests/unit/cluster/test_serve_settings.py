"""``dockyard serve``'s flags (cluster/_endpoint.py ``serve_settings``): what it refuses,
and what it serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.cluster._build_cmd import endpoint_of
from dockyard.cluster._cli import build_parser
from dockyard.cluster._endpoint import ServeSettings, serve_settings
from dockyard.cluster._wire import Endpoint
from dockyard.scheduler._errors import UsageError


def _settings(*argv: str) -> ServeSettings:
    return serve_settings(build_parser().parse_args(["serve", *argv]))


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    (tmp_path / "t").write_text("  tok3n \nignored\n")
    return str(tmp_path / "t")


def test_defaults_serve_loopback_without_a_token() -> None:
    settings = _settings()
    assert (settings.url, settings.session_url, settings.token) == (
        "http://127.0.0.1:8375", "http://127.0.0.1:8375", None)


def test_token_tls_and_advertised_url(token_file: str) -> None:
    settings = _settings("--host", "0.0.0.0", "--port", "9000", "--token-file", token_file,
                         "--tls-cert", "c.pem", "--tls-key", "k.pem",
                         "--advertise-url", "https://build.example:9000")
    assert settings.token == "tok3n" and "tok3n" not in repr(settings)
    assert settings.url == "https://0.0.0.0:9000"
    assert settings.session_url == "https://build.example:9000"


def test_insecure_allows_any_host_without_a_token() -> None:
    assert _settings("--host", "0.0.0.0", "--insecure").host == "0.0.0.0"


REFUSED = [
    (["--host", "0.0.0.0"], "refusing to serve 0.0.0.0 without a token\n"
                            "hint: pass --token-file FILE, bind 127.0.0.1, or add --insecure"),
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together\n"
                              "hint: pass both, or neither for plain HTTP"),
    (["--port", "70000"], "invalid --port 70000: not a TCP port"),
    (["--advertise-url", "ftp://x"], "invalid --advertise-url 'ftp://x': not http(s)://"),
    (["--token-file", "/nonexistent/t"],
     "cannot read --token-file '/nonexistent/t': No such file or directory"),
    (["--slots", "0"], "invalid --slots 0: at least 1"),
    (["--cache", "type=local,src=/srv/c"],
     "invalid --cache type=local: a cluster's shared cache is type=s3 (every node must reach "
     "it)"),
]


@pytest.mark.parametrize(("argv", "message"), REFUSED)
def test_refused(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        _settings(*argv)
    assert str(caught.value) == message


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("\n")
    with pytest.raises(UsageError, match="not one line of at most 4096 bytes"):
        _settings("--token-file", str(tmp_path / "t"))


# --- the client's side: dockyard build --endpoint ------------------------------------------


def _endpoint(argv: list[str], environ: dict[str, str]) -> Endpoint | None:
    return endpoint_of(build_parser().parse_args(["build", *argv, "."]), environ)


def test_no_endpoint_is_the_local_service() -> None:
    assert _endpoint([], {}) is None


def test_endpoint_flags_win_over_the_environment(token_file: str) -> None:
    environ = {"DOCKYARD_ENDPOINT": "tcp://env:1", "DOCKYARD_TOKEN": "env-token",
               "DOCKYARD_TLS_CA": "/env-ca.pem"}
    assert _endpoint([], environ) == Endpoint("tcp://env:1", host="env", port=1,
                                              ca_file="/env-ca.pem", token="env-token")
    found = _endpoint(["--endpoint", "https://flag:2", "--token-file", token_file,
                       "--tls-ca", "/flag-ca.pem"], environ)
    assert found == Endpoint("https://flag:2", host="flag", port=2, tls=True,
                             ca_file="/flag-ca.pem", token="tok3n")


# --- a request through an endpoint names no path of the cluster's machines ---------------

SERVER_PATHS = [
    # (--cache-to values, --cache-from values, refused flag or None)
    ([], [], None),
    (["type=s3,bucket=b,mode=max"], ["type=s3,bucket=b"], None),
    (["type=local,dest=/srv/cache,mode=max"], [], "--cache-to"),
    ([], ["type=local,src=/srv/cache"], "--cache-from"),
]


@pytest.mark.parametrize(("cache_to", "cache_from", "refused"), SERVER_PATHS)
def test_an_endpoint_refuses_requests_naming_server_paths(
        cache_to: list[str], cache_from: list[str], refused: str | None) -> None:
    from dockyard.cluster._build_options import BuildOptions, parse_cache
    from dockyard.cluster._daemon import refuse_server_paths

    options = BuildOptions(
        context="/c", cache_to=tuple(parse_cache("--cache-to", v) for v in cache_to),
        cache_from=tuple(parse_cache("--cache-from", v) for v in cache_from))
    params = {"options": options.to_wire()}
    if refused is None:
        refuse_server_paths(params)
        return
    with pytest.raises(UsageError) as caught:
        refuse_server_paths(params)
    assert caught.value.message == (
        f"{refused} type=local names a directory on the cluster's machines, which a build "
        "through an endpoint may not use")


def test_a_shared_cache_is_imported_from_and_exported_to_by_every_build() -> None:
    from dockyard.cluster._daemon import with_caches

    settings = _settings("--cache", "type=s3,bucket=shared,region=r1", "--slots", "3")
    assert settings.slots == 3
    from dockyard.cluster._build_options import BuildOptions, parse_cache

    own = ["s3", [["bucket", "mine"]], "min", False]
    mine = BuildOptions(context="/c", cache_to=(parse_cache("--cache-to", "type=s3,bucket=mine"),))
    params = {"options": mine.to_wire(), "dockerfile": b""}
    merged = with_caches(params, settings.caches)
    options = merged["options"]
    assert [spec[0:2] for spec in options["cache_from"]] == [
        ["s3", [["bucket", "shared"], ["region", "r1"]]]]
    assert options["cache_to"][0] == own
    assert options["cache_to"][1][2:] == ["max", True]  # mode=max, ignore-error
    assert params["options"]["cache_to"] == [own]  # the client's request is not changed
    assert with_caches(params, ()) is params
