"""Evaluation on a corpus's held-out split: paralinguistic QA, language preservation, spoken QA, WER.

Design choices:
- Paralinguistic QA: one fixed closed question per attribute, asked of every held-out clip that has
  that label (speech attributes of speech clips, the sound type of non-speech clips) ("Is the speaker male or female? Answer with one word." ...). Scoring (`score_answer`):
  the answer is normalized (lower case, punctuation removed, `metrics.normalize_words`), and the
  predicted label is the one label whose keywords (`LABEL_WORDS`) it names, not counting negated
  words ("not a man", "no background noise"). An answer naming no label is wrong, and so is one
  naming several: "low, normal or high" echoes the question's options (a first trained model did
  exactly that, and first-named scoring counted it as "Low" for every clip). Noise levels are scored as clean vs noisy (any added noise). Accuracy per attribute,
  the average over attributes, and the majority-label rate (what always answering the most common
  label would score) for reference.
- Both columns use the same loaded backbones: the model, then the transcript-only ablation (the
  same object with `audio_features=False`, exactly what `from_pretrained(x, audio_features=False)`
  gives). A model without a trained connector reports only the ablation.
- A third column, `description_in_text`, asks the same question with no audio at all: the clip's
  seed description goes in as text, framed as `datagen` frames it. That is the information DeSTA
  trains the connector to carry, answered by the model's own LLM, so it is what a connector that
  conveyed the description perfectly could reach through this backbone.
- Every clip is transcribed once by the model's own ASR (a one-token `generate`, the runtime's
  path), and that transcript is passed as the clip's `text` afterwards, so the questions do not
  repeat ASR; the answers are what the runtime gives a user whose clip transcribes that way.
  Its audio embeddings are computed once too (`DestaModel.audio_embedding_cache`) and reused for
  every later question about it.
- Language preservation: fixed text-only conversations; the model's greedy token ids must equal the
  backbone LLM's own `generate` on the chat template's ids.
- Spoken QA: the corpus's `spoken_qa.jsonl` questions asked by voice (the assistant's default turn,
  `ASSISTANT_SYSTEM` + `ASSISTANT_PROMPT`, as `desta-edge ask`) and the same questions asked in text
  to the backbone; an answer is correct if the expected answer's words appear in it, in order.
  A model with a connector also answers the spoken questions without its audio embeddings
  (`voice_transcript_only`: what the adapter changes), and every model answers them once more with
  the true transcript handed in (`voice_true_transcript`: what ASR errors cost). All three, and the
  WER of the questions, are also reported per synthesizer of the question's voice (`by_synthesizer`).
- Each attribute also records how often each label was predicted per variant (`predicted`): an
  adapter that answers the same label for every clip shows up there at once.
- WER of the model's transcripts on the held-out speech clips (`metrics.word_error_rate`).
- A corpus of real recordings (`recordings.py`) has no spoken questions, and clips without a
  reference transcript (described in the text column with the model's own transcript, and left
  out of WER). Its clips are the recordings and their quiet / loud / noisy copies; accuracy is
  also reported per kind of copy (`by_clip_variant`).
- Speech attributes are also reported by the length of what was said (`by_length`: one or two
  words, three or more, no reference transcript), where a corpus has more than one of these:
  a single word gives the connector far less voice than a sentence.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM

from .corpus import SPEECH, SPOKEN_QA, read_metadata
from .datagen import SYSTEM_PROMPT, USER_TEMPLATE
from .descriptions import seed_description
from .metrics import normalize_words, word_error_rate

logger = logging.getLogger(__name__)

# attribute -> (metadata key, question asked with the clip)
QUESTIONS: dict[str, tuple[str, str]] = {
    "gender": ("gender", "Is the speaker male or female? Answer with one word."),
    "pitch": ("pitch", "Is the speaker's voice low, normal or high in pitch? Answer with one word."),
    "speed": ("speed", "Is the speaker talking slowly, at a normal pace, or fast? Answer with one word."),
    "volume": ("volume", "Is the speech quiet, normal or loud? Answer with one word."),
    "noise": ("noise", "Is the recording clean or noisy? Answer with one word."),
    "sound": ("sound", "What kind of sound is this: a tone, beep, chirp, clicks, noise, hum, chord or silence? "
                       "Answer with one or two words."),
}
# attribute -> label -> words (after normalize_words) that name the label in an answer
LABEL_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "gender": {"Male": ("male", "man", "men", "masculine", "he"), "Female": ("female", "woman", "women", "feminine", "she")},
    "pitch": {"Low": ("low", "deep", "lower"), "Normal": ("normal", "medium", "average", "moderate"),
              "High": ("high", "higher", "squeaky")},
    "speed": {"Slow": ("slow", "slowly", "slower"), "Normal": ("normal", "moderate", "medium", "average"),
              "Fast": ("fast", "quick", "quickly", "rapid", "rapidly", "faster")},
    "volume": {"Quiet": ("quiet", "quietly", "soft", "softly", "whisper", "whispering"),
               "Normal": ("normal", "moderate", "medium", "average"), "Loud": ("loud", "loudly", "shouting")},
    "noise": {"Clean": ("clean", "clear"), "Noisy": ("noisy", "noise", "background")},
    "sound": {"tone": ("tone",), "beep": ("beep", "beeping", "beeps"), "chirp": ("chirp", "chirping", "sweep"),
              "clicks": ("click", "clicks", "clicking"), "white noise": ("white",), "pink noise": ("pink",),
              "brown noise": ("brown",), "hum": ("hum", "humming", "buzz"), "chord": ("chord", "chords"),
              "silence": ("silence", "silent", "nothing")},
}
# an answer naming several labels ("low, normal or high") echoes the question and is scored wrong
AMBIGUOUS = "several"
# a label word with one of these among the NEGATION_REACH words before it is not counted
NEGATIONS = frozenset({"no", "not", "without", "never", "neither", "nor", "isn't", "aren't", "wasn't", "doesn't",
                       "don't", "hardly"})
NEGATION_REACH = 2
DESCRIPTION_IN_TEXT = "description_in_text"  # the variant that reads the seed description as text
ANSWERS = "answers.jsonl"  # write_report: every attribute answer, one JSON object per line
QA_ANSWERS = "qa_answers.jsonl"  # write_report: every spoken question's answers, one JSON object per line
NOISY_LABELS = ("Slightly noisy", "Noisy", "Very noisy")  # corpus noise labels scored as "Noisy"
SHORT_MAX_WORDS = 2  # by_length: an utterance of at most this many words is "1-2 words"
# fixed text-only conversations for the language-preservation check
TEXT_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "system", "content": ASSISTANT_SYSTEM}, {"role": "user", "content": "How many days are in a week?"}],
    [{"role": "user", "content": "Give me two tips for sleeping well."}],
]


@dataclass(frozen=True)
class EvalOptions:
    corpus_dir: Path  # a corpus from `desta-edge corpus` (metadata.jsonl, audio/, spoken_qa.jsonl)
    split: str = "test"  # held-out split to evaluate
    limit: int | None = None  # at most this many clips (and spoken questions)
    batch_size: int = 8  # conversations per generate call
    label_max_new_tokens: int = 12  # answers to the one-word questions
    qa_max_new_tokens: int = 48  # answers to spoken / text questions
    text_max_new_tokens: int = 32  # language-preservation generations
    progress: bool = False  # show progress bars


# ---------------------------------------------------------------------- scoring


def expected_label(attribute: str, value: str) -> str:
    """The label a clip's metadata value is scored against (noise levels -> Clean / Noisy)."""
    if attribute == "noise":
        return "Noisy" if value in NOISY_LABELS else "Clean"
    return value


