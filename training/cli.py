"""`desta-edge corpus`, `datagen`, `train` and `eval`: entry points for training and evaluation.

`register_cli(subparsers)` adds the subcommands to the main parser (desta_edge/cli.py wires it
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

from desta_edge.runtime.config import LORA_SCOPES

EXIT_BAD_INPUT = 2


def register_cli(subparsers: Any) -> None:
    """Add the `corpus`, `datagen`, `train`, `eval` and `ship` subcommands to an argparse subparsers object."""
    from .corpus import CorpusOptions

    c = subparsers.add_parser("corpus", help="synthesize the labelled speech/sound corpus, or label real recordings")
    c.add_argument("--out", required=True, help="output directory (audio/ + metadata.jsonl)")
    what = c.add_mutually_exclusive_group(required=True)
    what.add_argument("--size", type=int, help="number of synthetic clips")
    what.add_argument("--recordings", metavar="MANIFEST",
                      help="instead: an evaluation corpus from real recordings listed in a JSONL manifest "
                           "(README, \"Real voices\"); labels measured by the same rules")
    c.add_argument("--no-variants", action="store_true",
                   help="--recordings: only the recordings as they are, without the quiet, loud and noisy copies")
    c.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    c.add_argument("--room-fraction", type=float, default=CorpusOptions.room_fraction,
                   help="share of clean speech clips with a room's faint background, 30-50 dB under the speech "
                        f"(still labelled Clean; default: {CorpusOptions.room_fraction})")
    c.add_argument("--reverb-fraction", type=float, default=CorpusOptions.reverb_fraction,
                   help=f"share of speech clips played through a synthetic room (default: {CorpusOptions.reverb_fraction})")
    c.add_argument("--channel-fraction", type=float, default=CorpusOptions.channel_fraction,
                   help="share of speech clips band-limited like a telephone or a cheap microphone "
                        f"(default: {CorpusOptions.channel_fraction})")
    c.add_argument("--short-fraction", type=float, default=CorpusOptions.short_fraction,
                   help="share of speech clips that say a reply or request of one or two words (\"Yes.\", "
                        f"\"Stop.\", \"Seven.\") instead of a sentence (default: {CorpusOptions.short_fraction})")
    c.add_argument("--short-low-female-fraction", type=float, default=CorpusOptions.short_low_female_fraction,
                   help="share of the short replies in a woman's voice pitched low (near 150-185 Hz), "
                        f"so that few words in a low voice do not mean a man (default: {CorpusOptions.short_low_female_fraction})")
    c.add_argument("--low-female-fraction", type=float, default=CorpusOptions.low_female_fraction,
                   help="share of the sentences (not short replies) in a woman's voice pitched low, so that the "
                        f"pitch questions see low women's voices often (default: {CorpusOptions.low_female_fraction})")
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
    d.add_argument("--no-filter", action="store_true",
                   help="keep answers that miss or contradict the clip's labels or echo its description "
                        "(default: set them aside)")
    d.add_argument("--no-constrain", action="store_true",
                   help="let an attribute answer use the other labels' words (default: banned while decoding)")
    d.add_argument("--retries", type=int, default=0,
                   help="sampled re-asks of an answer the filter would set aside (default: 0)")
    d.add_argument("--candidates", type=int, default=1,
                   help="answers per attribute question, greedy + sampled; the shortest that passes the filter "
                        "is kept (default: 1)")
    d.add_argument("--answers", choices=("backbone", "label"), default="backbone",
                   help="who answers attribute questions: the backbone LLM (the paper's method), or the clip's "
                        "label in a fixed sentence (for backbones too small to write usable targets; "
                        "see the README) (default: backbone)")
    d.add_argument("--prompts-per-clip", type=int, default=1, help="records per clip (default: 1)")
    d.add_argument("--splits", default="train,validation", help="corpus splits to cover (default: train,validation)")
    d.add_argument("--categories", default=None,
                   help="ask only prompts of these comma-separated categories, e.g. gender,pitch,speed,volume,noise,"
                        "sound,assistant (default: all)")
    d.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    d.set_defaults(func=_cmd_datagen)

    t = subparsers.add_parser("train", help="train the connector (encoder and LLM frozen)")
    t.add_argument("--data", required=True, action="append",
                   help="DeSTA-AQA5M-schema JSONL (from datagen, or the official files); repeat it to train on "
                        "several, read in the order given")
    t.add_argument("--data-root", default=None, help="directory the audio paths are relative to (default: each JSONL's)")
    t.add_argument("--out", required=True, help="output directory: checkpoints/, metrics.jsonl, loss.png, the adapter")
    t.add_argument("--model", default="tiny", help="preset (fresh connector) or checkpoint dir (default: tiny)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=int, default=None, help="passes over the data")
    t.add_argument("--batch-size", type=int, default=4, help="records per micro-batch per process (default: 4)")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    t.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default: 1e-4)")
    t.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    t.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: min(5000, 5%% of the steps))")
    t.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (default: 500)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    t.add_argument("--limit", type=int, default=None, help="use only the first N records")
    t.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    t.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    t.add_argument("--precision", choices=("tf32", "bf16"), default="tf32",
                   help="tf32: fp32 weights (TF32 matmuls on CUDA); bf16: bf16 autocast, with bf16 backbones on CUDA "
                        "and fp32 weights on the CPU, where it pays only with AVX512-BF16 or AMX (default: tf32)")
    t.add_argument("--lora", choices=LORA_SCOPES, default=None,
                   help="also train LoRA r=16 on the LLM's q/k/v: on every token (all, as the reference) or only "
                        "from a conversation's first audio position on (audio: text-only answers stay the backbone's)")
    t.add_argument("--encoder-padding-s", type=float, default=None, metavar="S",
                   help="also train on the shorter encoder window of inference's --encoder-padding-s (the clip + S s "
                        "of silence) in --short-window-share of the batches, so the adapter serves both windows")
    t.add_argument("--short-window-share", type=float, default=0.5, metavar="F",
                   help="with --encoder-padding-s: share of the batches on the shorter window (default: 0.5)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--no-plot", action="store_true", help="do not write loss.png (which needs matplotlib)")
    t.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    t.set_defaults(func=_cmd_train)

    e = subparsers.add_parser("eval", help="paralinguistic QA, language preservation, spoken QA and WER")
    e.add_argument("--model", default="tiny", help="preset, checkpoint directory or hub id (default: tiny)")
    e.add_argument("--corpus", required=True, help="corpus directory (from `desta-edge corpus`)")
    e.add_argument("--split", default="test", help="split to evaluate (default: test)")
    e.add_argument("--limit", type=int, default=None, help="at most N clips and N spoken questions")
    e.add_argument("--batch-size", type=int, default=8, help="conversations per generate call (default: 8)")
    e.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    e.add_argument("--backend", choices=("torch", "onnx", "auto"), default="torch",
                   help="torch, or onnx for a directory from `desta-edge export onnx` (default: torch)")
    e.add_argument("--encoder-padding-s", type=float, default=None, metavar="S",
                   help="evaluate with the encoder reading the clip plus S s of silence (default: the 30 s window)")
    e.add_argument("--out", default=None, help="directory for eval.json and eval.md")
    e.add_argument("--json", action="store_true", help="print the JSON result instead of the markdown table")
    e.set_defaults(func=_cmd_eval)

    s = subparsers.add_parser("ship", help="fp16 adapter + MODEL_CARD.md from a train run and its eval")
    s.add_argument("--run", required=True, help="train output directory (adapter, train.json, metrics.jsonl)")
    s.add_argument("--eval", required=True, help="eval output directory (eval.json)")
    s.add_argument("--data", required=True, action="append",
                   help="the datagen JSONL the run trained on (repeat it, in train's order, for several)")
    s.add_argument("--corpus", required=True, help="the corpus directory")
    s.add_argument("--out", required=True, help="where to write the shipped adapter (e.g. models/desta-edge-tiny)")
    s.add_argument("--notes", default=None, help="a markdown file appended to the card as its Notes section")
    s.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    s.set_defaults(func=_cmd_ship)


def _cmd_corpus(args: argparse.Namespace) -> int:
    from .corpus import CorpusOptions, build_corpus, read_metadata
    from .recordings import RecordingsOptions, build_recordings

    t0 = time.perf_counter()
    try:
        if args.recordings:
            meta = build_recordings(RecordingsOptions(
                manifest=Path(args.recordings), out_dir=Path(args.out), variants=not args.no_variants,
                seed=args.seed, overwrite=args.overwrite, progress=not args.json))
        else:
            meta = build_corpus(CorpusOptions(
                out_dir=Path(args.out), size=args.size, seed=args.seed, room_fraction=args.room_fraction,
                reverb_fraction=args.reverb_fraction, channel_fraction=args.channel_fraction,
                short_fraction=args.short_fraction, short_low_female_fraction=args.short_low_female_fraction,
                low_female_fraction=args.low_female_fraction, workers=args.workers, overwrite=args.overwrite,
                progress=not args.json))
    except (ValueError, FileNotFoundError) as e:
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
        keys = ("gender", "pitch", "speed", "volume", "noise") if args.recordings else ("split", "kind", "synthesizer")
        for key in keys:
            print(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"][key].items()))
        if manifest.get("spoken_questions"):
            print(f"  spoken questions: {manifest['spoken_questions']} (spoken_qa.jsonl)")
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _cmd_datagen(args: argparse.Namespace) -> int:
    from .datagen import DatagenOptions, run_datagen

    t0 = time.perf_counter()
    try:
        options = DatagenOptions(
            corpus_dir=Path(args.corpus), out_file=Path(args.out), limit=args.limit, batch_size=args.batch_size,
            seed=args.seed, model=args.model, backend=args.backend, device=args.device,
            max_new_tokens=args.max_new_tokens, prompts_per_clip=args.prompts_per_clip,
            splits=_names(args.splits), progress=not args.json,
            filter_labels=not args.no_filter, retries=args.retries,
            categories=None if args.categories is None else _names(args.categories),
            constrain_labels=not args.no_constrain, candidates=args.candidates, answers=args.answers,
        )
        result = run_datagen(options)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return _fail(str(e), 1)
    seconds = time.perf_counter() - t0
    summary = {"out": str(result.path), "written": result.written, "rejected": result.rejected,
               "existing": result.existing, "total": result.total, "seconds": round(seconds, 1)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{result.written} new records, {result.rejected} answers set aside by the filter "
              f"({result.existing} already there, {result.total} asked) in {seconds:.1f} s -> {result.path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .trainer import TrainOptions, train

    if (args.steps is None) == (args.epochs is None):
        return _fail("give --steps or --epochs", EXIT_BAD_INPUT)
    missing = [d for d in args.data if not Path(d).is_file()]
    if missing:
        return _fail(f"--data {missing[0]}: file not found", EXIT_BAD_INPUT)
    try:
        options = TrainOptions(
            data=tuple(Path(d) for d in args.data), data_root=Path(args.data_root) if args.data_root else None,
            out_dir=Path(args.out),
            model=args.model, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
            grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
            save_every=args.save_every, seed=args.seed, limit=args.limit, num_workers=args.workers,
            device=args.device, resume=args.resume, loss_plot=not args.no_plot, progress=not args.json,
            precision=args.precision, lora=args.lora, encoder_padding_s=args.encoder_padding_s,
            short_window_share=args.short_window_share,
        )
        result = train(options)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return _fail(str(e), 1)
    summary = {"out": str(result.out_dir), "steps": result.steps, "final_loss": result.final_loss,
               "seconds": round(result.seconds, 1), "seconds_per_step": result.seconds_per_step,
               "metrics": str(result.metrics), "plot": str(result.plot) if result.plot else None}
    if args.json:
        print(json.dumps(summary))
    else:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        print(f"{result.steps} steps, final loss {loss}, {result.seconds:.1f} s -> {result.out_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from desta_edge import DestaModel

    from .evaluate import EvalOptions, evaluate, markdown_table, summary, write_report

    try:
        options = EvalOptions(corpus_dir=Path(args.corpus), split=args.split, limit=args.limit,
                              batch_size=args.batch_size, progress=not args.json)
        if not (options.corpus_dir / "metadata.jsonl").is_file():
            raise FileNotFoundError(f"{options.corpus_dir}/metadata.jsonl not found: build the corpus first")
        model = DestaModel.from_pretrained(args.model, backend=args.backend, device=args.device,
                                           progress=not args.json, encoder_padding_s=args.encoder_padding_s)
        result = evaluate(model, options)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return _fail(str(e), 1)
    if args.out:
        write_report(result, Path(args.out))
    print(json.dumps(summary(result)) if args.json else markdown_table(result), end="" if not args.json else "\n")
    return 0


def _cmd_ship(args: argparse.Namespace) -> int:
    from .modelcard import CARD_NAME, ship_adapter

    try:
        notes = Path(args.notes).read_text() if args.notes else ""
        out = ship_adapter(Path(args.run), Path(args.eval), [Path(d) for d in args.data], Path(args.corpus),
                           Path(args.out), notes)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    print(json.dumps({"out": str(out), "card": str(out / CARD_NAME)}) if args.json else f"shipped -> {out}")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
