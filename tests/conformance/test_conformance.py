"""Each corpus case built by dockyard and compared with BuildKit's recorded result; and,
when dockerd is there, BuildKit re-built and compared with its recording (so a recording
cannot go stale).  A case with ``known_difference`` is a strict xfail: it must keep
failing until dockyard is fixed, and then the key must go."""

from __future__ import annotations

from pathlib import Path

import pytest
from conf_buildkit import BuildKitSide
from conf_compare import compare, load
from conf_corpus import case_names, load_case
from conf_dockyard import build


def _param(name: str) -> object:
    reason = load_case(name).known_difference
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    return pytest.param(name, marks=marks)


@pytest.mark.conformance
@pytest.mark.parametrize("name", [_param(name) for name in case_names()])
def test_dockyard_matches_buildkit(name: str, busybox_reference: str, tmp_path: Path) -> None:
    case = load_case(name)
    actual = build(case, tmp_path, busybox_reference)
    differences = compare(load(case.recorded), actual, case.expect_failure,
                          case.ignore_paths)
    assert differences == [], f"{name}: {case.settings.get('about')}"


@pytest.mark.conformance
@pytest.mark.oracle
@pytest.mark.parametrize("name", [n for n in case_names() if not load_case(n).by_hand])
def test_buildkit_matches_recording(name: str, buildkit_side: BuildKitSide,
                                    tmp_path: Path) -> None:
    case = load_case(name)
    fresh = buildkit_side.build(case, tmp_path)
    recorded = load(case.recorded)
    if case.expect_failure is not None:
        assert compare(fresh, fresh, {"buildkit": case.expect_failure["buildkit"],
                                      "dockyard": case.expect_failure["buildkit"]}) == []
        return
    assert compare(recorded, fresh, None) == []
