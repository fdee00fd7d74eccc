"""Self-generated alignment data: the backbone LLM answers each prompt from a seed description.

For every corpus clip: build its seed description (descriptions.py), sample a prompt
(instructions.py), and ask the *backbone LLM itself*, in text, to respond to the prompt as if it
had heard the audio the description describes. The answer becomes the training target for
(audio, prompt): records in the DeSTA-AQA5M schema (DESIGN.md §1).

Design choices:
- Generation is a function `GenerateFn(conversations, seed=None) -> answers` (greedy when `seed`
  is None, sampled with that seed otherwise), injected so tests use a fake one. `transformers_generator` uses the project's own `DestaModel.generate` on text-only
  conversations (exactly the backbone's greedy tokens, batches left-padded);
  `vllm_generator` is for large GPU runs.
- The framing is short (SmolLM2-135M is small): one user message presents the description as
  "Audio: ..." and the prompt as the question, asking for one or two sentences. In a trial on
  10 clips this gave on-topic short answers, where a longer system + user framing made the
  135M model echo the description or ramble to the token limit (and cost 5x the time).
- The `assistant` category (instructions.py) is framed as the runtime frames a spoken question:
  the backbone answers the transcript in text under `ASSISTANT_SYSTEM`, and the record asks
  `ASSISTANT_PROMPT` about the audio under the same system message.
- Retries (`retries`): an answer the filter sets aside (`set_aside`) is asked again,
  sampled (temperature 1, top-p 0.95, a seed from (seed, attempt, batch)), up to `retries` times,
  before it is set aside. Greedy answers lean to one label (the 135M backbone says "man" far more
  than "woman": a run kept 572 male-clip gender answers and 254 female), so without retries the
  kept data teaches that lean; retrying gives every label its chance.
- Candidates (`candidates`, default 1): an attribute question is also asked `candidates - 1`
  times sampled (seeds from (seed, k, batch)), and the shortest answer that passes the filter is
  kept, the greedy one first among equals. Every candidate is the backbone's own text; the choice
  only prefers the one that answers the question and stops. SmolLM2-135M told to "answer with one
  word" still pads most greedy answers with invented context ("The audio is from a podcast
  discussing a recent event, and the speaker is female."), and those words, which no audio can
  predict, drown the label word in the training loss. Measured (training/RUNS.md, run 7): it
  raises the kept share (258 of 300 gender prompts with 4), but the wording still varies too much
  for a connector to learn gender from a few hundred clips.
- Echoes (`echoes_description`): an answer that copies the description's fields ("... (Gender:
  Male, Pitch: High, ...") or its timestamp is set aside with the off-label ones: 5.6% of a
  constrained run's kept answers were such echoes, and an adapter trained on them learns to recite
  a description it never saw.
- Constrained decoding (`constrain_labels`, on by default): when a prompt asks about one attribute
  (gender, pitch, speed, volume, noise, sound), the words that name that attribute's *other*
  labels are banned from the answer (`LABEL_WORDS`, as single tokens of the LLM's vocabulary).
  The backbone still writes the whole answer in its own words; it just cannot contradict the
  metadata it was given. SmolLM2-135M needs this: given "Gender: Female" in the description it
  answered "The speaker is male." for nearly every clip (51% right on 88 test clips, 42–48% on 40
  train clips under five framings tried), and sampled retries that did name "female" were often
  word salad ("E-NAME: Alaskan Male APPROPRIATE: ..."). A backbone that reads its description is
  never constrained in effect. The label filter still runs after it (a ban cannot stop a word
  spelled over several tokens, or an answer naming no label).
- Label answers (`answers="label"`, not the paper's method): an attribute question (gender, pitch,
  speed, volume, noise, sound) gets its clip's label in one fixed sentence ("The speaker is
  female.", `label_answer`) instead of the backbone's text; the other categories are still
  answered by the backbone. This exists because SmolLM2-135M cannot write usable attribute
  targets: it ignores the metadata it is given in text, and even its right answers vary so much in
  wording that a connector trained on them for a CPU-sized run does not learn the attribute
  (training/RUNS.md, runs 4-7: 52.5% forced-choice gender from its own answers, 97.5% from the
  same clips with the label in a fixed sentence). A backbone that reads its metadata (the paper's
  Llama-3.1-8B) needs no such help. An adapter trained on label answers must say so in its card.
- Deterministic and resumable: the prompt of a record comes from an RNG seeded by (seed, id),
  so it does not depend on batch order or on where a previous run stopped. On start, existing
  ids are read and skipped; a truncated last line (a crash mid-write) is cut off; each batch is
  appended, flushed and fsynced. A sidecar `<out>.settings.json` records the generation
  settings, and resuming with different settings is an error rather than a mixed file.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from .corpus import read_metadata
from .descriptions import FIELD_NAMES, seed_description
from desta_edge.runtime.prompt import ASSISTANT_SYSTEM

from .instructions import ASSISTANT, all_categories, sample_prompt

logger = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
GenerateFn = Callable[..., list[str]]  # (conversations, seed: int | None = None, banned=None) -> answers

AUDIO_LOCATOR = "<|AUDIO|>"  # the runtime's default audio_locator (DestaConfig)
NO_SPEECH_TEXT = " "  # transcript given for clips without speech, as the reference does
DATASET_NAME = "desta-edge-synth"
SYSTEM_PROMPT: str | None = None  # none: SmolLM2-135M answered best with the backbone's own default
USER_TEMPLATE = "Audio: {description}\nQuestion: {prompt}\nAnswer in one or two sentences."
BACKENDS = ("transformers", "vllm")
# settings that change the content of records: resuming with any of them changed is an error
CONTENT_SETTINGS = ("model", "backend", "seed", "max_new_tokens", "prompts_per_clip", "system_prompt",
                    "user_template", "dataset", "filter_labels", "retries", "categories", "constrain_labels",
                    "candidates", "answers")
SAMPLING = {"temperature": 1.0, "top_p": 0.95}  # how retries and candidates sample
ANSWERS = ("backbone", "label")  # who writes the attribute answers (module notes)
# attribute -> the fixed sentence of a label answer, given the label's phrase
LABEL_SENTENCES = {"gender": "The speaker is {}.", "pitch": "The voice is {} in pitch.",
                   "speed": "The speaking speed is {}.", "volume": "The volume is {}.",
                   "noise": "The recording is {}.", "sound": "The sound is {}."}
# sound labels that need an article in a sentence ("The sound is a beep.")
COUNTABLE_SOUNDS = frozenset({"tone", "beep", "chirp", "hum", "chord"})


@dataclass(frozen=True)
class DatagenOptions:
    corpus_dir: Path  # a corpus made by build_corpus (metadata.jsonl + audio/)
    out_file: Path  # JSONL to create or resume
    limit: int | None = None  # at most this many records in the file (None = all clips)
    batch_size: int = 16  # conversations per generate call
    seed: int = 0  # seeds the prompt sampling
    model: str = "tiny"  # preset, checkpoint dir or hub id whose LLM writes the answers
    backend: str = "transformers"  # "transformers" or "vllm"
    device: str | None = None  # torch device for the transformers backend (None = default)
    max_new_tokens: int = 64  # cap on each answer
    prompts_per_clip: int = 1  # records per clip (ids get a -pK suffix when > 1)
    splits: tuple[str, ...] = ("train", "validation")  # corpus splits to cover
    dataset: str = DATASET_NAME  # the records' `dataset` field
    system_prompt: str | None = SYSTEM_PROMPT  # framing: system message (None = no system message)
    user_template: str = USER_TEMPLATE  # framing: user message with {description} and {prompt}
    filter_labels: bool = True  # set aside answers that contradict the clip's labels or echo the description
    retries: int = 0  # sampled re-asks of an answer the filter would set aside
    categories: tuple[str, ...] | None = None  # ask only prompts of these categories (None = all)
    constrain_labels: bool = True  # ban the other labels' words from an attribute answer (module notes)
    candidates: int = 1  # answers per attribute question (greedy + sampled); the shortest that passes is kept
    answers: str = "backbone"  # "label": attribute questions get their label in a fixed sentence (module notes)
    progress: bool = False  # show a progress bar


@dataclass
class DatagenResult:
    path: Path  # the JSONL file
    written: int  # records added by this run
    existing: int  # records already there (resumed), kept or set aside
    rejected: int  # answers of this run set aside by the filter (`set_aside`)
    total: int  # records the options ask for
    settings: dict[str, Any] = field(default_factory=dict)  # what the sidecar holds


@dataclass(frozen=True)
class Item:
    id: str
    clip: dict[str, Any]
    description: str
    category: str
    prompt: str

    @property
    def system(self) -> str | None:
        """The record's system message (only the runtime's spoken-question turn has one)."""
        return ASSISTANT_SYSTEM if self.category == ASSISTANT else None


def settings_path(out_file: Path) -> Path:
    return out_file.with_name(out_file.stem + ".settings.json")


def rejected_path(out_file: Path) -> Path:
    """Where answers that contradict their clip's labels go (kept for inspection, not for training)."""
    return out_file.with_name(out_file.stem + ".rejected.jsonl")


