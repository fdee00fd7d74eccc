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

    ask = sub.add_parser("ask", help="answer a spoken question in an audio file (or in each of several)")
    ask.add_argument("audio", nargs="+",
                     help="audio file (WAV/FLAC/OGG/..., any rate, mono or stereo, up to 30 s), or - for the bytes of "
                          "one on stdin (e.g. arecord -d 5 -f S16_LE -r 16000 | ask -); several files are answered "
                          "in batches (--batch-size), one result per file")
    ask.add_argument("--batch-size", type=int, default=8,
                     help="with several files: files per model call (default: 8; 1 answers them one by one)")
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
    from desta_edge import AudioError, decode_audio, load_audio

    if args.max_new_tokens < 1:
        return _fail(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}", EXIT_BAD_INPUT)
    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1, got {args.batch_size}", EXIT_BAD_INPUT)
    if len(args.audio) > 1:
        if "-" in args.audio:
            return _fail("- (stdin) takes one audio file; name the files instead", EXIT_BAD_INPUT)
        return _ask_files(args)
    try:  # validate before the (slow) model load
        clip = decode_audio(sys.stdin.buffer.read(), source="stdin") if args.audio[0] == "-" else load_audio(args.audio[0])
    except AudioError as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    model, load_ms, code = _load_ask_model(args)
    if model is None:
        return code
    messages = _ask_messages(args, model, clip)
    try:
        stream = model.stream(messages, max_new_tokens=args.max_new_tokens)
    except (AudioError, ValueError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    transcript = stream.audios[0][1]
    if not args.json:
        print(f"heard: {_heard(transcript)}", file=sys.stderr)
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


def _load_ask_model(args: argparse.Namespace):
    """(model, load ms, 0), or (None, 0, exit code) after reporting why it did not load."""
    from desta_edge import DestaModel
    from desta_edge.runtime.backends import whisper_dtype

    t0 = time.perf_counter()
    try:
        model = DestaModel.from_pretrained(
            args.model, backend=args.backend, device=args.device,
            audio_features=False if args.transcript_only else None, progress=not args.json,
            ort_provider=args.ort_provider, whisper_dtype=whisper_dtype(args), encoder_padding_s=args.encoder_padding_s,
        )
    except (FileNotFoundError, ValueError) as e:
        return None, 0.0, _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return None, 0.0, _fail(str(e), 1)
    if args.backend == "auto" and not args.json:
        print(f"backend: {model.backend_name} ({model.backend_detail}); {model.backend_reason}", file=sys.stderr)
    return model, (time.perf_counter() - t0) * 1000, 0


def _ask_messages(args: argparse.Namespace, model, clip) -> list[dict]:
    return [
        {"role": "system", "content": args.system},
        {"role": "user", "content": f"{model.config.audio_locator}\n{args.prompt}", "audios": [{"audio": clip, "text": None}]},
    ]


def _ask_files(args: argparse.Namespace) -> int:
    """`ask` on several files: answered in batches of `--batch-size`, one result per file, in the
    order given. A file that cannot be read or answered gets an error and the others go on; the
    exit code is then 2. Files are read as their batch fills (a long list is never held in memory
    at once), and the model loads with the first readable one, so a list of unreadable files loads
    no model. A batch that fails is answered again file by file, so one bad file fails alone."""
    from desta_edge import AudioError, load_audio

    t0 = time.perf_counter()
    model, load_ms, failed = None, 0.0, 0
    pending: list[tuple[str, object]] = []  # (file, clip) waiting for their batch
    for path in args.audio:
        try:
            clip = load_audio(path)
        except AudioError as e:
            failed += _flush(args, model, pending) + 1  # the files before it first, to keep the order
            _report_file(args, path, error=str(e))
            continue
        if model is None:
            model, load_ms, code = _load_ask_model(args)
            if model is None:
                return code
        pending.append((path, clip))
        if len(pending) == args.batch_size:
            failed += _flush(args, model, pending)
    failed += _flush(args, model, pending)
    if not args.json:
        print(f"{len(args.audio) - failed} of {len(args.audio)} files answered in {time.perf_counter() - t0:.1f} s "
              f"(model load {load_ms / 1000:.1f} s)", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _flush(args: argparse.Namespace, model, pending: list[tuple[str, object]]) -> int:
    """Answer and report the waiting files (emptying `pending`); returns how many failed."""
    results = _answer_batch(args, model, [clip for _, clip in pending]) if pending else []
    for (path, _), result in zip(pending, results):
        _report_file(args, path, **result)
    pending.clear()
    return sum("error" in r for r in results)


def _answer_batch(args: argparse.Namespace, model, clips: list) -> list[dict]:
    """Per clip: {transcript, answer, timings_ms, backend, backend_detail} or {error}."""
    try:
        out = model.generate([_ask_messages(args, model, c) for c in clips], max_new_tokens=args.max_new_tokens)
    except ValueError as e:  # AudioError included
        if len(clips) == 1:
            return [{"error": str(e)}]
        logging.getLogger(__name__).warning("a batch of %d failed (%s); answering its files one by one", len(clips), e)
        return [r for c in clips for r in _answer_batch(args, model, [c])]
    timings = {**out.timings_ms, "batch_size": len(clips)}
    return [{"transcript": out.audios[i][1], "answer": out.text[i], "timings_ms": timings,
             "backend": model.backend_name, "backend_detail": model.backend_detail} for i in range(len(clips))]


def _report_file(args: argparse.Namespace, path: str, **result) -> None:
    """One file's result: a JSON line with --json, else the file, what was heard and the answer;
    an error also goes to stderr."""
    if "error" in result:
        print(f"error: {path}: {result['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"audio": path, **result}, ensure_ascii=False), flush=True)
    elif "error" not in result:
        print(f"{path}\n  heard: {_heard(result['transcript'])}\n  {result['answer']}", flush=True)


def _heard(transcript: str) -> str:
    """What was heard, for a person: the transcript, or a plain word that there was no speech (the
    model then answers about the sound, and a request was not made)."""
    from desta_edge.runtime.model import NO_SPEECH_TRANSCRIPT

    return "(no speech; the answer is about the sound)" if transcript == NO_SPEECH_TRANSCRIPT else repr(transcript)


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
