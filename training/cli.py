"""`desta-edge corpus` and `desta-edge datagen`: entry points for the data side of training.

`register_cli(subparsers)` adds both subcommands to the main parser (desta_edge/cli.py wires it
in). Progress bars go to stderr unless `--json`, where the last line of stdout is one object.
Exit codes as in the main CLI: 0 ok, 2 bad input, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


def register_cli(subparsers: Any) -> None:
    """Add the `corpus` and `datagen` subcommands to an argparse subparsers object."""
    c = subparsers.add_parser("corpus", help="synthesize the labelled speech/sound corpus")
    c.add_argument("--out", required=True, help="output directory (audio/ + metadata.jsonl)")
    c.add_argument("--size", type=int, required=True, help="number of clips")
    c.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    c.add_argument("--workers", type=int, default=2, help="synthesis processes (default: 2)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing corpus in --out")
    c.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    c.set_defaults(func=_cmd_corpus)

    d = subparsers.add_parser("datagen", help="self-generated alignment data: the LLM answers from descriptions")
    d.add_argument("--corpus", required=True, help="corpus directory (from `desta-edge corpus`)")
    d.add_argument("--out", required=True, help="JSONL to write, or to resume if it exists")
    d.add_argument("--limit", type=int, default=None, help="at most this many records (default: all)")
    d.add_argument("--batch-size", type=int, default=16, help="conversations per generate call (default: 16)")
    d.add_argument("--seed", type=int, default=0, help="prompt sampling seed (default: 0)")
    d.add_argument("--model", default="tiny", help="preset, checkpoint dir or hub id (default: tiny)")
    d.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    d.add_argument("--device", default=None, help="torch device for the transformers backend")
    d.add_argument("--max-new-tokens", type=int, default=64, help="cap on each answer (default: 64)")
    d.add_argument("--prompts-per-clip", type=int, default=1, help="records per clip (default: 1)")
    d.add_argument("--splits", default="train,validation", help="corpus splits to cover (default: train,validation)")
    d.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    d.set_defaults(func=_cmd_datagen)


def _cmd_corpus(args: argparse.Namespace) -> int:
    from .corpus import CorpusOptions, build_corpus, read_metadata

    t0 = time.perf_counter()
    try:
        options = CorpusOptions(out_dir=Path(args.out), size=args.size, seed=args.seed, workers=args.workers,
                                overwrite=args.overwrite, progress=not args.json)
        meta = build_corpus(options)
    except ValueError as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return _fail(str(e), 1)
    seconds = time.perf_counter() - t0
    manifest = json.loads((meta.parent / "corpus.json").read_text())
    clips = sum(1 for _ in read_metadata(meta.parent))
    result = {"metadata": str(meta), "clips": clips, "seconds": round(seconds, 1), "counts": manifest["counts"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{clips} clips in {seconds:.1f} s -> {meta}")
        for key in ("split", "kind", "synthesizer"):
            print(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"][key].items()))
    return 0


def _cmd_datagen(args: argparse.Namespace) -> int:
    from .datagen import DatagenOptions, run_datagen

    t0 = time.perf_counter()
    try:
        options = DatagenOptions(
            corpus_dir=Path(args.corpus), out_file=Path(args.out), limit=args.limit, batch_size=args.batch_size,
            seed=args.seed, model=args.model, backend=args.backend, device=args.device,
            max_new_tokens=args.max_new_tokens, prompts_per_clip=args.prompts_per_clip,
            splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()), progress=not args.json,
        )
        result = run_datagen(options)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return _fail(str(e), 1)
    seconds = time.perf_counter() - t0
    summary = {"out": str(result.path), "written": result.written, "existing": result.existing,
               "total": result.total, "seconds": round(seconds, 1)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{result.written} new records ({result.existing} already there, {result.total} asked) "
              f"in {seconds:.1f} s -> {result.path}")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