def labelled(attribute: str, clip: dict[str, Any]) -> bool:
    """Whether `clip` is asked about `attribute`: the sound type of sound clips, the rest of speech clips."""
    return bool(clip.get(QUESTIONS[attribute][0])) and (attribute == "sound") == (clip.get("kind") == "sound")


def length_group(clip: dict[str, Any]) -> str | None:
    """The `by_length` group of a speech clip by its reference transcript; None for a sound."""
    if clip.get("kind") != SPEECH:
        return None
    if not clip.get("transcript"):
        return "no transcript"
    return "1-2 words" if len(normalize_words(clip["transcript"])) <= SHORT_MAX_WORDS else "3+ words"


# a breakdown of each attribute's accuracy: result key -> (heading of its table, the group of a clip)
BREAKDOWNS: dict[str, tuple[str, Callable[[dict[str, Any]], str | None]]] = {
    "by_clip_variant": ("by clip variant", lambda c: c.get("variant")),
    "by_length": ("by the length of what was said", length_group),
}


def named_labels(attribute: str, answer: str) -> list[str]:
    """The distinct labels `answer` names, in order, skipping negated words ("not a man", "no noise")."""
    words = normalize_words(answer)
    named: list[str] = []
    for i, w in enumerate(words):
        if NEGATIONS.intersection(words[max(0, i - NEGATION_REACH):i]):
            continue
        for label, keys in LABEL_WORDS[attribute].items():
            if w in keys and label not in named:
                named.append(label)
    return named


