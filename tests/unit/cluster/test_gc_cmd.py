"""``dockyard du``/``prune``'s units, output and usage errors (no store touched)."""

from __future__ import annotations

import io

import pytest

from dockyard.cache_backends._protocol import PruneReport
from dockyard.cluster._cli import main
from dockyard.cluster._gc_cmd import (
    DiskUsage,
    KindUsage,
    PruneResult,
    RecordInfo,
    ago,
    cache_limit,
    confirmed,
    format_prune,
    format_remote,
    format_usage,
    human_size,
    parse_duration,
    parse_filters,
    parse_size,
)
from dockyard.scheduler._errors import CacheError

# bytes -> docker's units.HumanSize
HUMAN = [(0, "0B"), (999, "999B"), (1000, "1kB"), (1234, "1.234kB"), (12_345, "12.35kB"),
         (1_200_000_000, "1.2GB"), (999_999, "1000kB"), (5 * 10**15, "5PB")]


@pytest.mark.parametrize(("size", "text"), HUMAN)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


# --keep-storage text -> bytes (binary units, as buildx's MemBytes)
SIZES = [("100", 100), ("100b", 100), ("1k", 1024), ("1KB", 1024), ("1kib", 1024),
         ("512MB", 512 << 20), ("20GB", 20 << 30), ("1.5g", 3 << 29), ("2 TB", 2 << 40)]


@pytest.mark.parametrize(("text", "size"), SIZES)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


