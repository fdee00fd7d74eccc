"""Robustness to how a recording was made: formats, rates, channels, levels, clipping, a far talker.

    python benchmarks/robustness.py [--recordings MANIFEST] [--seeds 2] [--conditions clean,mp3,...]
                                    [--out benchmarks/results] [--json]

The requests (the latency benchmark's ten spoken questions, or with `--recordings` the whole-file
recordings of people of a real_voices.py manifest), each at -26 dBFS active level, are laid out
with 1.2-2.0 s gaps over a quiet room tone (-70 dBFS), changed by one condition, written in that
condition's file format, and read back through `listen`'s own file source (decoding, and mixing to
mono and resampling to 16 kHz as it streams) into the default endpointer. Conditions:
- clean: 16 kHz mono WAV, as laid out (the reference row);
- flac-44k-stereo-music: music 15 dB under the requests, 44.1 kHz stereo FLAC;
- ulaw-8k-phone: white noise 25 dB under, 8 kHz mu-law WAV (a telephone line);
- mp3-22k: white noise 30 dB under, 22.05 kHz MP3;
- quiet: the whole recording 30 dB down (requests at -56 dBFS active level);
- clipped: 26 dB too loud, hard-clipped at full scale;
- dc-offset: a constant 0.3 added (a faulty sound card);
- far: a reverberant room (RT60 0.7 s), requests at -38 dBFS, brown noise at -50 dBFS;
- music-5db: music 5 dB under the requests;
- long-silence: 60 s of room tone after the first half of the requests.
Per condition, summed over the seeds: requests found by exactly one utterance, split, missed;
utterances that merge two requests, that hold none, and cuts at the length limit; and a file that
cannot be read is reported as such. Only the endpointer runs (no model), so this takes a minute or
two. JSON + markdown under --out. A measurement, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from endpointing import COUNTS, background, layout, segment  # noqa: E402
from recording import QUESTIONS, RATE, RECORDED_LEVEL_DBFS, _speak, recorded_requests  # noqa: E402
from report import machine, write_results  # noqa: E402

from desta_edge.runtime.audio import AudioError  # noqa: E402
from desta_edge.streaming.sources import file_source  # noqa: E402
from desta_edge.streaming.vad import EndpointOptions  # noqa: E402
from desta_edge.training.acoustics import (colored_noise, convolve, mix_at_snr, room_response,  # noqa: E402
                                           room_tone, set_level)

ROOM_TONE_DBFS = -70.0
LONG_SILENCE_S = 60.0
# condition -> (file type, rate, channels, soundfile subtype: None for the type's default, 16-bit PCM for WAV)
FORMATS = {
    "clean": ("wav", RATE, 1, None), "flac-44k-stereo-music": ("flac", 44_100, 2, None),
    "ulaw-8k-phone": ("wav", 8_000, 1, "ULAW"), "mp3-22k": ("mp3", 22_050, 1, None),
    "quiet": ("wav", RATE, 1, None), "clipped": ("wav", RATE, 1, None), "dc-offset": ("wav", RATE, 1, None),
    "far": ("wav", RATE, 1, None), "music-5db": ("wav", RATE, 1, None), "long-silence": ("wav", RATE, 1, None),
}
CONDITIONS = tuple(FORMATS)


def with_room_tone(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (x + 10 ** (ROOM_TONE_DBFS / 20) * room_tone(len(x), rng)).astype(np.float32)


def recording(condition: str, speech: list[np.ndarray], rng: np.random.Generator
              ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The laid-out requests under `condition` (16 kHz, before the file format) and their true spans."""
    if condition not in FORMATS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    if condition == "long-silence":
        half = len(speech) // 2
        first, truth = layout(speech[:half], rng)
        second, later = layout(speech[half:], rng)
        pause = np.zeros(int(LONG_SILENCE_S * RATE), np.float32)
        shift = (len(first) + len(pause)) / RATE
        return with_room_tone(np.concatenate([first, pause, second]), rng), truth + [
            (a + shift, b + shift) for a, b in later]
    x, truth = layout(speech, rng)
    if condition == "flac-44k-stereo-music":
        x = mix_at_snr(x, background("music", len(x), rng, []), 15)
    elif condition == "music-5db":
        x = mix_at_snr(x, background("music", len(x), rng, []), 5)
    elif condition == "ulaw-8k-phone":
        x = mix_at_snr(x, colored_noise(len(x), "white", rng), 25)
    elif condition == "mp3-22k":
        x = mix_at_snr(x, colored_noise(len(x), "white", rng), 30)
    elif condition == "far":
        x = set_level(convolve(x, room_response(0.7, -3.0, rng)), -38)
        return (x + 10 ** (-50 / 20) * colored_noise(len(x), "brown", rng)).astype(np.float32), truth
    x = with_room_tone(x, rng)
    if condition == "quiet":
        x = x * np.float32(10 ** (-30 / 20))
    elif condition == "clipped":
        x = np.clip(x * np.float32(10 ** (26 / 20)), -1.0, 1.0)
    elif condition == "dc-offset":
        x = x + np.float32(0.3)
    return x.astype(np.float32), truth