def score_answer(attribute: str, answer: str) -> str | None:
    """The one label `answer` names; None if it names none, AMBIGUOUS if it names several."""
    named = named_labels(attribute, answer)
    if len(named) > 1:
        return AMBIGUOUS
    return named[0] if named else None


def answer_correct(expected: str, answer: str) -> bool:
    """True if the expected answer's words appear in `answer`, contiguous and in order."""
    want, got = normalize_words(expected), normalize_words(answer)
    if not want:
        raise ValueError(f"expected answer {expected!r} has no words")
    return any(got[i : i + len(want)] == want for i in range(len(got) - len(want) + 1))


# ---------------------------------------------------------------------- running the model


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@contextmanager
def transcript_only(model) -> Iterator[None]:
    """The transcript-only ablation of the same backbones, for the duration of the block."""
    saved = model.audio_features
    model.audio_features = False
    try:
        yield
    finally:
        model.audio_features = saved


def transcribe(model, paths: list[str], options: EvalOptions) -> list[str]:
    """Each clip's transcript by the runtime's own path (VAD, then one-pass ASR)."""
    out: list[str] = []
    with transcript_only(model):
        for chunk in tqdm(list(_batches(paths, options.batch_size)), desc="asr", disable=not options.progress):
            convs = [[{"role": "user", "content": model.config.audio_locator, "audios": [{"audio": p}]}] for p in chunk]
            out += [text for _, text in model.generate(convs, max_new_tokens=1).audios]
    return out


def _answers(model, convs: list, max_new_tokens: int, options: EvalOptions, desc: str) -> list[str]:
    """Greedy answers to `convs`, generated in batches of `options.batch_size`."""
    out: list[str] = []
    for chunk in tqdm(list(_batches(convs, options.batch_size)), desc=desc, disable=not options.progress):
        out += model.generate(chunk, max_new_tokens=max_new_tokens).text
    return out


def _audio_questions(model, items: list[tuple[str, str, str]]) -> list:
    """items: (audio path, transcript, question) -> one conversation each."""
    loc = model.config.audio_locator
    return [[{"role": "user", "content": f"{loc}\n{q}", "audios": [{"audio": p, "text": t}]}] for p, t, q in items]


def _described_questions(clips: list[dict[str, Any]], question: str, transcripts: dict[str, str]) -> list:
    """The question about each clip with its seed description as text, framed as datagen frames it.

    A speech clip with no reference transcript (a real recording) is described with the model's own.
    """
    system = [{"role": "system", "content": SYSTEM_PROMPT}] if SYSTEM_PROMPT else []
    described = [c if c.get("kind") != SPEECH or c.get("transcript") else {**c, "transcript": transcripts[c["id"]]}
                 for c in clips]
    return [system + [{"role": "user",
                       "content": USER_TEMPLATE.format(description=seed_description(c), prompt=question)}]
            for c in described]


