"""The benchmarks' shared output: one timestamped JSON + markdown pair per run, the table printed."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any


def machine() -> str:
    """The machine a run was measured on: architecture, processor, torch threads and GPU if any."""
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.machine()}, {platform.processor() or 'cpu'}, {torch.get_num_threads()} torch threads{gpu}"


def write_results(out: Path, name: str, result: dict[str, Any], table: str, *, as_json: bool) -> None:
    """Write `out/NAME-STAMP.json` and `.md`, and print the JSON (`as_json`) or the table."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{name}-{stamp}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}-{stamp}.md").write_text(table + "\n")
    print(json.dumps(result, indent=2) if as_json else table)
