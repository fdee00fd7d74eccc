"""End of speech -> first answer token, on a noisy multi-question recording fed at real-time pace.

    python benchmarks/latency.py [--model tiny] [--onnx EXPORT_DIR ...] [--whisper-dtype bfloat16]
                                 [--hangover-ms 600] [--recordings MANIFEST] [--fast] [--out benchmarks/results]

Pipelines on the same models and recording, one after the other in the same run:
- reference-style: waits for the endpoint, runs the encoder twice per clip (as the reference
  implementation does: once for the connector, once inside whisper.generate), no prefix cache;
- desta-edge without end-of-turn detection: one encoder pass, speculative start at the first
  pause, prompt-prefix KV cache, the whole hangover before every answer;
- desta-edge: the same, and a request the LLM judges finished ends after turn_end_ms of silence;
- with --also-detector webrtcvad: desta-edge with webrtcvad instead of Silero in its endpointer;
- with --whisper-dtype: desta-edge with Whisper in that dtype (the LLM stays float32);
- with --onnx (repeatable: an fp32 export and a quantized one side by side): desta-edge on ONNX
  Runtime, named by the export's quantization;
- with --encoder-padding-s S: the last of these again, its encoder reading the clip plus S s of
  silence instead of the 30 s window (`DestaModel.set_encoder_padding`).
Each pipeline warms up first (`Assistant.warm_up`, as `listen` does), so no first request pays
one-off costs. The recording includes hesitant requests (a pause mid-sentence) that must not be split. With
--recordings MANIFEST (from real_voices.py) the requests are instead recordings of people: the
manifest's whole-file recordings, each cut to its active span (so its true end is known) and
brought to one level; WER counts only those with a known transcript.
Latency is measured from the *true* end of each spoken question (known by construction) to the
first answer token, so it includes the endpointer's silence wait. Prints a markdown table and
writes JSON + markdown under --out. Not a pass/fail test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recording import Utterance, build, recorded_requests  # noqa: E402
from report import machine, write_results  # noqa: E402

from desta_edge import DestaModel  # noqa: E402
from desta_edge.runtime.backends import WHISPER_DTYPES  # noqa: E402
from desta_edge.streaming.assistant import Assistant, AssistantOptions  # noqa: E402
from desta_edge.streaming.sources import SAMPLE_RATE, file_source, paced  # noqa: E402
from desta_edge.streaming.vad import DETECTORS, EndpointOptions  # noqa: E402
from desta_edge.training.metrics import word_error_rate  # noqa: E402

MATCH_BEFORE_S = 0.5  # an endpoint belongs to a question if it falls in [start - this, end + after]
MATCH_AFTER_S = 0.8


class TwoPassBackend:
    """Wraps a backend so every clip is encoded twice, as the reference implementation does."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, features, *, with_connector):
        encoded = self._inner.encode(features, with_connector=with_connector)  # the connector's pass
        self._inner.encode(features, with_connector=False)  # whisper.generate's own pass, same cost
        return encoded


def run_variant(model: DestaModel, wav: Path, truth: list[Utterance], *, reference: bool, endpoint: EndpointOptions,
                realtime: bool, max_new_tokens: int, turn_detection: bool = True) -> dict:
    model.backend.reset()
    inner = model.backend
    if reference:
        model.backend = TwoPassBackend(inner)
        model.use_prefix_cache = False
    events: list[dict] = []
    arrivals: list[tuple[float, float]] = []  # (stream position at chunk end, monotonic time)

    def recorded(chunks):
        for c in chunks:
            arrivals.append((c.audio_s + len(c.samples) / SAMPLE_RATE, time.monotonic()))
            yield c

    chunks = file_source(wav)
    if realtime:
        chunks = paced(chunks)
    opts = AssistantOptions(max_new_tokens=max_new_tokens, speculative=not reference, barge_in=False,
                            turn_detection=turn_detection, wait_for_turn_verdict=not realtime)
    assistant = Assistant(model, opts, endpoint, emit=events.append)
    try:
        warm_up_ms = assistant.warm_up()  # as `listen` does: no variant's first request pays first-call costs
        t0 = time.monotonic()
        stats = assistant.run(recorded(chunks))
        elapsed = time.monotonic() - t0
    finally:
        model.backend = inner
        model.use_prefix_cache = True
    return {**score(events, truth, arrivals, assistant.started_at, stats, elapsed), "warm_up_ms": warm_up_ms}