def paralinguistic(model, clips: list[dict[str, Any]], transcripts: dict[str, str], options: EvalOptions,
                   root: Path) -> dict[str, Any]:
    """Accuracy per attribute: the model, its transcript-only ablation, and the description read as text."""
    with_connector = model.audio_features and model.has_connector
    variants = (["model"] if with_connector else []) + ["transcript_only", DESCRIPTION_IN_TEXT]
    result: dict[str, Any] = {"attributes": {}, "variants": variants, "answers": []}
    for attr, (key, question) in QUESTIONS.items():
        rows = [c for c in clips if labelled(attr, c)]
        if not rows:
            continue
        expected = [expected_label(attr, c[key]) for c in rows]
        items = [(str(root / c["audio"]), transcripts[c["id"]], question) for c in rows]
        groups = {key: [group(c) for c in rows] for key, (_, group) in BREAKDOWNS.items()}
        groups = {key: g for key, g in groups.items() if len(set(g) - {None}) > 1}  # only where it divides
        entry: dict[str, Any] = {"n": len(rows), "majority": Counter(expected).most_common(1)[0][1] / len(rows),
                                 "examples": []}
        for variant in variants:
            if variant == DESCRIPTION_IN_TEXT:
                convs = _described_questions(rows, question, transcripts)
            else:
                convs = _audio_questions(model, items)
            with transcript_only(model) if variant == "transcript_only" else _no_context():
                answers = _answers(model, convs, options.label_max_new_tokens, options, f"{attr} ({variant})")
            predicted = [score_answer(attr, a) for a in answers]
            entry[variant] = sum(p == e for p, e in zip(predicted, expected)) / len(rows)
            entry.setdefault("predicted", {})[variant] = dict(Counter(str(p) for p in predicted).most_common())
            for key, of_clip in groups.items():
                entry.setdefault(key, {})[variant] = {
                    g: _mean([p == e for p, e, h in zip(predicted, expected, of_clip) if h == g])
                    for g in sorted(set(of_clip) - {None})}
            entry["examples"].append({"variant": variant, "id": rows[0]["id"], "expected": expected[0],
                                      "answer": answers[0], "predicted": predicted[0]})
            result["answers"] += [{"id": c["id"], "attribute": attr, "variant": variant, "expected": e, "predicted": p,
                                   "answer": a, "transcript": transcripts[c["id"]]}
                                  for c, e, p, a in zip(rows, expected, predicted, answers)]
        result["attributes"][attr] = entry
    for variant in variants + ["majority"]:
        accs = [e[variant] for e in result["attributes"].values()]
        result[f"average_{variant}"] = sum(accs) / len(accs) if accs else None
    return result


def _mean(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


@contextmanager
def _no_context() -> Iterator[None]:
    yield


def reference_llm(model):
    """The PyTorch backbone that text-only answers are compared with.

    A torch model is its own reference. An ONNX export has no torch LLM: its reference is the
    PyTorch model it was exported from (the manifest's `source`), so the comparison also measures
    what export and quantization change in text-only answers.
    """
    llm = getattr(model.backend, "llm_model", None)
    if llm is not None:
        return llm
    source = getattr(model.backend, "manifest", {}).get("source")
    if not source:
        raise ValueError(f"{model.name}: no PyTorch LLM and no export source to compare text-only answers with")
    from desta_edge.runtime.model import DestaModel

    logger.info("loading %s (PyTorch) as the language-preservation reference", source)
    return DestaModel.from_pretrained(source, device="cpu", dtype=torch.float32, audio_features=False,
                                      progress=False).backend.llm_model


def language_preservation(model, options: EvalOptions) -> dict[str, Any]:
    """Text-only conversations: the model's greedy ids vs the PyTorch backbone's own `generate`."""
    llm, tok = reference_llm(model), model.tokenizer
    device = next(llm.parameters()).device
    ours = model.generate(TEXT_CONVERSATIONS, max_new_tokens=options.text_max_new_tokens).generated_ids
    same = 0
    for conv, got in zip(TEXT_CONVERSATIONS, ours):
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            gen = llm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=options.text_max_new_tokens, pad_token_id=model.pad_id)
        ref = [t for t in gen[0, ids.shape[1]:].tolist()]
        cut = next((i for i, t in enumerate(ref) if t in model.eos_ids), len(ref))
        same += ref[:cut] == got
    return {"n": len(TEXT_CONVERSATIONS), "identical": same, "rate": same / len(TEXT_CONVERSATIONS)}