# Go durations -> seconds
DURATIONS = [("24h", 86400.0), ("90m", 5400.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
             ("10s", 10.0), ("0s", 0.0), ("500ms", 0.5), ("2h0m30s", 7230.0)]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


AGES = [(0, "just now"), (59, "just now"), (60, "1 minute ago"), (7200, "2 hours ago"),
        (86400 * 3 + 5, "3 days ago")]


@pytest.mark.parametrize(("seconds", "text"), AGES)
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text


# argv -> the exact error line(s) on stderr
ERRORS = [
    (["prune", "-f", "--keep-storage", "lots"],
     "error: invalid --keep-storage 'lots': expected a size such as 512MB or 20GB\n"),
    (["prune", "-f", "--filter", "until=soon"],
     "error: invalid --filter until 'soon': expected a duration such as 24h, 90m or 1h30m\n"),
    (["prune", "-f", "--filter", "until="],
     "error: invalid --filter until '': expected a duration such as 24h, 90m or 1h30m\n"),
    (["prune", "-f", "--filter", "type=regular"],
     "error: invalid --filter 'type=regular': only until=DURATION is supported\n"
     "hint: e.g. --filter until=24h\n"),
    (["prune", "-f", "--older-than", "1d"],
     "error: invalid --older-than '1d': expected a duration such as 24h, 90m or 1h30m\n"),
    (["prune", "-f", "--all", "--cache", "type=s3,bucket=b"],
     "error: --all applies to the local store only, not to --cache\n"),
    (["prune", "-f", "--cache", "type=s3"],
     "error: invalid --cache 'type=s3': bucket is required for the s3 cache\n"),
    (["prune", "-f", "--cache", "type=s3,bucket"],
     "error: invalid --cache 'type=s3,bucket': 'bucket' is not key=value\n"),
    (["prune", "-f", "--cache", "type=s3,bucket=b,use_path_style=maybe"],
     "error: invalid --cache 'type=s3,bucket=b,use_path_style=maybe': use_path_style must "
     "be true or false\n"),
    (["prune", "-f", "--cache", "type=s3,bucket=b,secret_access_key=x"],
     "error: invalid --cache 'type=s3,bucket=b,secret_access_key=x': unsupported attribute "
     "'secret_access_key'\nhint: credentials come from the environment, a profile or a "
     "role\n"),
    (["prune", "-f", "--cache", "type=registry,ref=x"],
     "error: invalid --cache 'type=registry,ref=x': prune takes type=s3 only\n"
     "hint: the local store is pruned without --cache\n"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
                      ) -> None:
    assert main(argv) == 1
    assert capsys.readouterr().err == message


def test_unknown_flag_is_a_flag_error(capsys: pytest.CaptureFixture[str]) -> None:
    """As buildx (pflag) names it, with Docker's exit status for a flag error."""
    assert main(["du", "--all"]) == 125
    assert capsys.readouterr().err == ("error: unknown flag: --all\n"
                                       "hint: see 'dockyard du --help'\n")


def test_filters_last_until_wins() -> None:
    assert parse_filters([]) is None
    assert parse_filters(["until=1h", "until=2h"]) == 7200.0


USAGE = DiskUsage(
    (KindUsage("layer blobs", 3, 1_234_567, True), KindUsage("cache records", 3, 900, True),
     KindUsage("unpacked layers", 2, 5_000_000, True),
     KindUsage("cache mounts", 1, 10_000, False)),
    (RecordInfo("sha256:" + "a" * 64, 2, 1_234_000, 1000.0),))

DU = """\
KIND              COUNT   RECLAIMABLE   SIZE
layer blobs       3       true          1.235MB
cache records     3       true          900B
unpacked layers   2       true          5MB
cache mounts      1       false         10kB

Reclaimable:\t6.235MB
Total:\t\t6.245MB
"""

RECORDS = f"""
ID{" " * 72}LAYERS   RECLAIMABLE   SIZE      LAST ACCESSED
sha256:{"a" * 64}   2        true          1.234MB   1 hour ago
"""


def test_format_usage() -> None:
    assert format_usage(USAGE, verbose=False, now=4600.0) == DU
    head, tail = DU.split("\nReclaimable")
    assert format_usage(USAGE, verbose=True, now=4600.0) == (
        head + RECORDS + "\nReclaimable" + tail)


def test_format_prune() -> None:
    result = PruneResult(PruneReport(records_removed=4, blobs_removed=2, bytes_freed=1_000_000),
                         layers_removed=1, layer_bytes=200_000)
    assert format_prune(result) == (
        "KIND              REMOVED              RECLAIMED\n"
        "cache             4 records, 2 blobs   1MB\n"
        "unpacked layers   1                    200kB\n"
        "cache mounts      0                    0B\n"
        "Total:\t1.2MB\n")


def test_format_remote() -> None:
    report = PruneReport(records_removed=3, blobs_removed=1, bytes_freed=2500)
    assert format_remote(report, "s3://b/p/") == (
        "Pruned s3://b/p/: 3 records, 1 blobs\nTotal:\t2.5kB\n")


@pytest.mark.parametrize(("everything", "answer", "going_on"), [
    (False, "y\n", True), (False, "Y\n", True), (False, "yes\n", True), (False, "no\n", False),
    (False, "", False), (True, "y\n", True)])
def test_confirmed(everything: bool, answer: str, going_on: bool) -> None:
    out = io.StringIO()
    assert confirmed(everything, io.StringIO(answer), out) is going_on
    assert out.getvalue().startswith("WARNING! This will remove all build cache")
    assert out.getvalue().endswith("Are you sure you want to continue? [y/N] ")
    assert ("cache mounts included" in out.getvalue()) is everything


# DOCKYARD_CACHE_MAX -> the limit in bytes (None: no limit)
LIMITS = [({}, None), ({"DOCKYARD_CACHE_MAX": ""}, None), ({"DOCKYARD_CACHE_MAX": "off"}, None),
          ({"DOCKYARD_CACHE_MAX": "OFF"}, None), ({"DOCKYARD_CACHE_MAX": "20GB"}, 20 << 30),
          ({"DOCKYARD_CACHE_MAX": " 512m "}, 512 << 20), ({"DOCKYARD_CACHE_MAX": "0"}, 0)]


@pytest.mark.parametrize(("environ", "limit"), LIMITS)
def test_cache_limit(environ: dict[str, str], limit: int | None) -> None:
    assert cache_limit(environ) == limit


def test_cache_limit_invalid() -> None:
    with pytest.raises(CacheError) as caught:
        cache_limit({"DOCKYARD_CACHE_MAX": "half"})
    assert caught.value.message == "invalid DOCKYARD_CACHE_MAX 'half': expected a size such as " \
        "20GB, or off"
    assert caught.value.hint == "fix or unset DOCKYARD_CACHE_MAX in the service's environment"
