"""GC policies as flags, files and wire maps; bad ones refused with the message pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.scheduler._errors import UsageError
from dockyard.workers._gc_policy import (
    GcPolicy,
    GcSettings,
    default_policies,
    load_config,
    parse_policy,
    settings_from_environ,
    settings_from_flags,
    with_cache_max,
)

DEFAULT = frozenset({"image", "exec", "context"})

# (--gc-policy value, the policy)
GOOD: list[tuple[str, GcPolicy]] = [
    ("keep-storage=1GB", GcPolicy(keep_bytes=1024**3)),
    ("keep-storage=10%", GcPolicy(keep_percent=10.0)),
    ("keep-duration=48h", GcPolicy(keep_duration=48 * 3600.0)),
    ("keep-storage=0,filter=cachemount", GcPolicy(keep_bytes=0,
                                                  kinds=frozenset({"cachemount"}))),
    ("keep-storage=512m,filter=exec,filter=image",
     GcPolicy(keep_bytes=512 * 1024**2, kinds=frozenset({"exec", "image"}))),
    ("keep-duration=2d,filter=type==source.local,type==exec.cachemount",  # BuildKit's
     GcPolicy(keep_duration=172800.0, kinds=frozenset({"context", "cachemount"}))),
    ("keep-storage=1GB,all=true", GcPolicy(keep_bytes=1024**3,
                                           kinds=DEFAULT | {"cachemount"})),
    ("keep-duration=90m,filter=type==regular",
     GcPolicy(keep_duration=5400.0, kinds=frozenset({"image", "exec"}))),
]


@pytest.mark.parametrize(("text", "policy"), GOOD)
def test_parse_policy(text: str, policy: GcPolicy) -> None:
    assert parse_policy(text) == policy
    assert parse_policy(policy.describe()) == policy  # du's spelling reads back
    assert GcPolicy.from_wire(policy.to_wire()) == policy


# (--gc-policy value, the error's message)
BAD = [
    ("keep-storage=lots", "invalid gc policy (--gc-policy): keep-storage 'lots': expected "
                          "a size such as 512MB or 20GB"),
    ("keep-storage=150%", "invalid gc policy (--gc-policy): keep-storage 150% is not a "
                          "percent of the disk between 0 and 100"),
    ("keep-duration=soon", "invalid gc policy (--gc-policy): keep-duration 'soon': expected "
                           "a duration such as 48h, 90m, 60d or a number of seconds"),
    ("keep-storage=1GB,filter=layers", "invalid gc policy (--gc-policy): unknown filter "
                                       "'layers'"),
    ("filter=exec", "invalid gc policy (--gc-policy): it has neither keep-storage nor "
                    "keep-duration, so it would remove everything it filters"),
    ("keep-storage=1GB,size=2", "invalid gc policy (--gc-policy): unknown key 'size'"),
    ("keep-storage", "invalid gc policy (--gc-policy): 'keep-storage' is not key=value"),
    ("keep-storage=1GB,all=maybe", "invalid gc policy (--gc-policy): all='maybe' is not "
                                   "true or false"),
    ("keep-storage=1GB,type==image.layers", "invalid gc policy (--gc-policy): unknown "
                                            "filter 'type==image.layers'"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_policies_refused(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_policy(text)
    assert caught.value.message == message


def test_config_file_in_buildkits_shape(tmp_path: Path) -> None:
    path = tmp_path / "gc.toml"
    path.write_text('interval = "2s"\ngrace = 0\n'
                    '[[gcpolicy]]\nkeepBytes = 512000000\nkeepDuration = 172800\n'
                    'filters = ["type==source.local", "type==exec.cachemount"]\n'
                    '[[gcpolicy]]\nall = true\nkeepBytes = "10%"\n')
    settings = load_config(path)
    assert settings.policies == (
        GcPolicy(keep_bytes=512000000, keep_duration=172800.0,
                 kinds=frozenset({"context", "cachemount"})),
        GcPolicy(keep_percent=10.0, kinds=DEFAULT | {"cachemount"}))
    assert (settings.interval, settings.grace, settings.source) == (2.0, 0.0, str(path))
    assert GcSettings.from_wire(settings.to_wire()) == settings


@pytest.mark.parametrize(("text", "message"), [
    ("[[gcpolicy]]\nkeepBytes = 1\nkeep = 2\n", "unknown key 'keep'"),
    ("[[gcpolicy]]\nkeepBytes = 1\nfilters = \"exec\"\n", "filters must be a list"),
    ("[[gcpolicy]]\nfilters = [\"exec\"]\n", "it has neither keep-storage nor"),
    ("gcpolicy = 3\n", "gcpolicy must be [[gcpolicy]] tables"),
    ("interval = 0\n", "it must be more than 0s"),
    ("maxUsedSpace = 1\n", "unknown setting 'maxUsedSpace'"),
    ("gc = \"no\"\n", "gc must be true or false"),
    ("[[gcpolicy\n", "invalid gc policy file"),
])
def test_bad_config_files_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gc.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[")) as caught:
        load_config(path)
    assert str(path) in caught.value.message


def test_defaults_are_buildkits() -> None:
    assert [p.describe() for p in default_policies()] == [
        "keep-storage=512000000,keep-duration=2d,filter=context,filter=cachemount",
        "keep-storage=10%,keep-duration=60d", "keep-storage=10%", "keep-storage=10%,all=true"]


def test_flags_and_environment() -> None:
    settings = settings_from_flags(None, ["keep-storage=1MB", "keep-duration=1h"], "30s")
    assert [p.describe() for p in settings.policies] == [f"keep-storage={1024**2}",
                                                          "keep-duration=1h"]
    assert (settings.interval, settings.source) == (30.0, "--gc-policy")
    assert not settings_from_flags(None, [], None, enabled=False).enabled
    env = settings_from_environ({"DOCKYARD_GC_POLICY": "keep-storage=1MB; filter=exec,"
                                                       "keep-duration=1d"})
    assert len(env.policies) == 2 and env.source == "DOCKYARD_GC_POLICY"
    assert not settings_from_environ({"DOCKYARD_GC_POLICY": "off"}).enabled
    capped = with_cache_max(env, {"DOCKYARD_CACHE_MAX": "2MB"})
    assert capped.policies[-1] == GcPolicy(keep_bytes=2 * 1024**2)
    with pytest.raises(UsageError, match="unknown filter 'bogus'"):
        settings_from_environ({"DOCKYARD_GC_POLICY": "keep-storage=1,filter=bogus"})


def test_percent_is_of_the_roots_disk(tmp_path: Path) -> None:
    import shutil

    assert GcPolicy(keep_percent=50.0).bound(tmp_path / "not" / "yet") == int(
        shutil.disk_usage(tmp_path).total * 0.5)


@pytest.mark.parametrize(("identifier", "kind"), [
    ("docker-image://docker.io/library/busybox:latest", "image"),
    ("local://context", "context"), ("local://other-context", "context"),
    ("https://example.com/file.tar", "exec")])
def test_the_solver_marks_each_records_kind(identifier: str, kind: str) -> None:
    from dockyard.scheduler._graph import SourceOp, Vertex
    from dockyard.scheduler._solver import result_kind

    assert result_kind(Vertex(SourceOp(identifier))) == kind