def off_label(item: "Item", response: str) -> bool:
    """True if the answer contradicts its clip's labels, or an attribute answer misses its label.

    The small backbone often answers from the wrong field of the description ("Is the voice
    high?" with Pitch: Normal -> "The voice is high-pitched.") or not at all ("Sounds like a
    snake."); in a 64-record trial a quarter of the attribute answers named a wrong label and
    many more named none. The self-generated answer is kept only when the metadata confirms it
    (rejection sampling on the labels):
    - an answer to an attribute question must name that attribute's label and no other. Answers
      naming several are option echoes ("A man or a woman is speaking."): 859 of the 3,446
      attribute answers a 16,000-prompt run kept under a first-label-named rule were echoes, and
      the adapter trained on them learned to echo;
    - any answer (descriptions, summaries, ...) that names a label of the clip's attributes must
      name the right one: the same run kept about 2,000 free-form answers like "a conversation
      between a female speaker and a male host" for a clip of one man, teaching the lean again.
    """
    from .evaluate import LABEL_WORDS, expected_label, labelled, named_labels

    for attr in LABEL_WORDS:
        if not labelled(attr, item.clip):
            continue  # not the clip's kind of label (a sound clip's gender, or its "noise": white noise)
        named, want = named_labels(attr, response), expected_label(attr, item.clip[attr])
        if named != [want] and (named or attr == item.category):
            return True
    return False


