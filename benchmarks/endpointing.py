"""Endpointing in noise: the benchmark questions over several backgrounds, with and without the noise gate.

    python benchmarks/endpointing.py [--noises white,pink,brown,hum,babble,music] [--snrs 20,10,5]
                                     [--seeds 3] [--recordings MANIFEST] [--talker-drop-db 6,10]
                                     [--spectral-gate 4:6,5:0] [--faint-range-db 0,20]
                                     [--variant FIELD=VALUE[,FIELD=VALUE...]] ...
                                     [--out benchmarks/results]

The ten spoken questions of `latency.py` (two of them hesitant, with a pause mid-sentence) are
laid out with 1.2-2.0 s gaps and mixed with one background at a given SNR (speech power over
background power):
- white, pink (1/f) and brown (1/f^2) noise (the corpus's generator: nothing below 20 Hz);
- hum: a 50 Hz mains hum with its harmonics over brown noise;
- babble: six other synthetic talkers (espeak-ng and flite) saying other sentences at once;
- music: random three-note chords of harmonic tones, a new one every 0.5 s, each decaying;
- talker, two-talkers: one or two of those talkers saying one sentence after another with
  0.2-0.8 s pauses, as a TV or people talking across the room do (their pauses are shorter than
  the hangover, so webrtcvad alone never ends an utterance in them);
- typing, clatter: impulsive sounds, loud for a few milliseconds and quiet between: someone typing
  near the microphone, dishes and cutlery in a kitchen.
With `--recordings` (a manifest from `real_voices.py`), the requests are instead the manifest's
whole-file recordings of people (single phrases and sentences: corpus prompts, digits, words,
channel names), so onsets, endings and pauses are real speech's.
Only the endpointer runs, so this needs no model (a minute or two per background with Silero):
webrtcvad alone, with the noise gate alone, and with every default gate (the default endpointer
before 2026-11-28), and the default endpointer (Silero VAD with the gates); other options at their
defaults, `--hangover-ms` aside. With `--talker-drop-db`, also the default with the talker gate at
each drop; with `--spectral-gate S:N`, also with the spectral gate at S dB and the level gate at
N dB (N = 0: the spectral gate alone); with `--faint-range-db`, also the default endpointer with
the gates engaging in a faint background that far under the talker (0: only in a saturating one);
with `--variant`, also the default endpointer with those `EndpointOptions` fields changed (e.g.
`--variant silero_threshold=0.6`).
Per background and SNR, summed over the seeds: questions found by exactly one utterance, split
into several, missed; utterances that merge two questions, that hold no question, and forced
cuts at the length limit. JSON + markdown under --out. A measurement, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recording import QUESTIONS, RATE, _speak, recorded_requests  # noqa: E402
from report import write_results  # noqa: E402

from desta_edge.streaming.vad import Endpointer, EndpointOptions, SpeechEnd  # noqa: E402
from desta_edge.training.acoustics import colored_noise  # noqa: E402

NOISES = ("white", "pink", "brown", "hum", "babble", "music", "talker", "two-talkers", "typing", "clatter")
BABBLE = [  # other talkers: (sentence, engine, voice)
    ("The weather report said it would rain all afternoon in the city.", "espeak", "en-us+m2"),
    ("We should book the tickets before the prices go up again next week.", "flite", "kal"),
    ("She moved the chairs into the garden and waited for her friends.", "espeak", "en-gb+f2"),
    ("My brother keeps his bicycle in the hallway near the kitchen door.", "flite", "slt"),
    ("The meeting ran long so nobody had time for lunch today.", "espeak", "en+m4"),
    ("They painted the fence blue and then changed their minds about it.", "flite", "rms"),
]
CHORD_NOTES_HZ = (220, 247, 262, 294, 330, 349, 392, 440)
COUNTS = ("once", "split", "missed", "merged", "no_question", "max_length")


def layout(speech: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The questions with random 1.2-2.0 s gaps and 1.5 s at the end; their true (start, end) in s."""
    parts, truth, t = [], [], 0.0
    for s in speech:
        gap = np.zeros(int(rng.uniform(1.2, 2.0) * RATE), np.float32)
        parts += [gap, s]
        t += len(gap) / RATE
        truth.append((t, t + len(s) / RATE))
        t += len(s) / RATE
    parts.append(np.zeros(int(1.5 * RATE), np.float32))
    return np.concatenate(parts), truth


