"""ONNX Runtime's idle-thread spinning, per session, side by side in one process.

    python benchmarks/ort_threads.py EXPORT_DIR [--limit N] [--repeats 3] [--max-new-tokens 24]
                                     [--out benchmarks/results] [--json]

ONNX Runtime lets a session's idle intra-op threads busy-wait for its next run (its default).
On a small CPU such a thread keeps a core busy after its run has ended, while the next stage
(another session) or the Python work between two Whisper decoder steps needs it. The ONNX
backend therefore turns spinning off for the encoder and the decoder and keeps it for the LLM,
whose decode loop runs step after step. This script answers the spoken questions of
`backends.py` under three settings, interleaved clip by clip (the order rotates), on the CPU
provider: every session spinning (ONNX Runtime's default), the backend's setting, and no session
spinning. It reports the medians of the runtime's stage timings, decode ms per token, and
whether every transcript and answer is identical to the backend's setting. JSON and markdown go
to --out. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import conversation  # noqa: E402
from recording import question_clips  # noqa: E402
from report import machine, write_results  # noqa: E402

GRAPHS = ("encoder", "decoder", "llm")
SETTINGS = {  # label -> which sessions' idle threads spin
    "every session spins (ONNX Runtime's default)": {"encoder": True, "decoder": True, "llm": True},
    "LLM only (desta-edge's default)": {"encoder": False, "decoder": False, "llm": True},
    "no session spins": {"encoder": False, "decoder": False, "llm": False},
}
DEFAULT = "LLM only (desta-edge's default)"
STAGES = ("encoder", "asr", "prefill", "first_token", "total")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path, help="an ONNX export directory (desta-edge export onnx)")
    ap.add_argument("--limit", type=int, default=None, help="first N questions only")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the questions")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from desta_edge import DestaModel
    from desta_edge.runtime import onnx_backend as ob

    model = DestaModel.from_pretrained(args.export, backend="onnx", device="cpu")
    be = model.backend
    cache = ob.default_cache_dir(args.export)
    files = {"encoder": ob.ENCODER_FILE, "decoder": ob.DECODER_FILE, "llm": ob.LLM_FILE}
    sessions = {label: {g: ob.open_session(args.export / files[g], torch.device("cpu"), cache_dir=cache, spin=spin[g])
                        for g in GRAPHS} for label, spin in SETTINGS.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    clips = [str(c.path) for c in question_clips(args.out / "backend_clips", limit=args.limit)]

    def answer(label: str, clip: str):
        s = sessions[label]
        be.encoder, be.decoder.session, be.llm.runner.session = s["encoder"], s["decoder"], s["llm"]
        return model.generate(conversation(clip), max_new_tokens=args.max_new_tokens)

    labels = list(SETTINGS)
    for label in labels:  # warm-up
        answer(label, clips[0])
    times = {label: {k: [] for k in (*STAGES, "decode_ms_per_token")} for label in labels}
    outputs: dict[str, dict[int, tuple]] = {label: {} for label in labels}
    for rep in range(args.repeats):
        print(f"pass {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for i, clip in enumerate(clips):
            shift = (i + rep) % len(labels)
            for label in labels[shift:] + labels[:shift]:
                out = answer(label, clip)
                t, n = out.timings_ms, len(out.generated_ids[0])
                for k in STAGES:
                    times[label][k].append(t[k])
                if n > 1:
                    times[label]["decode_ms_per_token"].append((t["total"] - t["first_token"]) / (n - 1))
                outputs[label][i] = (out.audios[0][1], out.generated_ids[0])
    rows = []
    for label in labels:
        med = {k: round(statistics.median(v), 1) for k, v in times[label].items() if v}
        same = sum(outputs[label][i] == outputs[DEFAULT][i] for i in outputs[label])
        rows.append({"setting": label, "spinning": SETTINGS[label], **med, "identical": f"{same}/{len(clips)}"})
    base = next(r for r in rows if r["setting"] == labels[0])
    for r in rows:
        r["speed-up first token"] = round(base["first_token"] / r["first_token"], 2)
    result = {"machine": machine(), "export": str(args.export), "clips": len(clips), "repeats": args.repeats,
              "max_new_tokens": args.max_new_tokens, "rows": rows}
    cols = ("setting", *STAGES, "decode_ms_per_token", "identical", "speed-up first token")
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                      + ["| " + " | ".join(str(r.get(c, "–")) for c in cols) + " |" for r in rows])
    write_results(args.out, "ort_threads", result, table, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
