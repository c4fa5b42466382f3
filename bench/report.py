"""Where every bench script leaves its numbers: bench/results/<name>.json, written atomically."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.checkpoint import write_json  # noqa: E402  (needs ROOT on sys.path)


def write_results(res: dict, path: str | Path) -> Path:
    """Write `res` as JSON to `path` (a bare file name lands in bench/results/), print where, return it.
    Atomic, so an interrupted benchmark never leaves half a file over the last good one."""
    path = Path(path)
    if path.parent == Path("."):
        path = RESULTS / path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, res)
    print(f"wrote {path}")
    return path
