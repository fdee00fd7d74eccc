"""The assistant's own voice: spoken answers heard back through a loudspeaker.

    python benchmarks/echo.py [--questions 20] [--echo-dbfs -30] [--gap-s 12] [--variants A,B] [--fast]
                              [--out benchmarks/results]
    python benchmarks/echo.py --double-talk     # the cancellers side by side on questions over the echo

A closed loop, as an app that speaks the answers would run it. A user asks questions, one every
`--gap-s` seconds (espeak-ng and flite voices at -26 dBFS in a small room). A simulated app takes
each `answer` event, speaks its text (flite and espeak-ng voices by turns), and plays it through a
simulated loudspeaker (band-limited, softly clipped, the room's reverberation) into the same
microphone at `--echo-dbfs`, 0.2 s after the answer, reporting `Assistant.playback` while it
plays (except in the first variant). An answer given to an echo is spoken too, so an assistant
that takes its own voice for a request feeds itself. The microphone is read at real-time pace
through the listen loop with the tiny preset, in these variants: with barge-in off, the app
reports no playback (what a listener without the echo guard hears), the echo guard (the default
once playback is reported), half duplex, and the echo cancelled (`streaming/echo.py`, the app's
signal as a reference channel): by WebRTC's AEC3 alone (needs `pip install "desta-edge[aec]"`);
with Speex's canceller for what the model hears and AEC3's output for the endpointer (as the
sources did before 2026-11-29); and as the sources do it where libspeexdsp is installed
(`DuplexCanceller`: the endpointer hears Speex's output too where the person is louder than the
echo); each also with barge-in on.

Per variant: the questions answered, and those lost (never heard, or dropped as an echo); the
echoes played; utterances heard in an echo and answered as requests, or dropped as echoes;
answers stopped by barge-in and resumed; the word error rate of the transcripts of the questions,
all of them and those asked over the loudspeaker. JSON + markdown under --out. A measurement, not
a pass/fail test.

`--double-talk` instead compares the cancellers offline, question by question: each question is
asked TALK_OVER_S into a spoken answer, over its echo. Per canceller (none, AEC3, Speex, and the
endpointer's copy of `DuplexCanceller`): the word error rate of what the model hears of the
question (its runtime transcript of the question's span), the share of the question's speech that
Silero finds in the canceller's output (what an endpointer can hear of the person), the share of
the echo's speech that Silero still finds in what the canceller leaves of the echo alone (what an
endpointer would take for a person), and how far the echo is taken down.
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recording import QUESTIONS, RATE, _synth, said  # noqa: E402
from report import machine, write_results  # noqa: E402

from desta_edge import DestaModel  # noqa: E402
from desta_edge.streaming.assistant import Assistant, AssistantOptions  # noqa: E402
from desta_edge.streaming.echo import DuplexCanceller, EchoCanceller, SpeexCanceller  # noqa: E402
from desta_edge.streaming.sources import Chunk, paced  # noqa: E402
from desta_edge.streaming.vad import EndpointOptions  # noqa: E402
from desta_edge.training import acoustics  # noqa: E402
from desta_edge.training.metrics import word_error_rate  # noqa: E402

MORE_QUESTIONS = [  # (text, engine, voice): the user's questions beyond recording.QUESTIONS
    ("Why is the sky blue?", "espeak", "en-us+m3"),
    ("What is the boiling point of water?", "flite", "awb"),
    ("Tell me a fun fact about cats.", "espeak", "en-gb+f4"),
    ("How far away is the moon?", "flite", "rms"),
    ("What should I cook for dinner tonight?", "espeak", "en+m2"),
    ("Can you recommend a good book?", "flite", "slt"),
    ("How do airplanes fly?", "espeak", "en-us+f2"),
    ("What is two plus two?", "flite", "kal"),
    ("Who was the first person on the moon?", "espeak", "en-gb+m4"),
    ("What is the weather like on Mars?", "flite", "awb"),
]
APP_VOICES = [("flite", "slt"), ("espeak", "en-us"), ("flite", "kal"), ("espeak", "en-gb+f3")]  # the app's, by turns
USER_DBFS = -26.0
NOISE_DBFS = -62.0  # the room's own background
PLAY_LATENCY_S = 0.2  # from the answer event to sound leaving the loudspeaker
CHUNK = 320  # 20 ms
DRAIN_S = 20.0  # after the user's last question: how long the loop may still run (an echo loop never ends)
ECHO_DELAY_S = 0.04  # the echo behind the app's signal: output latency and the way through the air
TALK_OVER_S = 2.5  # --double-talk: the question begins this far into the answer
ENDPOINTER = "AEC3 + Speex, the endpointer's copy"  # --double-talk: DuplexCanceller's (the model hears Speex's)
ANSWERS = [  # --double-talk: what the app says while the questions are asked, by turns
    "The capital of France is Paris, a beautiful city known for its art, food and culture.",
    "There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.",
    "To make green tea, heat water to about eighty degrees, add the leaves, and let them steep for three minutes.",
    "Sure! Here is a fun fact: cats sleep for about twelve to sixteen hours a day.",
]


class AecForEndpointer(DuplexCanceller):
    """How the sources cancelled echo before 2026-11-29: the endpointer always hears AEC3's output."""

    def _merge(self, aec: np.ndarray, speex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.speex.frame_energies = []
        return aec, speex


VARIANTS = {  # name -> (the app reports playback, the echo canceller or None, assistant options)
    "no playback reports": (False, None, {}),
    "echo guard": (True, None, {}),
    "half duplex": (True, None, {"half_duplex": True}),
    "AEC3 only": (True, EchoCanceller, {}),
    "AEC3 only + barge-in": (True, EchoCanceller, {"barge_in": True}),
    "AEC3 for the endpointer": (True, AecForEndpointer, {}),
    "AEC3 for the endpointer + barge-in": (True, AecForEndpointer, {"barge_in": True}),
    "echo cancelled": (True, DuplexCanceller, {}),
    "echo cancelled + barge-in": (True, DuplexCanceller, {"barge_in": True}),
}


def loudspeaker(x: np.ndarray, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """`x` as a small loudspeaker plays it into a room and a microphone hears it."""
    y = acoustics.band_limit(x, 200.0, 7000.0)
    drive = 1.5  # soft clipping: a small driver near its limit
    y = np.tanh(drive * y / (np.abs(y).max() + 1e-9)) / np.tanh(drive)
    y = acoustics.convolve(y, acoustics.room_response(rng.uniform(0.2, 0.6), rng.uniform(0.0, 8.0), rng))
    return acoustics.set_level(y, level_dbfs)


class App:
    """Speaks each answer through the loudspeaker after its `answer` event (any thread may call
    `on_event`; the microphone's thread calls `play`)."""

    def __init__(self, speak, level_dbfs: float, rng: np.random.Generator) -> None:
        self.speak = speak  # (text, index) -> 16 kHz samples
        self.level_dbfs = level_dbfs
        self.rng = rng
        self._texts: queue.Queue[str] = queue.Queue()
        self.spans: list[tuple[float, float]] = []  # (start s, end s) of each playback
        self._ref = self._echo = np.zeros(0, np.float32)  # the signal still to play, and its echo, from `_at`
        self._at = self._start = 0  # sample where `_ref[0]` plays; where the current sound began

    def on_event(self, e: dict) -> None:
        if e["type"] == "answer" and e["text"].strip():
            self._texts.put(e["text"])

    @property
    def playing(self) -> bool:
        return len(self._ref) > 0 or not self._texts.empty()

    def play(self, pos: int, n: int) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """In samples [pos, pos + n): the loudspeaker's echo at the microphone, the app's own signal
        (the reference), and the playback changes there (True: starts, False: stops)."""
        changes = []
        if not len(self._ref) and not self._texts.empty():
            signal = self.speak(self._texts.get(), len(self.spans))
            delay = np.zeros(int(ECHO_DELAY_S * RATE), np.float32)
            self._ref = np.concatenate([signal, delay])
            self._echo = np.concatenate([delay, loudspeaker(signal, self.level_dbfs, self.rng)])
            self._at = self._start = pos + int(PLAY_LATENCY_S * RATE)
            self.spans.append((self._at / RATE, (self._at + len(self._ref)) / RATE))
        echo, ref = np.zeros(n, np.float32), np.zeros(n, np.float32)
        if len(self._ref) and self._at < pos + n:
            i = max(0, self._at - pos)
            k = min(n - i, len(self._ref))
            echo[i : i + k], ref[i : i + k] = self._echo[:k], self._ref[:k]
            if pos <= self._start < pos + n:
                changes.append(True)
            self._ref, self._echo, self._at = self._ref[k:], self._echo[k:], pos + i + k
            if not len(self._ref):
                changes.append(False)
        return echo, ref, changes


def user_track(questions: list[np.ndarray], gap_s: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The questions `gap_s` apart (start to start), after 0.5 s; their true (start, end) in s."""
    step = int(gap_s * RATE)
    x = np.zeros(int(0.5 * RATE) + step * len(questions), np.float32)
    truth = []
    for i, q in enumerate(questions):
        if len(q) > step:
            raise ValueError(f"question {i} lasts {len(q) / RATE:.1f} s, longer than --gap-s {gap_s}")
        at = int(0.5 * RATE) + i * step
        x[at : at + len(q)] = q
        truth.append((at / RATE, (at + len(q)) / RATE))
    return x, truth


def microphone(user: np.ndarray, app: App, assistant: Assistant, reports: bool, rng: np.random.Generator,
               busy: Callable[[], bool], cancel=None) -> Iterator[Chunk]:
    """The user, the loudspeaker and the room, 20 ms at a time (the echo removed by `cancel`, whose
    output is the endpointer's copy or the endpointer's and the model's); after the user's track,
    until nothing is pending (or DRAIN_S)."""
    noise_gain = 10 ** (NOISE_DBFS / 20)
    end = len(user) + int(DRAIN_S * RATE)
    pos = 0
    while pos < len(user) or (pos < end and (app.playing or busy())):
        speech = user[pos : pos + CHUNK]
        speech = np.pad(speech, (0, CHUNK - len(speech)))
        echo, ref, changes = app.play(pos, CHUNK)
        for active in changes if reports else ():
            assistant.playback(active)
        mic = (speech + echo + noise_gain * acoustics.room_tone(CHUNK, rng)).astype(np.float32)
        heard = mic if cancel is None else cancel(mic, ref)  # whole 10 ms frames: as long
        yield Chunk(heard, pos / RATE) if isinstance(heard, np.ndarray) else Chunk(heard[0], pos / RATE, heard[1])
        pos += CHUNK


def overlaps(a: tuple[float, float], spans: list[tuple[float, float]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in spans)


def score(events: list[dict], truth: list[tuple[float, float]], echoes: list[tuple[float, float]],
          texts: list[str]) -> dict:
    """What became of the questions and of the speech heard in the echoes."""
    starts = {e["utterance"]: e["audio_s"] for e in events if e["type"] == "speech_start"}
    spans = {e["utterance"]: (starts[e["utterance"]], e["speech_end_s"]) for e in events if e["type"] == "speech_end"}
    answered = {e["utterance"] for e in events if e["type"] == "answer"}
    dropped = {e["utterance"]: e["reason"] for e in events if e["type"] == "discarded" and "transcript" in e}
    heard = {e["utterance"]: e["transcript"] for e in events
             if e["type"] in ("answer", "discarded") and "transcript" in e}
    unanswered = [i for i, q in enumerate(truth) if not any(u in answered and overlaps(span, [q])
                                                             for u, span in spans.items())]
    heard_q = sum(any(overlaps(span, [q]) for span in spans.values()) for q in truth)
    in_echo = [u for u, span in spans.items() if overlaps(span, echoes) and not overlaps(span, truth)]
    # what was heard of each question: the transcripts of the utterances over it, in order
    transcripts = [" ".join(heard.get(u, "") for u, span in sorted(spans.items()) if overlaps(span, [q]))
                   for q in truth]
    over = [i for i, q in enumerate(truth) if overlaps(q, echoes)]
    return {
        "questions": len(truth),
        "answered": len(truth) - len(unanswered),
        "not_heard": len(truth) - heard_q,
        "dropped_as_echo": sum(any(dropped.get(u) == "echo" and overlaps(span, [q]) for u, span in spans.items())
                               for q in truth),
        "echoes_played": len(echoes),
        "echo_utterances": len(in_echo),
        "echo_answered": sum(u in answered for u in in_echo),
        "echo_dropped": sum(dropped.get(u) == "echo" for u in in_echo),
        "echo_other": sum(u not in answered and dropped.get(u) != "echo" for u in in_echo),
        "mixed_utterances": sum(overlaps(span, echoes) and overlaps(span, truth) for span in spans.values()),
        "heard_in_echoes": [{"transcript": heard.get(u), "outcome": "answered" if u in answered else dropped.get(u)}
                            for u in in_echo],
        "unanswered_questions": [{"question": i, "asked_over_playback": overlaps(truth[i], echoes)} for i in unanswered],
        "wer": round(word_error_rate(list(zip(texts, transcripts))), 3),
        "asked_over_playback": len(over),
        "wer_over_playback": round(word_error_rate([(texts[i], transcripts[i]) for i in over]), 3) if over else None,
        "heard_over_playback": [{"question": texts[i], "transcript": transcripts[i]} for i in over],
    }


def double_talk(model, clips: list[np.ndarray], texts: list[str], speak, level_dbfs: float, seed: int) -> dict:
    """The cancellers side by side on each question asked over a spoken answer (see --double-talk)."""
    from desta_edge.runtime.audio import speech_ms

    rng = np.random.default_rng(seed)
    cancellers = {"none": None, "AEC3": EchoCanceller, "Speex": SpeexCanceller, ENDPOINTER: DuplexCanceller}
    pairs = {name: [] for name in ("question alone", *cancellers) if name != ENDPOINTER}  # the model hears Speex's
    question = {name: 0 for name in cancellers}  # ms of the questions' speech Silero finds, after each
    found = {name: 0 for name in cancellers}  # ms of speech Silero finds in the echo alone, after each
    reduction = {name: [] for name in cancellers}
    question_speech = echo_speech = 0

    def heard(x: np.ndarray) -> str:
        conversation = [{"role": "user", "content": "<|AUDIO|>", "audios": [{"audio": (x, RATE), "text": None}]}]
        return model.generate(conversation, max_new_tokens=1).audios[0][1]

    def run(make, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        if make is None:
            return mic
        c = make()  # takes any length: the same 10 ms frames as when fed chunk by chunk
        out, rest = c(mic, ref), c.flush()
        return np.concatenate([out, rest]) if isinstance(out, np.ndarray) else np.concatenate([out[0], rest[0]])

    for i, (q, text) in enumerate(zip(clips, texts)):
        answer = speak(ANSWERS[i % len(ANSWERS)], 1000 + i)
        delay = int(ECHO_DELAY_S * RATE)
        at, n = int(TALK_OVER_S * RATE), max(len(answer) + delay, int(TALK_OVER_S * RATE) + len(q)) + RATE
        ref, echo, user = (np.zeros(n, np.float32) for _ in range(3))
        ref[: len(answer)] = answer
        echo[delay : delay + len(answer)] = loudspeaker(answer, level_dbfs, rng)
        user[at : at + len(q)] = q
        room = 10 ** (NOISE_DBFS / 20) * acoustics.room_tone(n, rng)
        span = slice(at - int(0.3 * RATE), at + len(q) + int(0.3 * RATE))  # as an endpointer would cut it
        asked = slice(at, at + len(q))
        late = slice(RATE, len(answer))  # the echo alone, after a second to learn the room
        pairs["question alone"].append((text, heard((user + room)[span])))
        question_speech += speech_ms((user + room)[asked])
        echo_speech += speech_ms(echo + room)
        for name, make in cancellers.items():
            out = run(make, user + echo + room, ref)
            question[name] += speech_ms(out[asked])
            if name in pairs:
                pairs[name].append((text, heard(out[span])))
            alone = run(make, echo + room, ref)
            found[name] += speech_ms(alone)
            before, after = np.mean((echo + room)[late] ** 2), np.mean(alone[late] ** 2)
            reduction[name].append(10 * np.log10(before / (after + 1e-12)))
        print(f"double talk {i + 1}/{len(clips)}", file=sys.stderr)
    rows = {"question alone": {"wer": round(word_error_rate(pairs["question alone"]), 3)}}
    for name in cancellers:
        rows[name] = {"wer": round(word_error_rate(pairs[name]), 3) if name in pairs else None,
                      "question_speech_found": round(question[name] / max(question_speech, 1), 3),
                      "echo_speech_found": round(found[name] / max(echo_speech, 1), 3),
                      "echo_reduction_db": round(float(np.median(reduction[name])), 1)}
    heard_by = {name: [h for _, h in p] for name, p in pairs.items()}
    return {"questions": len(clips), "talk_over_s": TALK_OVER_S, "rows": rows, "heard": heard_by}


def run_variant(model, user: np.ndarray, truth, texts: list[str], *, reports: bool, canceller, fields: dict,
                level_dbfs: float, realtime: bool, max_new_tokens: int, speak, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    app = App(speak, level_dbfs, rng)
    events: list[dict] = []
    pending: set[int] = set()  # committed utterances without their outcome yet

    def emit(e: dict) -> None:
        events.append(e)
        if e["type"] == "speech_end":
            pending.add(e["utterance"])
        elif e["type"] in ("answer", "discarded", "error", "skipped"):
            pending.discard(e.get("utterance"))
        app.on_event(e)

    opts = AssistantOptions(max_new_tokens=max_new_tokens, wait_for_turn_verdict=not realtime,
                            **{"barge_in": False, **fields})
    assistant = Assistant(model, opts, EndpointOptions(), emit=emit)
    assistant.warm_up()
    chunks = microphone(user, app, assistant, reports, rng, busy=lambda: bool(pending),
                        cancel=canceller() if canceller else None)
    t0 = time.monotonic()
    stats = assistant.run(paced(chunks) if realtime else chunks)
    return {**score(events, truth, app.spans, texts), "cancelled": stats.cancelled, "resumed": stats.resumed,
            "echoes_discarded_by_guard": stats.echoes, "seconds": round(time.monotonic() - t0, 1)}


def markdown(result: dict) -> str:
    if "double_talk" in result:
        d = result["double_talk"]
        lines = ["| canceller | WER of the question over the echo | question speech found | echo speech still found "
                 "| echo taken down (dB) |", "|---|---|---|---|---|"]
        for name, r in d["rows"].items():
            wer = "–" if r["wer"] is None else f"{r['wer']:.3f}"
            found = (f"{r['question_speech_found']:.0%} | {r['echo_speech_found']:.0%} | {r['echo_reduction_db']:g} |"
                     if "echo_speech_found" in r else "– | – | – |")
            lines.append(f"| {name} | {wer} | {found}")
        lines += ["", f"{d['questions']} questions, each asked {d['talk_over_s']:g} s into a spoken answer; the "
                  f"loudspeaker at {result['echo_dbfs']:g} dBFS, the user at {USER_DBFS:g} dBFS",
                  f"machine: {result['machine']}"]
        return "\n".join(lines)
    cols = ["answered", "not_heard", "dropped_as_echo", "echoes_played", "echo_utterances", "echo_answered",
            "echo_dropped", "echo_other", "mixed_utterances", "cancelled", "resumed", "asked_over_playback", "wer",
            "wer_over_playback"]
    lines = ["| variant | " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, v in result["variants"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{v[c]}/{v['questions']}" if c == "answered" else str(v[c]) for c in cols) + " |")
    lines += ["", f"questions: {result['questions']}, one every {result['gap_s']:g} s; the loudspeaker at "
              f"{result['echo_dbfs']:g} dBFS, the user at {USER_DBFS:g} dBFS; realtime={result['realtime']}",
              f"machine: {result['machine']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--questions", type=int, default=len(QUESTIONS) + len(MORE_QUESTIONS))
    p.add_argument("--echo-dbfs", type=float, default=-30.0, help="the loudspeaker's level at the microphone")
    p.add_argument("--gap-s", type=float, default=12.0, help="from one question's start to the next's")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", type=lambda v: v.split(","), default=None,
                   help=f"comma-separated, of: {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--fast", action="store_true", help="feed audio as fast as possible (smoke test)")
    p.add_argument("--double-talk", action="store_true",
                   help="instead, compare the echo cancellers offline on questions asked over the echo")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    asked = (QUESTIONS + MORE_QUESTIONS)[: args.questions]
    with tempfile.TemporaryDirectory() as tmp:
        def speak(text: str, i: int, engine_voice=None) -> np.ndarray:
            engine, voice = engine_voice or APP_VOICES[i % len(APP_VOICES)]
            return _synth(text, engine, voice, Path(tmp) / f"say{i}.wav")

        rng = np.random.default_rng(args.seed)
        clips = []
        for i, (text, engine, voice) in enumerate(asked):
            x = speak(said(text), i, (engine, voice))
            x = acoustics.convolve(x, acoustics.room_response(rng.uniform(0.2, 0.4), rng.uniform(6.0, 12.0), rng))
            clips.append(acoustics.set_level(x, USER_DBFS))
        user, truth = user_track(clips, args.gap_s)
        model = DestaModel.from_pretrained(args.model)
        variants = {}
        texts = [said(text) for text, _, _ in asked]
        if args.double_talk:
            result = {"machine": machine(), "model": args.model, "echo_dbfs": args.echo_dbfs,
                      "double_talk": double_talk(model, clips, texts, speak, args.echo_dbfs, args.seed)}
            write_results(out, "echo-double-talk", result, markdown(result), as_json=args.json)
            return 0
        for name, (reports, canceller, fields) in VARIANTS.items():
            if args.variants and name not in args.variants:
                continue
            print(f"running {name} ...", file=sys.stderr)
            variants[name] = run_variant(model, user, truth, texts, reports=reports, canceller=canceller,
                                         fields=fields, level_dbfs=args.echo_dbfs, realtime=not args.fast,
                                         max_new_tokens=args.max_new_tokens, speak=speak, seed=args.seed)
    result = {"machine": machine(), "model": args.model, "questions": len(truth), "gap_s": args.gap_s,
              "echo_dbfs": args.echo_dbfs, "realtime": not args.fast, "variants": variants}
    write_results(out, "echo", result, markdown(result), as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