def arrival(arrivals: list[tuple[float, float]], audio_s: float) -> float:
    ends = np.array([a for a, _ in arrivals])
    i = min(int(np.searchsorted(ends, audio_s)), len(arrivals) - 1)
    return arrivals[i][1]


def score(events, truth, arrivals, started_at, stats, elapsed) -> dict:
    answers = [e for e in events if e["type"] == "answer"]
    ends = {e["utterance"]: e for e in events if e["type"] == "speech_end"}
    firsts: dict[int, float] = {}
    for e in events:
        if e["type"] == "token" and e["utterance"] not in firsts:
            firsts[e["utterance"]] = started_at + e["wall_s"]
    per_question: list[list[dict]] = [[] for _ in truth]
    spurious = 0
    for a in answers:
        end_s = ends[a["utterance"]]["speech_end_s"]
        hits = [i for i, u in enumerate(truth) if _matches(u, end_s)]
        if hits:
            per_question[hits[0]].append(a)
        else:
            spurious += 1
    latencies, rows, pairs = [], [], []
    for u, found in zip(truth, per_question):
        if len(found) != 1:
            continue
        a = found[0]
        first = firsts.get(a["utterance"], started_at + a["wall_s"])
        lat = (first - arrival(arrivals, u.end_s)) * 1000
        latencies.append(lat)
        if u.text:  # a recording of people without a known transcript has no WER
            pairs.append((u.text, a["transcript"]))
        rows.append({"question": u.text, "voice": u.voice, "true_end_s": round(u.end_s, 3),
                     "detected_end_s": ends[a["utterance"]]["speech_end_s"], "latency_ms": round(lat, 1),
                     "transcript": a["transcript"], "answer": a["text"], "stages_ms": a["timings_ms"]})
    stage_names = ("endpoint_wait", "features", "encoder", "asr", "turn_check", "prefill")
    stages = {k: round(float(np.median([r["stages_ms"][k] for r in rows if k in r["stages_ms"]])), 1)
              for k in stage_names if any(k in r["stages_ms"] for r in rows)}
    token_counts = [sum(1 for e in events if e["type"] == "token" and e["utterance"] == a["utterance"]) for a in answers]
    decode_s = [(a["timings_ms"]["total"] - a["timings_ms"]["first_token"]) / 1000 for a in answers]
    tps = [n / s for n, s in zip(token_counts, decode_s) if s > 0 and n > 1]
    audio_s = arrivals[-1][0] if arrivals else 0.0
    return {
        "questions": len(truth),
        "detected_once": sum(len(f) == 1 for f in per_question),
        "missed": sum(len(f) == 0 for f in per_question),
        "missed_why": dict(Counter(why_unanswered(events, u) for u, f in zip(truth, per_question) if not f)),
        "split": sum(len(f) > 1 for f in per_question),
        "spurious": spurious,
        "errors": stats.errors,
        "error_messages": [e["message"] for e in events if e["type"] == "error"],
        "latency_ms": {"p50": _pct(latencies, 50), "p90": _pct(latencies, 90), "all": [round(x, 1) for x in latencies]},
        "median_stages_ms": stages,
        "decode_tokens_per_s": round(float(np.median(tps)), 1) if tps else None,
        "wer": round(word_error_rate(pairs), 3) if pairs else None,
        "real_time_factor": round(elapsed / audio_s, 3) if audio_s else None,
        "speculative_used": stats.speculative_used,
        "speculative_discarded": stats.speculative_discarded,
        "turn_ends": stats.turn_ends,
        "utterances": rows,
    }