def background(kind: str, n: int, rng: np.random.Generator, talkers: list[np.ndarray]) -> np.ndarray:
    t = np.arange(n) / RATE
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        x = colored_noise(n, kind, rng, RATE)
    elif kind == "hum":
        hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 6))
        x = colored_noise(n, "brown", rng, RATE) * 0.5 + hum
    elif kind == "babble":
        x = np.zeros(n)
        for talker in talkers:  # each talks on and on (with short breaths), from a random point
            turn = np.concatenate([talker, np.zeros(int(0.2 * RATE), np.float32)])
            looped = np.tile(turn, n // len(turn) + 2)
            start = int(rng.integers(0, len(turn)))
            x += looped[start : start + n]
    elif kind == "music":
        x = np.zeros(n)
        step = RATE // 2
        for s in range(0, n, step):
            tt = np.arange(min(step, n - s)) / RATE
            for f0 in rng.choice(CHORD_NOTES_HZ, 3):
                x[s : s + len(tt)] += np.exp(-3 * tt) * sum(np.sin(2 * np.pi * f0 * k * tt) / k for k in (1, 2, 3))
    elif kind in ("talker", "two-talkers"):
        x = np.zeros(n)
        for _ in range(1 if kind == "talker" else 2):
            parts, length = [], 0
            while length < n + 3 * RATE:  # sentences in random order, each followed by a short pause
                parts += [talkers[int(rng.integers(len(talkers)))], np.zeros(int(rng.uniform(0.2, 0.8) * RATE))]
                length += len(parts[-2]) + len(parts[-1])
            start = int(rng.integers(0, 3 * RATE))
            x += np.concatenate(parts)[start : start + n]
    elif kind == "typing":
        x = typing(n, rng)
    elif kind == "clatter":
        x = clatter(n, rng)
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {NOISES}")
    return x.astype(np.float32)


def _add(x: np.ndarray, at_s: float, sound: np.ndarray) -> None:
    i = int(at_s * RATE)
    if i < len(x):
        x[i : i + len(sound)] += sound[: len(x) - i]


def _keystroke(rng: np.random.Generator) -> np.ndarray:
    """A key's click: a few ms of bright noise and a damped resonance of the keycap and case."""
    t = np.arange(int(0.012 * RATE)) / RATE
    burst = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / rng.uniform(0.0008, 0.002))
    body = np.sin(2 * np.pi * rng.uniform(1500, 4500) * t) * np.exp(-t / rng.uniform(0.002, 0.005))
    return burst + 0.7 * body


def typing(n: int, rng: np.random.Generator) -> np.ndarray:
    """Someone typing near the microphone: runs of 1-4 s at about 7 keys a second (each a press
    and a softer release 60-120 ms later), 0.4-2 s apart, key to key loudness varying by a few dB."""
    x, t = np.zeros(n), rng.uniform(0.0, 1.0)
    while t < n / RATE:
        run_end = t + rng.uniform(1.0, 4.0)
        while t < run_end:
            a = 10 ** (rng.normal(0, 3) / 20)
            _add(x, t, a * _keystroke(rng))
            _add(x, t + rng.uniform(0.06, 0.12), 0.4 * a * _keystroke(rng))
            t += rng.gamma(4.0, 1 / 28)  # mean 1/7 s
        t += rng.uniform(0.4, 2.0)
    return x


def clatter(n: int, rng: np.random.Generator) -> np.ndarray:
    """Dishes and cutlery in a kitchen: impacts about 1.5 a second, often two or three in quick
    succession, each a click and a few ringing modes (0.8-6 kHz, 20-250 ms), 20 dB apart at most."""
    x, t = np.zeros(n), rng.uniform(0.0, 1.0)
    tt = np.arange(int(0.4 * RATE)) / RATE  # an impact's 400 ms
    while t < n / RATE:
        for _ in range(int(rng.integers(1, 4))):
            ring = sum(np.sin(2 * np.pi * rng.uniform(800, 6000) * tt) * np.exp(-tt / rng.uniform(0.02, 0.25))
                       for _ in range(3))
            click = np.diff(rng.standard_normal(len(tt) + 1)) * np.exp(-tt / 0.001)
            _add(x, t, 10 ** (rng.uniform(-20, 0) / 20) * (ring + click))
            t += rng.uniform(0.05, 0.3)
        t += rng.exponential(1 / 1.5)
    return x