def write(path: Path, x: np.ndarray, condition: str) -> Path:
    """`x` (16 kHz mono) written as the condition's file: its format, rate and channel count."""
    ext, rate, channels, subtype = FORMATS[condition]
    y = x if rate == RATE else soxr.resample(x, RATE, rate).astype(np.float32)
    if channels == 2:  # the second channel a little quieter, as from a second microphone
        y = np.stack([y, 0.8 * y], axis=1)
    path = path.with_suffix("." + ext)
    sf.write(str(path), y, rate, subtype=subtype)
    return path


def read_back(path: Path) -> np.ndarray:
    """The file as `listen --source FILE` hears it: 16 kHz mono, chunk by chunk."""
    return np.concatenate([c.samples for c in file_source(path)])


def run(conditions: list[str], seeds: int, opts: EndpointOptions = EndpointOptions(),
        recordings: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if recordings is None:
            speech = [set_level(_speak(text, engine, voice, Path(tmp) / f"q{i}.wav"), RECORDED_LEVEL_DBFS)
                      for i, (text, engine, voice) in enumerate(QUESTIONS)]
        else:
            speech = [x for _, _, x in recorded_requests(recordings)]
        rows = []
        for condition in conditions:
            ext, rate, channels, _ = FORMATS[condition]
            row = {"condition": condition, "file": f"{ext}, {rate} Hz, {channels} ch", "error": None,
                   **{k: 0 for k in COUNTS}}
            for seed in range(seeds):
                x, truth = recording(condition, speech, np.random.default_rng(seed))
                try:
                    heard = read_back(write(Path(tmp) / f"{condition}-{seed}", x, condition))
                except AudioError as e:  # counted, not fatal: the other conditions still run
                    row["error"] = str(e)
                    continue
                for k, v in segment(heard, truth, opts).items():
                    row[k] += v
            rows.append(row)
            print(f"{condition} done", file=sys.stderr, flush=True)
    source = f"recordings of people in {recordings}" if recordings else "synthetic questions"
    return {"requests": len(speech) * seeds, "seeds": seeds, "source": source,
            "machine": machine(), "rows": rows}


def markdown(result: dict) -> str:
    cols = ["condition", "file", "found once", "split", "missed", "merged", "no request", "30 s cuts", "error"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(str(x) for x in [
            r["condition"], r["file"], f"{r['once']}/{result['requests']}", r["split"], r["missed"], r["merged"],
            r["no_question"], r["max_length"], r["error"] or ""]) + " |")
    lines += ["", f"{result['seeds']} layouts of the {result['source']} per row; default endpointer"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated, of {', '.join(CONDITIONS)}")
    p.add_argument("--seeds", type=int, default=2, help="random layouts per condition (default 2)")
    p.add_argument("--recordings", type=Path, metavar="MANIFEST",
                   help="requests: the whole-file recordings of a real_voices.py manifest instead of synthetic questions")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = p.parse_args(argv)
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = [c for c in conditions if c not in FORMATS]
    if unknown or args.seeds < 1:
        p.error(f"unknown conditions {unknown} (expected some of {CONDITIONS})" if unknown else "--seeds must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(conditions, args.seeds, recordings=args.recordings)
    write_results(out, "robustness", result, markdown(result), as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