def _matches(u: Utterance, audio_s: float) -> bool:
    return u.start_s - MATCH_BEFORE_S <= audio_s <= u.end_s + MATCH_AFTER_S


def why_unanswered(events: list[dict], u: Utterance) -> str:
    """Why question `u` got no answer: "not heard" (the endpointer ended no utterance there), the
    rule that dropped the utterance heard there (the `reason` of its `discarded` event: "short" or
    "distant" from the endpointer, "filler", "echo" or "backchannel" from the transcript; "skipped"
    by --max-waiting), "error", "cancelled", or "unanswered" for one that got none of these."""
    ended = {e["utterance"] for e in events if e["type"] == "speech_end" and _matches(u, e["speech_end_s"])}
    # the endpointer's own discards end no utterance: matched by where they started
    started = {e["utterance"] for e in events if e["type"] == "speech_start" and _matches(u, e["audio_s"])}
    for e in events:
        if e["type"] in ("discarded", "skipped", "error", "cancelled") and (
                e.get("utterance") in ended or ("voiced_ms" in e and e.get("utterance") in started)):
            return e.get("reason", e["type"])
    return "unanswered" if ended else "not heard"


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


def markdown(result: dict) -> str:
    cols = ["pipeline", "p50 ms", "p90 ms", "p50 speed-up", "detected once", "split", "missed", "ended by turn check",
            "endpoint wait", "features", "encoder", "asr", "turn check", "prefill", "decode tok/s", "WER"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in result["variants"].items():
        s = r["median_stages_ms"]
        lines.append("| " + " | ".join(str(x) for x in [
            name, r["latency_ms"]["p50"], r["latency_ms"]["p90"], f"{result['p50_speedup'].get(name)}x",
            f"{r['detected_once']}/{r['questions']}", r["split"], _missed(r), r["turn_ends"],
            s.get("endpoint_wait"), s.get("features"), s.get("encoder"), s.get("asr"), s.get("turn_check", "-"),
            s.get("prefill"), r["decode_tokens_per_s"], r["wer"]]) + " |")
    lines.append("")
    lines.append(f"requests: {result.get('requests', 'the 10 questions')}")
    lines.append(f"p50 speed-up: reference-style p50 / the pipeline's p50, same run; end-of-turn silence "
                 f"{result['endpoint']['turn_end_ms']} ms")
    lines.append(f"machine: {result['machine']}; {result['endpoint'].get('detector', 'webrtcvad')} endpointer, "
                 f"hangover {result['endpoint']['hangover_ms']} ms, "
                 f"pause {result['endpoint']['pause_ms']} ms; realtime={result['realtime']}; "
                 f"peak RSS {result['peak_rss_mb']} MB")
    return "\n".join(lines)


def _missed(r: dict) -> str:
    """"2 (1 skipped, 1 not heard)": the count and why, for the table."""
    why = r.get("missed_why") or {}
    return f"{r['missed']} ({', '.join(f'{n} {k}' for k, n in why.items())})" if why else str(r["missed"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hangover-ms", type=int, default=EndpointOptions().hangover_ms)
    p.add_argument("--pause-ms", type=int, default=EndpointOptions().pause_ms)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--onnx", action="append", default=[],
                   help="also run desta-edge with this ONNX export (desta-edge export onnx); repeatable")
    p.add_argument("--whisper-dtype", default=None, choices=[k for k in WHISPER_DTYPES if k != "float32"],
                   help="also run desta-edge with Whisper in this dtype (bfloat16 for CPUs with AMX)")
    p.add_argument("--encoder-padding-s", type=float, default=None, metavar="S",
                   help="also run the last variant with the encoder reading the clip + S s (not the 30 s window)")
    p.add_argument("--turn-end-ms", type=int, default=None, help="default: the endpointer's (200, within pause/hangover)")
    p.add_argument("--also-detector", choices=DETECTORS, default=None,
                   help="also run desta-edge with this speech detector in its endpointer (default: silero for all)")
    p.add_argument("--recordings", type=Path, metavar="MANIFEST",
                   help="requests: the whole-file recordings of people of a real_voices.py manifest instead of the "
                        "synthetic questions (each cut to its active span and brought to one level)")
    p.add_argument("--fast", action="store_true", help="feed audio as fast as possible (smoke test; latency meaningless)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wav = out / "latency_recording.wav"
    truth = build(wav, requests=recorded_requests(args.recordings) if args.recordings else None)
    pause = min(args.pause_ms, args.hangover_ms)
    endpoint = EndpointOptions(hangover_ms=args.hangover_ms, pause_ms=pause, turn_end_ms=args.turn_end_ms)
    model = DestaModel.from_pretrained(args.model, device=args.device)
    variants = {}

    def run(name: str, m: DestaModel, **kw) -> None:
        print(f"running {name} ...", file=sys.stderr)
        kw.setdefault("endpoint", endpoint)
        variants[name] = run_variant(m, wav, truth, realtime=not args.fast, max_new_tokens=args.max_new_tokens, **kw)

    run("reference-style", model, reference=True)
    run("desta-edge, no turn detection", model, reference=False, turn_detection=False)
    run("desta-edge", model, reference=False)
    if args.also_detector:
        run(f"desta-edge, {args.also_detector} endpointer", model, reference=False,
            endpoint=replace(endpoint, detector=args.also_detector))
    if args.whisper_dtype:
        model.backend.set_whisper_dtype(WHISPER_DTYPES[args.whisper_dtype])
        run(f"desta-edge, whisper {args.whisper_dtype}", model, reference=False)
    last, last_name = model, f"desta-edge, whisper {args.whisper_dtype}" if args.whisper_dtype else "desta-edge"
    for export in args.onnx:
        fast = DestaModel.from_pretrained(export, backend="onnx", device=args.device)
        last, last_name = fast, onnx_variant_name(fast.backend.manifest, export, taken=variants)
        run(last_name, fast, reference=False)
    if args.encoder_padding_s:
        last.set_encoder_padding(args.encoder_padding_s)
        run(f"{last_name}, clip + {args.encoder_padding_s:g} s window", last, reference=False)
    ref = variants["reference-style"]["latency_ms"]["p50"]
    result = {
        "machine": machine(),
        "model": args.model,
        "requests": f"{len(truth)} recordings of people ({args.recordings})" if args.recordings else "the 10 questions",
        "realtime": not args.fast,
        "endpoint": {"detector": endpoint.detector, "hangover_ms": endpoint.hangover_ms, "pause_ms": endpoint.pause_ms,
                     "turn_end_ms": endpoint.turn_end_ms},
        "variants": variants,
        "p50_speedup": {name: round(ref / v["latency_ms"]["p50"], 2) if ref and v["latency_ms"]["p50"] else None
                        for name, v in variants.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    write_results(out, "latency", result, markdown(result), as_json=args.json)
    return 0


def onnx_variant_name(manifest: dict, export: str = "", taken=()) -> str:
    """"desta-edge (onnx)" for an fp32 export, else its quantization and, if not all, the graphs it
    covers; followed by the export's directory name where that name is `taken` already."""
    quant, graphs = manifest.get("quantization"), manifest.get("quantized_graphs") or []
    only = "" if len(graphs) == 3 else f", {'+'.join(graphs)} only"
    name = f"desta-edge (onnx {quant}{only})" if quant else "desta-edge (onnx)"
    return f"{name} {Path(export).name}" if name in taken else name


if __name__ == "__main__":
    raise SystemExit(main())