def spoken_qa(model, rows: list[dict[str, Any]], transcripts: dict[str, str], options: EvalOptions,
              root: Path, synthesizers: dict[str, str] | None = None) -> dict[str, Any]:
    """Held-out questions by voice vs the same questions in text to the backbone.

    Also by voice with the true transcript handed in (ASR skipped, the audio still encoded), which
    puts a number on what transcription errors cost; and all three per synthesizer of the question's
    voice (`synthesizers`: clip id -> engine), with the WER of its transcripts.
    """
    if not rows:
        return {"n": 0}
    loc = model.config.audio_locator

    def voice_convs(text_of: Callable[[dict[str, Any]], str | None]) -> list:
        return [[{"role": "system", "content": ASSISTANT_SYSTEM},
                 {"role": "user", "content": f"{loc}\n{ASSISTANT_PROMPT}",
                  "audios": [{"audio": str(root / r["audio"]), "text": text_of(r)}]}] for r in rows]

    text_convs = [[{"role": "system", "content": ASSISTANT_SYSTEM}, {"role": "user", "content": r["question"]}]
                  for r in rows]

    def answers(convs: list, desc: str) -> list[str]:
        return _answers(model, convs, options.qa_max_new_tokens, options, desc)

    def correct(got: list[str]) -> list[bool]:
        return [answer_correct(r["answer"], a) for r, a in zip(rows, got)]

    by_asr = voice_convs(lambda r: transcripts.get(r["id"]))
    got = {"voice": answers(by_asr, "spoken qa"), "text": answers(text_convs, "text qa"),
           "voice_true_transcript": answers(voice_convs(lambda r: r["question"]), "spoken qa (true transcript)")}
    ok = {k: correct(v) for k, v in got.items()}
    kept = sum(v and t for v, t in zip(ok["voice"], ok["text"]))
    result = {"n": len(rows), **{k: sum(v) / len(rows) for k, v in ok.items()},
              "voice_given_text_correct": kept / sum(ok["text"]) if any(ok["text"]) else None,
              "examples": [{"question": rows[0]["question"], "answer": rows[0]["answer"], "voice": got["voice"][0],
                            "text": got["text"][0]}]}
    if model.audio_features and model.has_connector:
        # the same spoken questions without the audio embeddings: what the adapter changes
        with transcript_only(model):
            result["voice_transcript_only"] = sum(correct(answers(by_asr, "spoken qa (transcript-only)"))) / len(rows)
    engine = [(synthesizers or {}).get(r["id"]) or "unknown" for r in rows]
    result["by_synthesizer"] = {}
    for e in sorted(set(engine)):
        idx = [i for i, x in enumerate(engine) if x == e]
        pairs = [(rows[i]["question"], transcripts.get(rows[i]["id"]) or "") for i in idx]
        result["by_synthesizer"][e] = {"n": len(idx), **{k: sum(v[i] for i in idx) / len(idx) for k, v in ok.items()},
                                       "wer": word_error_rate(pairs)}
    result["answers"] = [{"id": r["id"], "synthesizer": engine[i], "question": r["question"], "expected": r["answer"],
                          "transcript": transcripts.get(r["id"]), **{k: got[k][i] for k in got},
                          **{f"{k}_correct": ok[k][i] for k in ok}} for i, r in enumerate(rows)]
    return result