# a description field ("Gender: Male", "Speaking speed: Fast", ...) or its timestamp, copied into an answer
_ECHO = re.compile(rf"\b(?:{'|'.join(map(re.escape, FIELD_NAMES))})\s*:|\[\d\d:\d\d\s*-\s*\d\d:\d\d\]",
                   re.IGNORECASE)


def echoes_description(response: str) -> bool:
    """True if the answer copies the seed description's fields or timestamp instead of answering."""
    return _ECHO.search(response) is not None


def set_aside(item: "Item", response: str) -> bool:
    """The datagen filter: the answer contradicts the clip's labels or echoes its description."""
    return off_label(item, response) or echoes_description(response)


def label_answer(item: "Item") -> str | None:
    """The fixed sentence naming the clip's label for an attribute question (None for other questions)."""
    from .evaluate import LABEL_WORDS, labelled

    attr = item.category
    if attr not in LABEL_WORDS or not labelled(attr, item.clip):
        return None
    label = str(item.clip[attr])
    phrase = f"a {label}" if attr == "sound" and label in COUNTABLE_SOUNDS else label.lower()
    return LABEL_SENTENCES[attr].format(phrase)


def banned_words(item: "Item") -> list[str]:
    """Words the answer to `item` may not use: the other labels of the attribute its prompt asks about."""
    from .evaluate import LABEL_WORDS, expected_label, labelled

    attr = item.category
    if attr not in LABEL_WORDS or not labelled(attr, item.clip):
        return []
    want = expected_label(attr, item.clip[attr])
    keep = set(LABEL_WORDS[attr][want])  # a word naming two labels ("normal") is never banned for the right one
    return sorted({w for label, words in LABEL_WORDS[attr].items() if label != want for w in words} - keep)