def segment(audio: np.ndarray, truth: list[tuple[float, float]], opts: EndpointOptions) -> dict[str, int]:
    """Run the endpointer over `audio` in 20 ms pushes and score its utterances against `truth`."""
    ep = Endpointer(opts)
    ends: list[SpeechEnd] = []
    step = opts.frame_samples
    for i in range(0, len(audio), step):
        ends += [e for e in ep.push(audio[i : i + step]) if isinstance(e, SpeechEnd)]
    ends += [e for e in ep.flush() if isinstance(e, SpeechEnd)]
    spans = [(e.start_s, e.speech_end_s) for e in ends]
    per_question = [sum(a < q1 and b > q0 for a, b in spans) for q0, q1 in truth]
    per_utterance = [sum(a < q1 and b > q0 for q0, q1 in truth) for a, b in spans]
    return {
        "once": sum(k == 1 for k in per_question),
        "split": sum(k > 1 for k in per_question),
        "missed": sum(k == 0 for k in per_question),
        "merged": sum(k > 1 for k in per_utterance),
        "no_question": sum(k == 0 for k in per_utterance),
        "max_length": sum(e.reason == "max_length" for e in ends),
    }


def run(noises: list[str], snrs: list[float], seeds: int, opts: EndpointOptions = EndpointOptions(),
        recordings: Path | None = None, talker_drop_db: list[float] = (),
        spectral_gate: list[tuple[float, float]] = (), faint_range_db: list[float] = (),
        custom: list[dict[str, float | str]] = ()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if recordings is None:
            speech = [_speak(text, engine, voice, Path(tmp) / f"q{i}.wav")
                      for i, (text, engine, voice) in enumerate(QUESTIONS)]
        else:
            speech = [x for _, _, x in recorded_requests(recordings)]
        talkers = [_speak(text, engine, voice, Path(tmp) / f"b{i}.wav") for i, (text, engine, voice) in enumerate(BABBLE)]
    speech_power = float(np.mean(np.concatenate(speech) ** 2))
    webrtc = replace(opts, detector="webrtcvad")
    no_talker_gate = replace(webrtc, talker_drop_db=0.0, loud_drop_db=0.0, distant_db=0.0)
    variants = {"webrtcvad only": replace(no_talker_gate, noise_gate_db=0.0), "with the noise gate": no_talker_gate,
                "webrtcvad with the default gates": webrtc, "default (Silero with the gates)": opts}
    variants |= {f"noise gate + talker gate {d:g} dB": replace(opts, talker_drop_db=d) for d in talker_drop_db}
    variants |= {f"spectral gate {s:g} dB" + (f" + noise gate {n:g} dB" if n else ""):
                 replace(no_talker_gate, spectral_gate_db=s, noise_gate_db=n) for s, n in spectral_gate}
    variants |= {"default, faint-background rule " + (f"{r:g} dB" if r else "off"): replace(opts, faint_range_db=r)
                 for r in faint_range_db}
    variants |= {"default with " + ", ".join(f"{k}={v:g}" if not isinstance(v, str) else f"{k}={v}"
                                             for k, v in fields.items()): replace(opts, **fields)
                 for fields in custom}
    rows = []
    for kind in noises:
        for snr in snrs:
            totals = {name: dict.fromkeys(COUNTS, 0) for name in variants}
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                clean, truth = layout(speech, rng)
                noise = background(kind, len(clean), rng, talkers)
                noise *= np.sqrt(speech_power / np.mean(noise**2) / 10 ** (snr / 10))
                mix = clean + noise
                mix /= max(1.0, float(np.abs(mix).max()))  # no clipping
                for name, o in variants.items():
                    for key, value in segment(mix, truth, o).items():
                        totals[name][key] += value
            rows += [{"background": kind, "snr_db": snr, "variant": name, **counts} for name, counts in totals.items()]
            print(f"{kind} {snr:g} dB done", file=sys.stderr)
    requests = f"{len(speech)} recordings of people ({recordings})" if recordings else f"the {len(speech)} questions"
    return {"questions": len(speech) * seeds, "requests": requests, "seeds": seeds, "hangover_ms": opts.hangover_ms,
            "noise_gate_db": opts.noise_gate_db, "noise_window_ms": opts.noise_window_ms, "rows": rows}


def markdown(result: dict) -> str:
    cols = ["background", "SNR dB", "endpointer", "found once", "split", "missed", "merged", "no question", "30 s cuts"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(str(x) for x in [
            r["background"], f"{r['snr_db']:g}", r["variant"], f"{r['once']}/{result['questions']}", r["split"],
            r["missed"], r["merged"], r["no_question"], r["max_length"]]) + " |")
    lines += ["", f"{result['seeds']} layouts of {result['requests']} per row; hangover {result['hangover_ms']} ms; "
                  f"noise gate {result['noise_gate_db']:g} dB "
                  f"over a {result['noise_window_ms']} ms window"]
    return "\n".join(lines)


def variant_fields(spec: str, opts: EndpointOptions) -> dict[str, float | str]:
    """"loud_drop_db=0,detector=webrtcvad" -> {"loud_drop_db": 0.0, ...}, checked against EndpointOptions."""
    fields = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if not hasattr(opts, name) or not value:
            raise ValueError(f"{item!r} is not FIELD=VALUE for a field of EndpointOptions")
        kind = type(getattr(opts, name))
        fields[name] = value if kind is str else int(value) if kind is int else float(value)
    replace(opts, **fields)  # the options' own checks
    return fields


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noises", default=",".join(NOISES), help=f"comma-separated, of {', '.join(NOISES)}")
    p.add_argument("--snrs", default="20,10,5", help="comma-separated SNRs in dB (default 20,10,5)")
    p.add_argument("--seeds", type=int, default=3, help="random layouts per background and SNR (default 3)")
    p.add_argument("--recordings", type=Path, metavar="MANIFEST",
                   help="requests: the whole-file recordings of a real_voices.py manifest instead of synthetic questions")
    p.add_argument("--talker-drop-db", default="",
                   help="comma-separated: also run the talker gate at these drops in dB (EndpointOptions.talker_drop_db)")
    p.add_argument("--spectral-gate", default="", metavar="S:N,...",
                   help="comma-separated: also run the spectral gate at S dB with the noise gate at N dB (0: off) "
                        "(EndpointOptions.spectral_gate_db, noise_gate_db)")
    p.add_argument("--faint-range-db", default="",
                   help="comma-separated: also run the default endpointer with the gates engaging in a faint "
                        "background this far under the talker (0: off) (EndpointOptions.faint_range_db)")
    p.add_argument("--variant", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE...]",
                   help="also run the default endpointer with these EndpointOptions fields changed (repeatable), "
                        "e.g. loud_drop_db=0,distant_db=0")
    p.add_argument("--hangover-ms", type=int, default=EndpointOptions.hangover_ms,
                   help=f"silence that ends an utterance (default {EndpointOptions.hangover_ms})")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = p.parse_args(argv)
    noises = [n for n in args.noises.split(",") if n]
    unknown = [n for n in noises if n not in NOISES]
    if unknown or args.seeds < 1:
        p.error(f"unknown backgrounds {unknown} (expected some of {NOISES})" if unknown else "--seeds must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    drops = [float(d) for d in args.talker_drop_db.split(",") if d]
    try:
        spectral = [(float(s), float(n)) for s, n in (pair.split(":") for pair in args.spectral_gate.split(",") if pair)]
    except ValueError:
        p.error(f"--spectral-gate takes S:N pairs in dB, e.g. 4:6,5:0; got {args.spectral_gate!r}")
    try:
        opts = EndpointOptions(hangover_ms=args.hangover_ms)
        custom = [variant_fields(spec, opts) for spec in args.variant]
    except ValueError as e:
        p.error(str(e))
    result = run(noises, [float(s) for s in args.snrs.split(",")], args.seeds, opts, recordings=args.recordings,
                 talker_drop_db=drops, spectral_gate=spectral,
                 faint_range_db=[float(r) for r in args.faint_range_db.split(",") if r], custom=custom)
    write_results(out, "endpointing", result, markdown(result), as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