def evaluate(model, options: EvalOptions) -> dict[str, Any]:
    """All four evaluations on `options.split` of the corpus; returns a JSON-ready dict."""
    t0 = time.perf_counter()
    root = Path(options.corpus_dir)
    meta = list(read_metadata(root))
    clips = [c for c in meta if c["split"] == options.split]
    if options.limit is not None:
        clips = clips[: options.limit]
    if not clips:
        raise ValueError(f"{root}: no clips in split {options.split!r}")
    qa_path = root / SPOKEN_QA
    qa_rows = [json.loads(x) for x in qa_path.read_text().splitlines() if x.strip()] if qa_path.exists() else []
    if options.limit is not None:
        qa_rows = qa_rows[: options.limit]
    ids = [c["id"] for c in clips] + [r["id"] for r in qa_rows if r["id"] not in {c["id"] for c in clips}]
    paths = {c["id"]: c["audio"] for c in clips} | {r["id"]: r["audio"] for r in qa_rows}
    transcripts = dict(zip(ids, transcribe(model, [str(root / paths[i]) for i in ids], options)))
    speech = [c for c in clips if c.get("transcript")]
    wer = word_error_rate([(c["transcript"], transcripts[c["id"]]) for c in speech]) if speech else None
    with model.audio_embedding_cache():  # each clip is asked several questions: encode it once
        result = {
            "model": model.name, "backend": model.backend_name, "split": options.split, "clips": len(clips),
            "encoder_padding_s": model.encoder_padding_s,
            "options": _jsonable(asdict(options)),
            "paralinguistic": paralinguistic(model, clips, transcripts, options, root),
            "language_preservation": language_preservation(model, options),
            "spoken_qa": spoken_qa(model, qa_rows, transcripts, options, root,
                                   {c["id"]: c.get("synthesizer") for c in meta}),
            "wer": {"n": len(speech), "wer": wer},
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


# ---------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown_table(result: dict[str, Any]) -> str:
    """The results as markdown: paralinguistic accuracy side by side, then the other checks."""
    para = result["paralinguistic"]
    variants = para["variants"]
    head = ["attribute", "n", *[v.replace("_", "-") + " %" for v in variants], "majority %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for attr, e in para["attributes"].items():
        lines.append("| " + " | ".join([attr, str(e["n"]), *[_pct(e[v]) for v in variants], _pct(e["majority"])]) + " |")
    lines.append("| **average** | | " + " | ".join(f"**{_pct(para[f'average_{v}'])}**" for v in variants)
                 + f" | {_pct(para['average_majority'])} |")
    for key in BREAKDOWNS:
        lines += _breakdown_table(para, key)
    lp, qa, wer = result["language_preservation"], result["spoken_qa"], result["wer"]
    lines += ["", "| check | value |", "|---|---|",
              f"| model, backend, split | {result['model']}, {result.get('backend', 'torch')}, {result['split']} |",
              *([f"| encoder window | the clip + {result['encoder_padding_s']:g} s of silence |"]
                if result.get("encoder_padding_s") else []),
              f"| language preservation (text-only ids identical to the backbone) | {lp['identical']}/{lp['n']} |"]
    if qa.get("n"):
        lines += [f"| spoken QA accuracy, by voice (n={qa['n']}) | {_pct(qa['voice'])} % |",
                  f"| spoken QA accuracy, same questions in text to the backbone | {_pct(qa['text'])} % |",
                  f"| by voice, of those the backbone answers in text | {_pct(qa['voice_given_text_correct'])} % |"]
        if "voice_transcript_only" in qa:
            lines.append(f"| spoken QA accuracy, by voice, transcript-only ablation | {_pct(qa['voice_transcript_only'])} % |")
        if "voice_true_transcript" in qa:
            lines.append(f"| spoken QA accuracy, by voice with the true transcript (ASR skipped) | "
                         f"{_pct(qa['voice_true_transcript'])} % |")
    lines.append(f"| transcript WER (n={wer['n']}) | {_pct(wer['wer'])} % |")
    if qa.get("by_synthesizer"):
        lines += ["", "Spoken QA by the synthesizer of the question's voice:", "",
                  "| synthesizer | n | by voice % | true transcript % | in text % | WER of the questions % |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {e} | {g['n']} | {_pct(g['voice'])} | {_pct(g['voice_true_transcript'])} | {_pct(g['text'])} "
                  f"| {_pct(g['wer'])} |" for e, g in qa["by_synthesizer"].items()]
    return "\n".join(lines) + "\n"


def _breakdown_table(para: dict[str, Any], key: str) -> list[str]:
    """The model's accuracy per attribute in each group of a breakdown (BREAKDOWNS), where there is one."""
    attrs = {a: e[key] for a, e in para["attributes"].items() if key in e}
    if not attrs:
        return []
    variant = para["variants"][0]  # the model, or the ablation if there is no connector
    groups = sorted({g for per in attrs.values() for g in per[variant]})
    lines = ["", f"{variant.replace('_', '-')} % {BREAKDOWNS[key][0]}:", "",
             "| attribute | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 1)]
    for a, per in attrs.items():
        lines.append(f"| {a} | " + " | ".join(_pct(per[variant].get(g)) for g in groups) + " |")
    return lines


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the per-clip and per-question answers (those go to answers.jsonl and qa_answers.jsonl)."""
    para = {k: v for k, v in result["paralinguistic"].items() if k != "answers"}
    qa = {k: v for k, v in result["spoken_qa"].items() if k != "answers"}
    return {**result, "paralinguistic": para, "spoken_qa": qa}


def write_report(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """eval.json (the summary), eval.md (its tables), answers.jsonl (every attribute answer, one per line:
    clip id, attribute, variant, expected and predicted label, the answer and the clip's transcript) and
    qa_answers.jsonl (per spoken question: its transcript, the answers and whether each is correct;
    empty for a corpus without spoken questions)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / "eval.json", out_dir / "eval.md"
    j.write_text(json.dumps(summary(result), indent=2, ensure_ascii=False) + "\n")
    m.write_text(markdown_table(result))
    for name, rows in ((ANSWERS, result["paralinguistic"].get("answers", [])),
                       (QA_ANSWERS, result["spoken_qa"].get("answers", []))):
        with open(out_dir / name, "w") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return j, m