def word_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The token ids that spell one of `words` as a single token: " word", "Word", " Word", and "word"
    for words of 4+ letters (a shorter bare piece such as "he" is too often part of other words).
    Multi-token spellings are left to the label filter."""
    ids: set[int] = set()
    for w in words:
        for v in (f" {w}", w.capitalize(), f" {w.capitalize()}") + ((w,) if len(w) >= 4 else ()):
            toks = tokenizer.encode(v, add_special_tokens=False)
            if len(toks) == 1:
                ids.add(toks[0])
    return sorted(ids)


def _items(options: DatagenOptions) -> list[Item]:
    items = []
    for clip in read_metadata(options.corpus_dir):
        if clip["split"] not in options.splits:
            continue
        description = seed_description(clip)
        for k in range(options.prompts_per_clip):
            rid = clip["id"] if options.prompts_per_clip == 1 else f"{clip['id']}-p{k}"
            drawn = sample_prompt(clip, random.Random(f"{options.seed}:{rid}"), options.categories)
            if drawn is None:
                break  # no category asked for fits this clip
            category, prompt = drawn
            items.append(Item(rid, clip, description, category, prompt))
            if options.limit is not None and len(items) >= options.limit:
                return items
    return items


def conversation(item: Item, options: DatagenOptions) -> Conversation:
    """The text-only conversation the LLM answers for one record."""
    if item.category == ASSISTANT:  # the spoken question, asked in text as the runtime's turn would
        return [{"role": "system", "content": ASSISTANT_SYSTEM}, {"role": "user", "content": item.clip["transcript"]}]
    content = options.user_template.format(description=item.description, prompt=item.prompt)
    user = {"role": "user", "content": content}
    return [{"role": "system", "content": options.system_prompt}, user] if options.system_prompt else [user]


def make_record(item: Item, response: str, dataset: str) -> dict[str, Any]:
    """One DeSTA-AQA5M record."""
    text = item.clip["transcript"] if item.clip.get("transcript") is not None else NO_SPEECH_TEXT
    return {
        "id": item.id, "dataset": dataset, "seed_description": item.description, "prompt": item.prompt,
        "response": response,
        "messages": ([{"role": "system", "content": item.system}] if item.system else []) + [
            {"role": "user", "content": f"{AUDIO_LOCATOR}\n{item.prompt}",
             "audios": [{"audio": item.clip["audio"], "text": text}]},
            {"role": "assistant", "content": response},
        ],
        "category": item.category,
    }


def existing_ids(path: Path) -> list[str]:
    """Ids already in `path`, cutting off a truncated last line left by a crash."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a truncated last line (%d bytes) from an interrupted run", path, len(data) - keep)
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    ids = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.append(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a datagen record ({e}); fix or remove the file") from e
    return ids


def _settings(options: DatagenOptions) -> dict[str, Any]:
    s = {k: getattr(options, k) for k in CONTENT_SETTINGS}
    s.update(corpus_dir=str(options.corpus_dir), batch_size=options.batch_size, splits=list(options.splits),
             limit=options.limit, categories=None if options.categories is None else sorted(options.categories))
    return s


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    if path.exists():
        old = json.loads(path.read_text())
        defaults = {f.name: f.default for f in fields(DatagenOptions)}  # a setting added later: its default
        for key in CONTENT_SETTINGS:
            if old.get(key, defaults.get(key)) != settings[key]:
                raise ValueError(f"{path}: resuming with {key}={settings[key]!r}, but the file was made with "
                                 f"{key}={old.get(key)!r}; use a new --out or the same settings")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, path)


