"""The embedded default end to end, on the real offline backbones (converted once, then cached).

Speech comes from two synthesizers (espeak-ng, flite), several voices, rates and pitches,
written at 22.05/44.1/48 kHz, mono and stereo, some with added noise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import speak
from desta_edge import DestaModel
from desta_edge.runtime.model import NO_SPEECH_TRANSCRIPT
from desta_edge.training.evaluate import score_answer
from desta_edge.training.metrics import word_error_rate

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "How many days are there in a week?",
    "Please turn on the lights in the kitchen.",
    "What time does the train leave tomorrow morning?",
    "Set a timer for ten minutes.",
    "How do I make a cup of green tea?",
]
# (synthesizer, voice, rate, pitch, output rate, channels, noise SNR dB or None)
VOICES = [
    ("espeak", "en-us", 150, 50, 22050, 1, None),
    ("espeak", "en-gb+m3", 140, 40, 44100, 2, None),
    ("espeak", "en+f2", 165, 65, 22050, 1, 25.0),
    ("flite", "slt", 0, 0, 48000, 1, None),
    ("flite", "rms", 0, 0, 22050, 2, 20.0),
    ("flite", "awb", 0, 0, 44100, 1, None),
]


def synth(text: str, path: Path, engine: str, voice: str, rate: int, pitch: int, out_rate: int,
          channels: int, snr_db: float | None, seed: int) -> Path:
    raw = path.with_suffix(".raw.wav")
    if engine == "espeak":
        speak(text, raw, voice=voice, rate=rate, pitch=pitch)
    else:
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True)
    x, sr = sf.read(str(raw), dtype="float32")
    import soxr

    x = soxr.resample(x, sr, out_rate)
    if snr_db is not None:
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(x.shape).astype(np.float32)
        noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
        x = x + noise
    if channels == 2:
        x = np.stack([x, 0.8 * x], axis=1)
    sf.write(str(path), x, out_rate)
    return path


@pytest.fixture(scope="module")
def tiny() -> DestaModel:
    return DestaModel.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> list[tuple[str, Path]]:
    d = tmp_path_factory.mktemp("spoken")
    clips = []
    for v, (engine, voice, rate, pitch, out_rate, ch, snr) in enumerate(VOICES):
        for q, text in enumerate(QUESTIONS):
            if (q + v) % 2:  # half the grid: every voice, every question, 18 clips
                continue
            clips.append((text, synth(text, d / f"{v}_{q}.wav", engine, voice, rate, pitch, out_rate, ch, snr, seed=q)))
    return clips


def test_transcripts_are_accurate_across_voices(tiny, spoken):
    pairs = []
    for text, path in spoken:
        out = tiny.generate([{"role": "user", "content": "<|AUDIO|>", "audios": [{"audio": str(path), "text": None}]}],
                            max_new_tokens=1)
        pairs.append((text, out.audios[0][1]))
    wer = word_error_rate(pairs)
    print(f"WER over {len(pairs)} clips: {wer:.3f}")
    assert wer <= 0.15, pairs


def test_spoken_question_gets_the_answer(tiny, tmp_path):
    path = synth("What is the capital of France?", tmp_path / "q.wav", "flite", "slt", 0, 0, 22050, 1, None, 0)
    out = tiny.generate([
        {"role": "system", "content": "You are a helpful voice assistant. Answer briefly."},
        {"role": "user", "content": "<|AUDIO|>\nAnswer the question in the audio.", "audios": [{"audio": str(path), "text": None}]},
    ], max_new_tokens=32)
    assert "paris" in out.text[0].lower(), out


def test_text_only_equals_smollm2(tiny):
    llm, tok = tiny.backend.llm_model, tiny.tokenizer
    conv = [{"role": "user", "content": "Give me two words that rhyme with cat."}]
    got = tiny.generate(conv, max_new_tokens=24).generated_ids[0]
    ids = torch.tensor([tok.apply_chat_template(conv, add_generation_prompt=True)])
    ref = llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    ref = ref[: next((i for i, t in enumerate(ref) if t in tiny.eos_ids), len(ref))]
    assert got == ref and len(got) > 3


def test_noise_only_clip_gets_an_empty_transcript(tiny):
    noise = (0.003 * np.random.default_rng(0).standard_normal(16000 * 2)).astype(np.float32)
    out = tiny.generate([{"role": "user", "content": "<|AUDIO|> What do you hear?",
                          "audios": [{"audio": (noise, 16000), "text": None}]}], max_new_tokens=8)
    assert out.audios[0][1] == NO_SPEECH_TRANSCRIPT and out.timings_ms["asr"] == 0


@pytest.mark.parametrize("engine, voice, pitch, gender", [("espeak", "en-us+f2", 70, "Female"),
                                                        ("flite", "slt", 0, "Female"),
                                                        ("espeak", "en-gb+m3", 40, "Male"),
                                                        ("flite", "rms", 0, "Male")])
def test_shipped_adapter_hears_the_speakers_gender(tiny, tmp_path, engine, voice, pitch, gender):
    """The adapter conveys what the transcript cannot: the same words, asked of voices of both genders."""
    assert tiny.audio_features and tiny.connector is not None  # the shipped adapter is the preset's default
    path = synth("Could you tell me the way to the station?", tmp_path / "g.wav", engine, voice, 150, pitch,
                 16000, 1, None, 0)
    conv = [{"role": "user", "content": "<|AUDIO|>\nIs the speaker male or female? Answer with one word.",
             "audios": [{"audio": str(path), "text": None}]}]
    answer = tiny.generate(conv, max_new_tokens=8).text[0]
    assert score_answer("gender", answer) == gender, answer  # the eval's scorer: names this label and no other


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "desta_edge", *args], capture_output=True, text=True, timeout=600)


def test_cli_ask_json_and_stdin(tmp_path):
    path = synth("What is the capital of France?", tmp_path / "q.wav", "espeak", "en-us", 150, 50, 22050, 1, None, 0)
    r = run_cli("ask", str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert word_error_rate([("What is the capital of France?", out["transcript"])]) <= 0.2
    assert "paris" in out["answer"].lower()
    assert set(out["timings_ms"]) == {"load", "features", "encoder", "asr", "prefill", "first_token", "total"}
    assert "no trained adapter" not in r.stderr  # the shipped adapter (models/desta-edge-tiny) is the default
    # `ask -`: the bytes of an audio file piped in (e.g. from a recorder), for a person to read
    example = Path(__file__).resolve().parents[1] / "examples" / "what_is_the_capital_of_france.wav"
    human = subprocess.run([sys.executable, "-m", "desta_edge", "ask", "-", "--prompt", "Repeat the question.",
                            "--max-new-tokens", "20"], input=example.read_bytes(), capture_output=True, timeout=600)
    err = human.stderr.decode()
    assert human.returncode == 0 and "heard: " in err and "france" in err.lower() and human.stdout.strip(), err[-2000:]


def test_models_command_lists_ready_backbones():
    r = run_cli("models", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [p["name"] for p in data["presets"]] == ["tiny"]
    assert all(b["ready"] for b in data["backbones"])


def test_prefix_cache_keeps_real_answers_identical(tiny, tmp_path):
    path = synth("How many days are there in a week?", tmp_path / "w.wav", "flite", "awb", 0, 0, 22050, 1, None, 0)
    msgs = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "<|AUDIO|>\nReply to the speaker.", "audios": [{"audio": str(path), "text": None}]}]
    try:
        tiny.use_prefix_cache = False
        plain = tiny.generate(msgs, max_new_tokens=24).generated_ids
        tiny.use_prefix_cache = True
        assert [tiny.generate(msgs, max_new_tokens=24).generated_ids for _ in range(2)] == [plain, plain]
    finally:
        tiny.use_prefix_cache = True


def test_end_of_turn_detector_on_smollm2(tiny):
    """SmolLM2 itself tells finished requests from ones cut mid-phrase (text in, no training)."""
    from desta_edge.runtime.prompt import ASSISTANT_SYSTEM
    from desta_edge.runtime.turn import TurnDetector, TurnOptions

    turn = TurnDetector(tiny, TurnOptions(system=ASSISTANT_SYSTEM))
    finished = ["What is the capital of France?", "Tell me a joke about cats.", "Why is the sky blue",
                "How far is the moon from the earth?", "Who painted the Mona Lisa"]
    cut = ["What is the capital of", "Set a timer for", "Can you recommend a good book about",
           "Remind me to call my mother at", "What time does the"]
    assert all(turn.complete(t) for t in finished), [(t, turn.probability(t)) for t in finished]
    assert not any(turn.complete(t) for t in cut), [(t, turn.probability(t)) for t in cut]
    assert turn.probability("What is the capital of France?") == turn.probability("What is the capital of France")
