from __future__ import annotations

from pathlib import Path

import pytest
from support.helm import build_renderer


@pytest.fixture(scope="session")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """helm/tools/render, built once per session."""
    return build_renderer(tmp_path_factory.mktemp("render"))
