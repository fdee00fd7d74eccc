"""The benchmarks' shared output: one timestamped JSON + markdown pair per run, the table printed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def write_results(out: Path, name: str, result: dict[str, Any], table: str, *, as_json: bool) -> None:
    """Write `out/NAME-STAMP.json` and `.md`, and print the JSON (`as_json`) or the table."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{name}-{stamp}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}-{stamp}.md").write_text(table + "\n")
    print(json.dumps(result, indent=2) if as_json else table)