def _batches(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _fixed_answer(item: Item, options: DatagenOptions) -> str | None:
    """The label answer when `options.answers` asks for one and the item has one; else None (the backbone answers)."""
    return label_answer(item) if options.answers == "label" else None


def _answer(batch: Sequence[Item], options: DatagenOptions, generate: GenerateFn | None) -> list[str]:
    """Label answers where `options.answers` asks for them; the rest from the backbone (`_generated`)."""
    fixed = [_fixed_answer(it, options) for it in batch]
    asked = [i for i, a in enumerate(fixed) if a is None]
    if asked:
        assert generate is not None
        for i, a in zip(asked, _generated([batch[i] for i in asked], options, generate)):
            fixed[i] = a
    return fixed


def _generated(batch: Sequence[Item], options: DatagenOptions, generate: GenerateFn) -> list[str]:
    """Greedy answers, the best of `options.candidates` for attribute questions, then sampled re-asks
    of the answers the filter sets aside (`options.retries` rounds)."""
    from .evaluate import LABEL_WORDS

    convs = [conversation(it, options) for it in batch]
    bans = [banned_words(it) for it in batch] if options.constrain_labels else []

    def ask(rows: Sequence[int], *seed: int) -> list[str]:  # no seed: greedy; no bans in the batch: no `banned`
        kw = {"banned": [bans[i] for i in rows]} if any(bans) else {}
        return _checked(generate([convs[i] for i in rows], *seed, **kw), len(rows))

    def seed(tag: str) -> int:
        return zlib.crc32(f"{options.seed}:{tag}:{batch[0].id}".encode())

    answers = ask(range(len(batch)))
    closed = [i for i, it in enumerate(batch) if it.category in LABEL_WORDS]
    if options.candidates > 1 and closed:
        pools = {i: [answers[i]] for i in closed}
        for k in range(1, options.candidates):
            for i, a in zip(closed, ask(closed, seed(f"candidate{k}"))):
                pools[i].append(a)
        for i in closed:
            fit = [a for a in pools[i] if not (options.filter_labels and set_aside(batch[i], a))]
            answers[i] = min(fit, key=lambda a: len(a.split())) if fit else answers[i]
    for attempt in range(1, options.retries + 1 if options.filter_labels else 1):
        redo = [i for i, (it, a) in enumerate(zip(batch, answers)) if set_aside(it, a)]
        if not redo:
            break
        for i, a in zip(redo, ask(redo, seed(str(attempt)))):
            answers[i] = a
    return answers


def _checked(answers: list[str], n: int) -> list[str]:
    if len(answers) != n:
        raise RuntimeError(f"generator returned {len(answers)} answers for {n} conversations")
    return list(answers)


def run_datagen(options: DatagenOptions, generate: GenerateFn | None = None) -> DatagenResult:
    """Create or resume the JSONL; `generate` defaults to the options' backend."""
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {options.batch_size}")
    if options.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {options.backend!r}")
    if options.retries < 0:
        raise ValueError(f"retries must be >= 0, got {options.retries}")
    if options.candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {options.candidates}")
    if options.answers not in ANSWERS:
        raise ValueError(f"answers must be one of {ANSWERS}, got {options.answers!r}")
    if options.limit is not None and options.limit < 0:
        raise ValueError(f"limit must be >= 0, got {options.limit}")
    unknown = sorted(set(options.categories or ()) - set(all_categories()))
    if unknown or options.categories == ():
        raise ValueError(f"categories must be some of {all_categories()}, got {list(options.categories or ())}")
    out = Path(options.out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = _settings(options)
    _check_settings(settings_path(out), settings)
    items = _items(options)
    rejects = rejected_path(out)
    done = set(existing_ids(out)) | set(existing_ids(rejects))
    todo = [it for it in items if it.id not in done]
    existing = len(items) - len(todo)
    if generate is None and any(_fixed_answer(it, options) is None for it in todo):
        generate = make_generator(options)
    bar = tqdm(total=len(items), initial=existing, desc="datagen", unit="rec", disable=not options.progress)
    written = rejected = 0
    with open(out, "a", encoding="utf-8") as f, open(rejects, "a", encoding="utf-8") as r:
        for batch in _batches(todo, options.batch_size):
            answers = _answer(batch, options, generate)
            keep, drop = [], []
            for it, a in zip(batch, answers):
                record = json.dumps(make_record(it, a.strip(), options.dataset), ensure_ascii=False) + "\n"
                from_label = _fixed_answer(it, options) is not None  # right by construction
                bad = options.filter_labels and not from_label and set_aside(it, a)
                (drop if bad else keep).append(record)
            for handle, lines in ((r, drop), (f, keep)):  # a resumed run redoes only ids in neither file
                handle.write("".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
            written, rejected = written + len(keep), rejected + len(drop)
            bar.update(len(batch))
    bar.close()
    if not rejects.stat().st_size:
        rejects.unlink()
    logger.info("datagen: %d new records, %d set aside by the filter, %d already present, in %s",
                written, rejected, existing, out)
    return DatagenResult(out, written=written, existing=existing, rejected=rejected, total=len(items), settings=settings)


# ------------------------------------------------------------------ backends


def make_generator(options: DatagenOptions) -> GenerateFn:
    if options.backend == "vllm":
        return vllm_generator(options.model, options.max_new_tokens, options.seed)
    return transformers_generator(options.model, options.max_new_tokens, device=options.device,
                                  progress=options.progress)


def transformers_generator(model: str, max_new_tokens: int, *, device: str | None = None,
                           progress: bool = False) -> GenerateFn:
    """Answers from the backbone via DestaModel.generate (text-only conversations)."""
    import torch

    from desta_edge import DestaModel

    desta = DestaModel.from_pretrained(model, device=device, audio_features=False, progress=progress)

    def generate(conversations: list[Conversation], seed: int | None = None,
                 banned: list[list[str]] | None = None) -> list[str]:
        ids = None if banned is None else [word_token_ids(desta.tokenizer, words) for words in banned]
        if seed is None:
            return desta.generate(conversations, max_new_tokens=max_new_tokens, banned_token_ids=ids).text
        torch.manual_seed(seed)
        return desta.generate(conversations, max_new_tokens=max_new_tokens, do_sample=True, banned_token_ids=ids,
                              **SAMPLING).text

    return generate


def vllm_generator(model: str, max_new_tokens: int, seed: int = 0) -> GenerateFn:
    """Answers from vLLM's offline API (`LLM.generate` + `SamplingParams`), for large GPU runs.

    Not run in this project's CI (no vLLM, no GPU there); written to vLLM's documented offline
    inference API. `model` is a preset name (its LLM backbone is used) or an HF id / directory.
    """
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise RuntimeError("the vllm backend needs vLLM: pip install vllm (on a CUDA machine)") from e
    from desta_edge.runtime.presets import PRESETS, resolve_backbone

    path = resolve_backbone(PRESETS[model].config.llm_model_id) if model in PRESETS else model
    llm = LLM(model=path, seed=seed)
    tokenizer = llm.get_tokenizer()
    greedy = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)

    def generate(conversations: list[Conversation], seed: int | None = None,
                 banned: list[list[str]] | None = None) -> list[str]:
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        params = greedy if seed is None else SamplingParams(max_tokens=max_new_tokens, seed=seed, **SAMPLING)
        if banned is not None:  # one SamplingParams per prompt, with that answer's banned token ids
            params = [params.clone() for _ in prompts]
            for p, words in zip(params, banned):
                p.logit_bias = {t: -100.0 for t in word_token_ids(tokenizer, words)} or None
        return [out.outputs[0].text for out in llm.generate(prompts, params)]

    return generate


def options_dict(options: DatagenOptions) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
