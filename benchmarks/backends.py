"""The same spoken questions through every available backend, side by side in one run.

    python benchmarks/backends.py [--model tiny] [--onnx EXPORT_DIR ...] [--devices cpu,cuda]
                                  [--whisper-dtype bfloat16] [--encoder-padding-s S] [--limit N]
                                  [--max-new-tokens 32] [--rounds 1]
                                  [--out benchmarks/results] [--json]

Variants: PyTorch on each device, on CUDA in float32 (TF32 off: its answers should be the CPU's) and
in bfloat16 (and, with --whisper-dtype, again with Whisper in that dtype);
each `--onnx` export (fp32, int8, ...) on each ONNX Runtime
provider that can run here (CPU; CUDA; TensorRT). Variants that cannot run are listed with the
reason. With --encoder-padding-s S every variant runs the shorter encoder window
(`DestaModel.set_encoder_padding`); those that cannot say why in the table. Each variant runs in its own process, so that its peak memory (max RSS; on CUDA also
torch's max_memory_allocated) is its own; all see the same clips and prompts, one after the other.
With --rounds N the variants run N times, in reverse order every other round (A B C, C B A, ...),
and the medians are over every clip of every round: on a shared machine a slow spell then falls on
all variants rather than on whichever ran during it.

Per clip the runtime's own stage timings (`timings_ms`, as in `desta-edge ask --json`) are
recorded: encoder (+ connector), ASR, prefill, first token and end to end, plus decode tokens/s.
The table shows medians over clips, whether the greedy transcripts and answers are identical to
PyTorch on the CPU (the reference), and each variant's speed-up over PyTorch on the same device
type in this run, in float32 on CUDA (ratios, not absolute times: the machines are shared and
noisy). JSON and markdown go to --out. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recording import question_clips  # noqa: E402
from report import machine, write_results  # noqa: E402

from desta_edge.runtime.backends import WHISPER_DTYPES  # noqa: E402

STAGES = ("encoder", "asr", "prefill", "first_token", "total")  # a subset of the runtime's timings_ms
REFERENCE = "torch (cpu)"


@dataclass(frozen=True)
class Variant:
    label: str
    backend: str  # "torch" or "onnx"
    source: str  # model name / checkpoint, or export directory
    device: str
    ort_provider: str | None = None
    dtype: str | None = None  # torch only: the whole model in this dtype (None: the device's default)
    whisper_dtype: str | None = None  # torch only: Whisper in this dtype (runtime.backends.WHISPER_DTYPES)
    encoder_padding_s: float | None = None  # the encoder reads the clip + this many s (None: the 30 s window)


# ---------------------------------------------------------------------- which variants can run


def plan(model: str, onnx_dirs: list[str], devices: list[str], whisper_dtype: str | None = None,
         encoder_padding_s: float | None = None) -> tuple[list[Variant], list[dict]]:
    """(variants to run, skipped ones with the reason)."""
    runs, skipped = _plan(model, onnx_dirs, devices, whisper_dtype)
    return [replace(v, encoder_padding_s=encoder_padding_s) for v in runs], skipped


def _plan(model: str, onnx_dirs: list[str], devices: list[str],
          whisper_dtype: str | None) -> tuple[list[Variant], list[dict]]:
    import torch

    runs: list[Variant] = []
    skipped: list[dict] = []
    cuda = torch.cuda.is_available()
    for dev in devices:
        label = f"torch ({dev})"
        if dev == "cuda" and not cuda:
            skipped.append({"variant": label, "reason": "torch.cuda.is_available() is False (no GPU or a CPU build)"})
            continue
        if dev == "cuda":  # both: which one is the default depends on the model (runtime.model.default_dtype)
            runs += [Variant(f"{label}, {d}", "torch", model, dev, dtype=d) for d in ("float32", "bfloat16")]
        else:
            runs.append(Variant(label, "torch", model, dev))
        if whisper_dtype:
            runs.append(Variant(f"{label}, whisper {whisper_dtype}", "torch", model, dev, whisper_dtype=whisper_dtype))
    try:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    except ImportError:
        available = []
    from desta_edge.runtime.onnx_backend import OrtProvider, is_onnx_export, read_manifest

    names = [(read_manifest(d).get("quantization") or "fp32") if is_onnx_export(d) else Path(d).name for d in onnx_dirs]
    for d, name in zip(onnx_dirs, names):
        if names.count(name) > 1:
            name = f"{name} {Path(d).name}"
        wanted = [OrtProvider.CPU] if "cpu" in devices else []
        if "cuda" in devices:
            wanted += [OrtProvider.CUDA, OrtProvider.TENSORRT]
        for provider in wanted:
            label = f"onnx {name} ({provider.value})"
            if not is_onnx_export(d):
                reason = f"{d} is not an ONNX export directory (desta-edge export onnx --out {d})"
            elif not available:
                reason = "onnxruntime is not installed"
            elif provider.ep_name not in available:
                reason = f"this onnxruntime has no {provider.ep_name} (it has {', '.join(available)})"
            elif provider is not OrtProvider.CPU and not cuda:
                reason = "no CUDA device"
            else:
                runs.append(Variant(label, "onnx", d, "cuda" if provider is not OrtProvider.CPU else "cpu", provider.value))
                continue
            skipped.append({"variant": label, "reason": reason})
    if importlib.util.find_spec("tensorrt_llm") is None:
        skipped.append({"variant": "trtllm", "reason": "tensorrt_llm is not installed (NVIDIA's package index only)"})
    else:
        skipped.append({"variant": "trtllm", "reason": "not run by this benchmark yet"})
    return runs, skipped


# ---------------------------------------------------------------------- one variant (child process)


def conversation(path: str) -> list[dict]:
    from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM

    return [{"role": "system", "content": ASSISTANT_SYSTEM},
            {"role": "user", "content": f"<|AUDIO|>\n{ASSISTANT_PROMPT}", "audios": [{"audio": path, "text": None}]}]


def run_variant(v: Variant, clips: list[str], max_new_tokens: int) -> dict:
    """Load the variant, warm it up on the first clip, then answer every clip once."""
    import torch

    from desta_edge import DestaModel

    if v.dtype == "float32" and v.device.startswith("cuda"):  # TF32 rounds differently from the CPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    model = DestaModel.from_pretrained(v.source, backend=v.backend, device=v.device, ort_provider=v.ort_provider,
                                       dtype=WHISPER_DTYPES[v.dtype] if v.dtype else None,
                                       whisper_dtype=WHISPER_DTYPES[v.whisper_dtype] if v.whisper_dtype else None,
                                       encoder_padding_s=v.encoder_padding_s, progress=False)
    load_s = time.perf_counter() - t0
    model.generate(conversation(clips[0]), max_new_tokens=2)  # warm-up (also fills the prompt-prefix cache)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    per_clip = []
    for path in clips:
        out = model.generate(conversation(path), max_new_tokens=max_new_tokens)
        t = out.timings_ms
        n = len(out.generated_ids[0])
        decode_s = (t["total"] - t["first_token"]) / 1000
        per_clip.append({"clip": Path(path).name, "transcript": out.audios[0][1], "answer": out.text[0],
                         "answer_ids": out.generated_ids[0], "tokens": n, "timings_ms": t,
                         "decode_tokens_per_s": round((n - 1) / decode_s, 2) if n > 1 and decode_s > 0 else None})
    cuda_mb = None
    if v.backend == "torch" and v.device.startswith("cuda"):
        cuda_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return {"load_s": round(load_s, 2), "backend_detail": model.backend_detail, "clips": per_clip,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cuda_max_allocated_mb": cuda_mb}


def _child(args: argparse.Namespace) -> int:
    job = json.loads(args.worker)
    result = run_variant(Variant(**job["variant"]), job["clips"], job["max_new_tokens"])
    print(json.dumps(result))
    return 0


def spawn(v: Variant, clips: list[str], max_new_tokens: int, timeout_s: float) -> dict:
    """Run one variant in a fresh Python process; its JSON result, or the error it died with."""
    job = json.dumps({"variant": asdict(v), "clips": clips, "max_new_tokens": max_new_tokens})
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", job],
                       capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def merge_rounds(raws: list[dict]) -> dict:
    """One variant's results over several rounds: every clip of every round (tagged with its round),
    the median load time and the largest peak memory; the first error if any round failed."""
    if errors := [r for r in raws if "error" in r]:
        return errors[0]
    peak = lambda key: max((r[key] for r in raws if r[key] is not None), default=None)  # noqa: E731
    return {"load_s": round(float(np.median([r["load_s"] for r in raws])), 2), "backend_detail": raws[0]["backend_detail"],
            "clips": [{**c, "round": i} for i, r in enumerate(raws) for c in r["clips"]],
            "peak_rss_mb": peak("peak_rss_mb"), "cuda_max_allocated_mb": peak("cuda_max_allocated_mb")}


# ---------------------------------------------------------------------- summary


def summarize(raw: dict) -> dict:
    """Medians over clips of each stage (ms), decode tokens/s, and the memory figures."""
    clips = raw["clips"]
    stages = {k: round(float(np.median([c["timings_ms"][k] for c in clips])), 1) for k in STAGES}
    tps = [c["decode_tokens_per_s"] for c in clips if c["decode_tokens_per_s"]]
    return {"median_ms": stages, "decode_tokens_per_s": round(float(np.median(tps)), 1) if tps else None,
            "answer_tokens": int(sum(c["tokens"] for c in clips)), "load_s": raw["load_s"],
            "peak_rss_mb": raw["peak_rss_mb"], "cuda_max_allocated_mb": raw["cuda_max_allocated_mb"]}


def compare(results: dict[str, dict], variants: dict[str, Variant]) -> None:
    """Add `identical_to_torch` (clips whose transcript and answer ids match the reference) and
    `speedup_vs_torch` (torch time / variant time on the same device type; tokens/s the other way)."""
    ref = results.get(REFERENCE)
    for label, r in results.items():
        if "error" in r:
            continue
        if ref is not None and "error" not in ref:
            same = sum(a["transcript"] == b["transcript"] and a["answer_ids"] == b["answer_ids"]
                       for a, b in zip(r["clips"], ref["clips"]))
            r["identical_to_torch"] = f"{same}/{len(r['clips'])}"
        device = variants[label].device.split(":")[0]
        same_device = [k for k in results if variants[k].backend == "torch" and variants[k].device.split(":")[0] == device]
        base_label = same_device[0] if same_device else REFERENCE  # the first PyTorch variant there (fp32 on CUDA)
        base = results.get(base_label)
        if base is None or "error" in base:
            continue
        s, b = r["summary"], base["summary"]
        ratio = {k: _ratio(b["median_ms"][k], s["median_ms"][k]) for k in STAGES}
        ratio["decode_tokens_per_s"] = _ratio(s["decode_tokens_per_s"], b["decode_tokens_per_s"])
        ratio["load"] = _ratio(b["load_s"], s["load_s"])
        r["speedup_vs_torch"] = {"against": base_label, **ratio}


def _ratio(num, den) -> float | None:
    return round(num / den, 2) if num and den else None


def markdown(result: dict) -> str:
    cols = ["variant", "load s", "encoder ms", "asr ms", "prefill ms", "first token ms", "decode tok/s", "total ms",
            "peak RSS MB", "CUDA MB", "identical to torch", "speed-up first token", "speed-up total"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, r in result["variants"].items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} |" + " |" * (len(cols) - 2))
            continue
        s, m, x = r["summary"], r["summary"]["median_ms"], r.get("speedup_vs_torch", {})
        row = [label, s["load_s"], m["encoder"], m["asr"], m["prefill"], m["first_token"], s["decode_tokens_per_s"],
               m["total"], s["peak_rss_mb"], s["cuda_max_allocated_mb"] or "–", r.get("identical_to_torch", "–"),
               _x(x.get("first_token")), _x(x.get("total"))]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    lines.append("")
    for s in result["skipped"]:
        lines.append(f"- skipped {s['variant']}: {s['reason']}")
    rounds = result.get("rounds", 1)
    over = f"{rounds} rounds in alternating order, medians over clips and rounds" if rounds > 1 else "medians over clips"
    lines.append(f"\n{result['clips']} clips, up to {result['max_new_tokens']} answer tokens, {over}; "
                 f"speed-up = PyTorch time / variant time on the same device type, same run. machine: {result['machine']}")
    if result.get("encoder_padding_s"):
        lines.append(f"encoder window: each clip + {result['encoder_padding_s']:g} s of silence (every variant)")
    return "\n".join(lines)


def _x(v) -> str:
    return f"{v}x" if v else "–"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="preset or checkpoint for the torch variants")
    p.add_argument("--onnx", action="append", default=[], help="an ONNX export directory (repeatable: fp32, int8, ...)")
    p.add_argument("--devices", default="cpu,cuda", help="comma-separated: cpu, cuda (unavailable ones are skipped)")
    p.add_argument("--whisper-dtype", default=None, choices=[k for k in WHISPER_DTYPES if k != "float32"],
                   help="also run PyTorch with Whisper in this dtype (bfloat16 on CPUs with AMX)")
    p.add_argument("--encoder-padding-s", type=float, default=None, metavar="S",
                   help="every variant with the encoder reading the clip + S s instead of the 30 s window")
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--timeout-s", type=float, default=1800, help="per variant and round")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every variant this many times, in alternating order (medians over all rounds)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _child(args)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if bad := [d for d in devices if d not in ("cpu", "cuda")]:
        p.error(f"--devices: unknown {bad}; use cpu and/or cuda")
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    out = Path(args.out)
    clips = [str(c.path) for c in question_clips(out / "backend_clips", limit=args.limit)]
    runs, skipped = plan(args.model, args.onnx, devices, args.whisper_dtype, args.encoder_padding_s)
    variants = {v.label: v for v in runs}
    raws: dict[str, list[dict]] = {v.label: [] for v in runs}
    for i in range(args.rounds):
        for v in runs if i % 2 == 0 else runs[::-1]:
            print(f"running {v.label}" + (f" (round {i + 1}/{args.rounds})" if args.rounds > 1 else "") + " ...",
                  file=sys.stderr)
            raws[v.label].append(spawn(v, clips, args.max_new_tokens, args.timeout_s))
    results: dict[str, dict] = {}
    for label, rounds in raws.items():
        raw = merge_rounds(rounds)
        results[label] = raw if "error" in raw else {**raw, "summary": summarize(raw)}
    compare(results, variants)
    result = {
        "machine": machine(),
        "model": args.model,
        "onnx": args.onnx,
        "clips": len(clips),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "encoder_padding_s": args.encoder_padding_s,
        "variants": results,
        "skipped": skipped,
    }
    write_results(out, "backends", result, markdown(result), as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
