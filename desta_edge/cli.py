"""The `desta-edge` command line: `ask` a spoken question, `listen` continuously, list/prepare
`models`, build a synthetic `corpus` and self-generated training data (`datagen`).

Human-readable by default (answer streamed to stdout, details on stderr); `--json` makes the
last line of stdout one JSON object for scripts. Exit codes: 0 ok, 2 bad input, 1 other errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from desta_edge.runtime.backends import add_backend_arguments
from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="desta-edge", description="On-device spoken-query assistant (DeSTA2.5-Audio).")
    p.add_argument("-v", "--verbose", action="store_true", help="log more to stderr")
    sub = p.add_subparsers(dest="command")

    ask = sub.add_parser("ask", help="answer a spoken question in an audio file")
    ask.add_argument("audio", help="audio file (WAV/FLAC/OGG/..., any rate, mono or stereo, up to 30 s), or - "
                                   "for the bytes of one on stdin (e.g. arecord -d 5 -f S16_LE -r 16000 | ask -)")
    ask.add_argument("--prompt", default=ASSISTANT_PROMPT, help="instruction placed after the audio")
    ask.add_argument("--system", default=ASSISTANT_SYSTEM, help="system message")
    ask.add_argument("--model", default="tiny", help="preset name, checkpoint directory or hub id (default: tiny)")
    ask.add_argument("--max-new-tokens", type=int, default=256, help="cap on answer tokens (default: 256)")
    ask.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_backend_arguments(ask)
    ask.add_argument("--transcript-only", action="store_true", help="ablation: no audio embeddings, transcript only")
    ask.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    ask.set_defaults(func=_cmd_ask)

    models = sub.add_parser("models", help="list presets and prepare the offline backbones")
    models.add_argument("--prepare", action="store_true", help="convert the bundled backbones now (once)")
    models.add_argument("--json", action="store_true", help="print one JSON object")
    models.set_defaults(func=_cmd_models)

    from desta_edge.export.cli import register_cli as register_export
    from desta_edge.streaming.cli import register_cli as register_streaming
    from desta_edge.training.cli import register_cli as register_training

    register_streaming(sub)
    register_training(sub)
    register_export(sub)
    return p


def _cmd_ask(args: argparse.Namespace) -> int:
    from desta_edge import AudioError, DestaModel, decode_audio, load_audio
    from desta_edge.runtime.backends import whisper_dtype

    if args.max_new_tokens < 1:
        return _fail(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}", EXIT_BAD_INPUT)
    try:  # validate before the (slow) model load
        clip = decode_audio(sys.stdin.buffer.read(), source="stdin") if args.audio == "-" else load_audio(args.audio)
    except AudioError as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    t0 = time.perf_counter()
    try:
        model = DestaModel.from_pretrained(
            args.model, backend=args.backend, device=args.device,
            audio_features=False if args.transcript_only else None, progress=not args.json,
            ort_provider=args.ort_provider, whisper_dtype=whisper_dtype(args), encoder_padding_s=args.encoder_padding_s,
        )
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return _fail(str(e), 1)
    load_ms = (time.perf_counter() - t0) * 1000
    if args.backend == "auto" and not args.json:
        print(f"backend: {model.backend_name} ({model.backend_detail}); {model.backend_reason}", file=sys.stderr)
    messages = [
        {"role": "system", "content": args.system},
        {"role": "user", "content": f"{model.config.audio_locator}\n{args.prompt}", "audios": [{"audio": clip, "text": None}]},
    ]
    try:
        stream = model.stream(messages, max_new_tokens=args.max_new_tokens)
    except (AudioError, ValueError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    transcript = stream.audios[0][1]
    if not args.json:
        print(f"heard: {transcript!r}", file=sys.stderr)
    for piece in stream:
        if not args.json:
            print(piece, end="", flush=True)
    timings = {"load": round(load_ms, 2), **stream.timings_ms}
    if args.json:
        print(json.dumps({"transcript": transcript, "answer": stream.text, "timings_ms": timings,
                          "backend": model.backend_name, "backend_detail": model.backend_detail}, ensure_ascii=False))
    else:
        print()
        summary = ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        print(f"[ms] {summary}", file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from desta_edge.runtime import bundled
    from desta_edge.runtime.presets import PRESETS

    if args.prepare:
        try:
            bundled.prepare_whisper_tiny_en(progress=not args.json)
            bundled.prepare_smollm2(progress=not args.json)
        except RuntimeError as e:
            return _fail(str(e), 1)
    presets = [
        {
            "name": p.name,
            "description": p.description,
            "encoder": p.config.encoder_model_id,
            "llm": p.config.llm_model_id,
            "adapter": str(p.adapter_dir) if p.adapter_dir else None,
        }
        for p in PRESETS.values()
    ]
    backbones = [_plain(s) for s in bundled.status()]
    if args.json:
        print(json.dumps({"cache": str(bundled.cache_root()), "presets": presets, "backbones": backbones}))
        return 0
    print("presets:")
    for p in presets:
        adapter = p["adapter"] or "none yet (transcript-only answers)"
        print(f"  {p['name']:8} {p['description']}\n           adapter: {adapter}")
    print(f"bundled backbones (cache: {bundled.cache_root()}):")
    for b in backbones:
        print("  " + ", ".join(f"{k}={v}" for k, v in b.items()))
    if not all(b.get("ready") for b in backbones):
        print("run `desta-edge models --prepare` to convert them now (otherwise the first use does).")
    return 0


def _plain(obj) -> dict:
    import dataclasses

    d = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    return {k: str(v) if not isinstance(v, (str, int, float, bool, type(None))) else v for k, v in d.items()}


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
