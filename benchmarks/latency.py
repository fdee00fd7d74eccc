"""End of speech -> first answer token, on a noisy multi-question recording fed at real-time pace.

    python benchmarks/latency.py [--model tiny] [--onnx EXPORT_DIR] [--hangover-ms 500] [--fast] [--out benchmarks/results]

Two pipelines on the same model and recording, one after the other in the same run:
- desta-edge: one encoder pass, speculative start at the first pause, prompt-prefix KV cache;
- reference-style: waits for the endpoint, runs the encoder twice per clip (as the reference
  implementation does: once for the connector, once inside whisper.generate), no prefix cache.
Latency is measured from the *true* end of each spoken question (known by construction) to the
first answer token, so it includes the endpointer's silence wait. Prints a markdown table and
writes JSON + markdown under --out. Not a pass/fail test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recording import Utterance, build  # noqa: E402
from report import write_results  # noqa: E402

from desta_edge import DestaModel  # noqa: E402
from desta_edge.streaming.assistant import Assistant, AssistantOptions  # noqa: E402
from desta_edge.streaming.sources import SAMPLE_RATE, file_source, paced  # noqa: E402
from desta_edge.streaming.vad import EndpointOptions  # noqa: E402
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
        self._inner.encode(features, with_connector=with_connector)  # the connector's pass
        return self._inner.encode(features, with_connector=False)  # whisper.generate's own pass


def run_variant(model: DestaModel, wav: Path, truth: list[Utterance], *, reference: bool, endpoint: EndpointOptions,
                realtime: bool, max_new_tokens: int) -> dict:
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
    opts = AssistantOptions(max_new_tokens=max_new_tokens, speculative=not reference, barge_in=False)
    assistant = Assistant(model, opts, endpoint, emit=events.append)
    try:
        t0 = time.monotonic()
        stats = assistant.run(recorded(chunks))
        elapsed = time.monotonic() - t0
    finally:
        model.backend = inner
        model.use_prefix_cache = True
    return score(events, truth, arrivals, assistant.started_at, stats, elapsed)


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
        hits = [i for i, u in enumerate(truth) if u.start_s - MATCH_BEFORE_S <= end_s <= u.end_s + MATCH_AFTER_S]
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
        pairs.append((u.text, a["transcript"]))
        rows.append({"question": u.text, "voice": u.voice, "true_end_s": round(u.end_s, 3),
                     "detected_end_s": ends[a["utterance"]]["speech_end_s"], "latency_ms": round(lat, 1),
                     "transcript": a["transcript"], "answer": a["text"], "stages_ms": a["timings_ms"]})
    stage_names = ("endpoint_wait", "features", "encoder", "asr", "prefill")
    stages = {k: round(float(np.median([r["stages_ms"][k] for r in rows])), 1) for k in stage_names} if rows else {}
    token_counts = [sum(1 for e in events if e["type"] == "token" and e["utterance"] == a["utterance"]) for a in answers]
    decode_s = [(a["timings_ms"]["total"] - a["timings_ms"]["first_token"]) / 1000 for a in answers]
    tps = [n / s for n, s in zip(token_counts, decode_s) if s > 0 and n > 1]
    audio_s = arrivals[-1][0] if arrivals else 0.0
    return {
        "questions": len(truth),
        "detected_once": sum(len(f) == 1 for f in per_question),
        "missed": sum(len(f) == 0 for f in per_question),
        "split": sum(len(f) > 1 for f in per_question),
        "spurious": spurious,
        "errors": stats.errors,
        "latency_ms": {"p50": _pct(latencies, 50), "p90": _pct(latencies, 90), "all": [round(x, 1) for x in latencies]},
        "median_stages_ms": stages,
        "decode_tokens_per_s": round(float(np.median(tps)), 1) if tps else None,
        "wer": round(word_error_rate(pairs), 3) if pairs else None,
        "real_time_factor": round(elapsed / audio_s, 3) if audio_s else None,
        "speculative_used": stats.speculative_used,
        "speculative_discarded": stats.speculative_discarded,
        "utterances": rows,
    }


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


def markdown(result: dict) -> str:
    cols = ["pipeline", "p50 ms", "p90 ms", "detected once", "split", "missed", "endpoint wait", "features",
            "encoder", "asr", "prefill", "decode tok/s", "WER"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in result["variants"].items():
        s = r["median_stages_ms"]
        lines.append("| " + " | ".join(str(x) for x in [
            name, r["latency_ms"]["p50"], r["latency_ms"]["p90"], f"{r['detected_once']}/{r['questions']}", r["split"],
            r["missed"], s.get("endpoint_wait"), s.get("features"), s.get("encoder"), s.get("asr"), s.get("prefill"),
            r["decode_tokens_per_s"], r["wer"]]) + " |")
    ratio = result.get("p50_speedup")
    lines.append("")
    lines.append(f"p50 speed-up of desta-edge over reference-style (same run): {ratio}x" if ratio else "")
    lines.append(f"machine: {result['machine']}; hangover {result['endpoint']['hangover_ms']} ms, "
                 f"pause {result['endpoint']['pause_ms']} ms; realtime={result['realtime']}; "
                 f"peak RSS {result['peak_rss_mb']} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hangover-ms", type=int, default=EndpointOptions().hangover_ms)
    p.add_argument("--pause-ms", type=int, default=EndpointOptions().pause_ms)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--onnx", default=None, help="also run desta-edge with this ONNX export (desta-edge export onnx)")
    p.add_argument("--fast", action="store_true", help="feed audio as fast as possible (smoke test; latency meaningless)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wav = out / "latency_recording.wav"
    truth = build(wav)
    endpoint = EndpointOptions(hangover_ms=args.hangover_ms, pause_ms=min(args.pause_ms, args.hangover_ms))
    model = DestaModel.from_pretrained(args.model, device=args.device)
    model.generate([{"role": "user", "content": "Hi"}], max_new_tokens=2)  # warm-up
    variants = {}
    for name, reference in (("desta-edge", False), ("reference-style", True)):
        print(f"running {name} ...", file=sys.stderr)
        variants[name] = run_variant(model, wav, truth, reference=reference, endpoint=endpoint,
                                     realtime=not args.fast, max_new_tokens=args.max_new_tokens)
    if args.onnx:
        print("running desta-edge (onnx) ...", file=sys.stderr)
        fast = DestaModel.from_pretrained(args.onnx, backend="onnx", device=args.device)
        fast.generate([{"role": "user", "content": "Hi"}], max_new_tokens=2)
        variants["desta-edge (onnx)"] = run_variant(fast, wav, truth, reference=False, endpoint=endpoint,
                                                            realtime=not args.fast, max_new_tokens=args.max_new_tokens)
    ours, ref = variants["desta-edge"]["latency_ms"]["p50"], variants["reference-style"]["latency_ms"]["p50"]
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads {__import__('torch').get_num_threads()}",
        "model": args.model,
        "realtime": not args.fast,
        "endpoint": {"hangover_ms": endpoint.hangover_ms, "pause_ms": endpoint.pause_ms},
        "variants": variants,
        "p50_speedup": round(ref / ours, 2) if ours and ref else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    write_results(out, "latency", result, markdown(result), as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
