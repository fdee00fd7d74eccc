"""A long listening session: does memory or compute time drift as utterances pile up?

    python benchmarks/soak.py [--model tiny | --onnx EXPORT_DIR] [--repeat 20] [--realtime]
                              [--max-new-tokens 16] [--out benchmarks/results] [--json]

The noisy multi-question recording of latency.py, played `--repeat` times back to back as one
stream (20 times: about 13 minutes of audio, 200 requests) through one `Assistant`, as an
always-on daemon would run. After every answer the process's current resident memory is
sampled. The report compares the session's quarters: resident memory at the end of each, and
the median compute stages (encoder, ASR, prefill) and endpoint decisions within each. A
flat session has the same figures in every quarter; a leak shows as growth from quarter to
quarter, after the first (which includes warm-up and first-use allocations).

By default the audio is fed as fast as the loop takes it (a 13-minute session in a few
minutes); `--realtime` paces it like a live source. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recording import RATE, build  # noqa: E402
from report import machine, write_results  # noqa: E402

from desta_edge import DestaModel  # noqa: E402
from desta_edge.streaming.assistant import Assistant, AssistantOptions  # noqa: E402
from desta_edge.streaming.sources import file_source, paced  # noqa: E402
from desta_edge.streaming.vad import EndpointOptions  # noqa: E402

STAGES = ("encoder", "asr", "prefill")


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc; elsewhere the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def session(model: DestaModel, wav: Path, *, realtime: bool, max_new_tokens: int) -> tuple[list[dict], object]:
    """Run the whole recording through one Assistant; per answered utterance: timings, reason, RSS."""
    rows: list[dict] = []
    reasons: dict[int, str] = {}

    def emit(e: dict) -> None:
        if e["type"] == "speech_end":
            reasons[e["utterance"]] = e["reason"]
        elif e["type"] == "answer":
            rows.append({"utterance": e["utterance"], "audio_s": e["audio_s"], "reason": reasons.get(e["utterance"]),
                         "timings_ms": e["timings_ms"], "rss_mb": round(rss_mb(), 1)})

    chunks = file_source(wav)
    if realtime:
        chunks = paced(chunks)
    opts = AssistantOptions(max_new_tokens=max_new_tokens, barge_in=False, wait_for_turn_verdict=not realtime)
    stats = Assistant(model, opts, EndpointOptions(), emit=emit).run(chunks)
    return rows, stats


def quarters(rows: list[dict]) -> list[dict]:
    out = []
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 4)):
        q = [rows[j] for j in part]
        if not q:
            continue
        out.append({
            "quarter": i + 1,
            "answers": len(q),
            "rss_end_mb": q[-1]["rss_mb"],
            "median_ms": {k: round(float(np.median([r["timings_ms"][k] for r in q])), 1) for k in STAGES},
            "ended_by_turn_check": sum(r["reason"] == "turn_complete" for r in q),
        })
    return out


def markdown(result: dict) -> str:
    cols = ["quarter", "answers", "RSS at its end MB", "encoder ms", "asr ms", "prefill ms", "ended by turn check"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for q in result["quarters"]:
        m = q["median_ms"]
        lines.append("| " + " | ".join(str(x) for x in [q["quarter"], q["answers"], q["rss_end_mb"], m["encoder"],
                                                         m["asr"], m["prefill"], q["ended_by_turn_check"]]) + " |")
    s = result["stats"]
    lines += ["", f"{result['audio_min']} min of audio, {s['answers']} answers, {s['errors']} errors, "
                  f"{result['requests']} requests in the recording; RSS after the first answer {result['rss_first_mb']} MB, "
                  f"growth from the end of quarter 1 to the end {result['rss_growth_after_q1_mb']} MB; "
                  f"realtime={result['realtime']}; {result['model']}; machine: {result['machine']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="preset or checkpoint (torch backend)")
    p.add_argument("--onnx", default=None, help="run an ONNX export instead of --model")
    p.add_argument("--repeat", type=int, default=20, help="times the 10-question recording is played (default 20)")
    p.add_argument("--realtime", action="store_true", help="pace the audio like a live source")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.wav"
        truth = build(one)
        x, _ = sf.read(str(one), dtype="float32")
        wav = Path(tmp) / "session.wav"
        sf.write(str(wav), np.tile(x, args.repeat), RATE)
        if args.onnx:
            model = DestaModel.from_pretrained(args.onnx, backend="onnx")
        else:
            model = DestaModel.from_pretrained(args.model, device="cpu")
        print(f"playing {args.repeat} x {len(x) / RATE:.1f} s ...", file=sys.stderr)
        rows, stats = session(model, wav, realtime=args.realtime, max_new_tokens=args.max_new_tokens)
    qs = quarters(rows)
    result = {
        "machine": machine(),
        "model": f"onnx {args.onnx}" if args.onnx else f"torch {args.model}",
        "realtime": args.realtime,
        "audio_min": round(args.repeat * len(x) / RATE / 60, 1),
        "requests": args.repeat * len(truth),
        "stats": vars(stats),
        "rss_first_mb": rows[0]["rss_mb"] if rows else None,
        "rss_growth_after_q1_mb": round(qs[-1]["rss_end_mb"] - qs[0]["rss_end_mb"], 1) if qs else None,
        "quarters": qs,
        "answers": rows,
    }
    write_results(out, "soak", result, markdown(result), as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
