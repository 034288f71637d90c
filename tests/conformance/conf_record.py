"""Record what BuildKit makes of corpus cases: ``python tests/conformance/conf_record.py
[case ...]`` (all cases but the ``by_hand`` ones when none is named) writes each case's
``buildkit/`` folder.  Read the diff before committing."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conf_buildkit import BuildKitSide  # noqa: E402
from conf_compare import Failed, save  # noqa: E402
from conf_corpus import case_names, load_case  # noqa: E402


def record(names: list[str]) -> None:
    side = BuildKitSide.start()
    try:
        for name in names or case_names():
            case = load_case(name)
            if case.by_hand and not names:
                continue
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="conf-") as scratch:
                result = side.build(case, Path(scratch))
            save(result, case.recorded)
            verdict = "FAILED " + result.message[-200:] if isinstance(result, Failed) else "ok"
            print(f"{name}: {verdict} ({time.monotonic() - started:.1f}s)", flush=True)
    finally:
        side.stop()


if __name__ == "__main__":
    record(sys.argv[1:])
