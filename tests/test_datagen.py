"""Seed descriptions, the instruction pool, self-generated data (schema, resume) and the AQA5M reader."""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import pytest

from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM
from desta_edge.training import datagen as dg
from desta_edge.training.aqa5m import iter_aqa5m
from desta_edge.training.corpus import read_metadata
from desta_edge.training.cli import register_cli
from desta_edge.training.descriptions import seed_description
from desta_edge.training.evaluate import LABEL_WORDS
from desta_edge.training.instructions import (
    CLOSED, POOL, SOUND_CATEGORIES, all_prompts, categories_for, sample_prompt,
)

from conftest import build_tiny_model

SPEECH = {"id": "train-000001", "audio": "audio/train/train-000001.wav", "split": "train", "kind": "speech",
          "transcript": "What is the capital of France?", "sentence_type": "question", "answer": "Paris",
          "gender": "Female", "pitch": "High", "speed": "Fast", "volume": "Loud", "noise": "Clean", "duration_s": 2.6}
NOISY = {**SPEECH, "id": "train-000002", "audio": "audio/train/train-000002.wav", "noise": "Noisy",
         "transcript": "Turn on the kitchen lights.", "sentence_type": "command", "gender": None, "duration_s": 61.2}
SOUND = {"id": "train-000003", "audio": "audio/train/train-000003.wav", "split": "train", "kind": "sound",
         "transcript": None, "sound": "beep", "duration_s": 4.6, "gender": None, "pitch": None, "speed": None,
         "volume": "Quiet", "noise": "Clean"}


# ------------------------------------------------------------------ descriptions


def test_seed_description_formats():
    assert seed_description(SPEECH) == ("[00:00-00:03] What is the capital of France? (Gender: Female, Pitch: High, "
                                        "Speaking speed: Fast, Volume: Loud, Duration: 3s)")
    assert seed_description(NOISY) == ("[00:00-01:01] Turn on the kitchen lights. (Pitch: High, Speaking speed: Fast, "
                                       "Volume: Loud, Noise: Noisy, Duration: 61s)")
    assert seed_description(SOUND) == "[00:00-00:05] (Sound: beep, Duration: 5s)"
    assert seed_description({**SOUND, "duration_s": 0.3}) == "[00:00-00:01] (Sound: beep, Duration: 1s)"
    with pytest.raises(ValueError, match="neither"):
        seed_description({**SOUND, "sound": None})


# ------------------------------------------------------------------ instruction pool


def test_instruction_pool_is_large_unique_and_covers_every_category():
    prompts = all_prompts()
    assert len(prompts) >= 200
    assert len(set(prompts)) == len(prompts)
    assert set(POOL) >= {"describe", "transcribe", "speaker", "gender", "pitch", "speed", "volume", "noise", "sound",
                         "summarize", "answer", "reasoning"}
    assert all(len(v) >= 15 for v in POOL.values())


def test_prompts_fit_the_clip():
    assert set(categories_for(SOUND)) == set(SOUND_CATEGORIES)
    assert "answer" in categories_for(SPEECH) and "sound" not in categories_for(SPEECH)
    assert "gender" not in categories_for(NOISY) and "answer" not in categories_for(NOISY)
    rng = random.Random(0)
    for _ in range(200):
        category, prompt = sample_prompt(SOUND, rng)
        assert category in SOUND_CATEGORIES and prompt in all_prompts()
        assert prompt in POOL[category] or any(prompt.startswith(q) for q in CLOSED[category])
    assert sample_prompt(SPEECH, random.Random("0:x")) == sample_prompt(SPEECH, random.Random("0:x"))
    drawn = [sample_prompt(SPEECH, random.Random(i)) for i in range(600)]
    seen = {c for c, _ in drawn}
    assert seen == set(categories_for(SPEECH)) and "assistant" in seen
    counts = {c: sum(d == c for d, _ in drawn) for c in seen}
    assert counts["gender"] > 1.5 * counts["transcribe"]  # attributes are asked about more often than the words
    gender = [p for c, p in drawn if c == "gender"]
    assert any(p in POOL["gender"] for p in gender) and any(p.startswith(tuple(CLOSED["gender"])) for p in gender)


# ------------------------------------------------------------------ datagen


def write_corpus(root: Path, n: int = 10) -> Path:
    recs = []
    for i in range(n):
        base = (SPEECH, NOISY, SOUND)[i % 3]
        split = "test" if i == n - 1 else "train"
        recs.append({**base, "id": f"{split}-{i:06d}", "audio": f"audio/{split}/{split}-{i:06d}.wav", "split": split})
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


class FakeLLM:
    """Answers with a function of the conversation; counts calls; can fail on a given call."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call

    def __call__(self, conversations):
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(len(conversations))
        return [f" answer to: {c[-1]['content']} " for c in conversations]


def options(tmp_path: Path, **kw) -> dg.DatagenOptions:
    # FakeLLM echoes the description, which names every label: the label filter is tested on its own
    base = dict(corpus_dir=write_corpus(tmp_path / "corpus"), out_file=tmp_path / "out" / "aqa.jsonl", batch_size=3,
                filter_labels=False, constrain_labels=False)
    base.update(kw)
    return dg.DatagenOptions(**base)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_follow_the_aqa5m_schema(tmp_path):
    opts = options(tmp_path)
    llm = FakeLLM()
    result = dg.run_datagen(opts, llm)
    recs = read(result.path)
    assert result.written == len(recs) == 9 and llm.calls == [3, 3, 3]  # the test split is not covered
    clips = {c["id"]: c for c in read_metadata(opts.corpus_dir)}
    for r in recs:
        assert set(r) >= {"id", "dataset", "seed_description", "prompt", "response", "messages"}
        assert r["dataset"] == "desta-edge-synth" and r["seed_description"] == seed_description(clips[r["id"]])
        *system, user, assistant = r["messages"]
        assert user == {"role": "user", "content": "<|AUDIO|>\n" + r["prompt"],
                        "audios": [{"audio": f"audio/train/{r['id']}.wav", "text": clips[r["id"]]["transcript"] or " "}]}
        assert assistant == {"role": "assistant", "content": r["response"]}
        item = dg.Item(r["id"], clips[r["id"]], r["seed_description"], r["category"], r["prompt"])
        asked = dg.conversation(item, opts)[-1]["content"]
        if r["category"] == "assistant":  # the runtime's spoken-question turn: the backbone answered the words
            assert system == [{"role": "system", "content": ASSISTANT_SYSTEM}] and r["prompt"] == ASSISTANT_PROMPT
            assert asked == clips[r["id"]]["transcript"]
        else:
            assert not system and r["seed_description"] in asked and r["prompt"] in asked
        assert r["response"] == f"answer to: {asked}"  # stripped; the LLM saw description and prompt
    sound = [r for r in recs if "(Sound: beep" in r["seed_description"]]
    assert sound and all(r["messages"][0]["audios"][0]["text"] == " " for r in sound)
    settings = json.loads(dg.settings_path(result.path).read_text())
    assert settings["seed"] == 0 and settings["retries"] == 0 and settings["model"] == "tiny"
    parsed = list(iter_aqa5m(result.path, data_root=opts.corpus_dir))
    assert [p.id for p in parsed] == [r["id"] for r in recs]
    assert parsed[0].audios[0].path == opts.corpus_dir / recs[0]["messages"][0]["audios"][0]["audio"]


def test_prompts_are_deterministic_and_limit_applies(tmp_path):
    a = read(dg.run_datagen(options(tmp_path / "a", limit=5), FakeLLM()).path)
    b = read(dg.run_datagen(options(tmp_path / "b", limit=5, batch_size=2), FakeLLM()).path)
    c = read(dg.run_datagen(options(tmp_path / "c", limit=5, seed=1), FakeLLM()).path)
    assert len(a) == 5 and [r["prompt"] for r in a] == [r["prompt"] for r in b]  # batch size does not matter
    assert [r["prompt"] for r in a] != [r["prompt"] for r in c]


def test_resume_after_interruption_and_truncated_line_has_no_duplicates(tmp_path):
    opts = options(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        dg.run_datagen(opts, FakeLLM(fail_on_call=2))  # two batches written, then interrupted
    assert len(read(opts.out_file)) == 6
    with open(opts.out_file, "a") as f:
        f.write('{"id": "train-000006", "dataset": "desta-edge-sy')  # a crash mid-write
    llm = FakeLLM()
    result = dg.run_datagen(opts, llm)
    recs = read(opts.out_file)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 9
    assert result.existing == 6 and result.written == 3 and llm.calls == [3]
    fresh = read(dg.run_datagen(options(tmp_path / "fresh"), FakeLLM()).path)
    assert recs == fresh  # resumed output equals an uninterrupted run
    again = FakeLLM()
    assert dg.run_datagen(opts, again).written == 0 and again.calls == []


def test_resume_with_other_settings_is_refused(tmp_path):
    dg.run_datagen(options(tmp_path, limit=2), FakeLLM())
    with pytest.raises(ValueError, match="seed"):
        dg.run_datagen(options(tmp_path, limit=4, seed=5), FakeLLM())
    assert dg.run_datagen(options(tmp_path, limit=4, batch_size=1), FakeLLM()).written == 2  # batch size may change
    sidecar = dg.settings_path(tmp_path / "out" / "aqa.jsonl")
    made_earlier = {k: v for k, v in json.loads(sidecar.read_text()).items() if k not in ("candidates", "answers")}
    sidecar.write_text(json.dumps(made_earlier))  # a file from before those settings existed resumes at their defaults
    assert dg.run_datagen(options(tmp_path, limit=6), FakeLLM()).written == 2
    sidecar.write_text(json.dumps(made_earlier))
    with pytest.raises(ValueError, match="answers"):
        dg.run_datagen(options(tmp_path, limit=6, answers="label"), FakeLLM())


def test_categories_restrict_the_prompts_and_resume(tmp_path):
    opts = options(tmp_path, categories=("gender", "sound"), prompts_per_clip=2)
    recs = read(dg.run_datagen(opts, FakeLLM()).path)
    # the speech clip gets gender prompts; the noisy clip has no gender label, so it is left out
    assert {r["category"] for r in recs} == {"gender", "sound"}
    assert {r["id"].rsplit("-p", 1)[0] for r in recs} == {f"train-{i:06d}" for i in (0, 2, 3, 5, 6, 8)}
    assert all(r["prompt"] in POOL["gender"] or r["prompt"].startswith(tuple(CLOSED["gender"]))
               for r in recs if r["category"] == "gender")
    again = FakeLLM()
    assert dg.run_datagen(opts, again).written == 0 and again.calls == []  # the saved categories compare equal
    with pytest.raises(ValueError, match="categories"):
        dg.run_datagen(options(tmp_path, categories=("gender",), prompts_per_clip=2), FakeLLM())
    for bad in (("gender", "colour"), ()):
        with pytest.raises(ValueError, match="categories must be some of"):
            dg.run_datagen(options(tmp_path / "bad", categories=bad), FakeLLM())
    assert sample_prompt(SOUND, random.Random(0), only=("gender",)) is None


def test_corrupt_middle_line_is_an_error_with_its_line_number(tmp_path):
    opts = options(tmp_path, limit=3)
    dg.run_datagen(opts, FakeLLM())
    lines = opts.out_file.read_text().splitlines()
    opts.out_file.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"aqa.jsonl:2"):
        dg.run_datagen(opts, FakeLLM())


def test_generation_with_a_tiny_random_model(tmp_path):
    model = build_tiny_model(audio_features=False)

    def generate(conversations):
        return model.generate(conversations, max_new_tokens=5, do_sample=False).text

    opts = options(tmp_path, limit=4, batch_size=4)
    recs = read(dg.run_datagen(opts, generate).path)
    clips = {c["id"]: c for c in read_metadata(opts.corpus_dir)}
    items = [dg.Item(r["id"], clips[r["id"]], r["seed_description"], r["category"], r["prompt"]) for r in recs]
    one_by_one = [generate([dg.conversation(it, opts)])[0].strip() for it in items]
    assert [r["response"] for r in recs] == one_by_one  # batched (left-padded) == one at a time


def test_vllm_backend_missing_says_what_to_install(tmp_path):
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install vllm"):
            dg.run_datagen(options(tmp_path, backend="vllm"))
    else:
        pytest.skip("vllm is installed here")


def test_datagen_cli_bad_input(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["datagen", "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "o.jsonl"),
                              "--json"])
    assert args.func(args) == 2
    assert "metadata.jsonl" in capsys.readouterr().err
    args = parser.parse_args(["datagen", "--corpus", str(write_corpus(tmp_path / "c")), "--out",
                              str(tmp_path / "o.jsonl"), "--candidates", "0", "--json"])
    assert args.func(args) == 2
    assert "candidates must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_datagen_with_the_real_tiny_backbone(tmp_path):
    opts = options(tmp_path, limit=4, batch_size=4, max_new_tokens=16)
    result = dg.run_datagen(opts)
    recs = read(result.path)
    rejected = read(dg.rejected_path(result.path)) if result.rejected else []
    assert len(recs) == result.written and len(rejected) == result.rejected and result.written + result.rejected == 4
    assert all(r["response"] and "<|im_end|>" not in r["response"] for r in recs + rejected)


# ------------------------------------------------------------------ AQA5M reader


def aqa_line(i: int, **over) -> dict:
    rec = {"id": f"x{i}", "dataset": "VoxCeleb1", "seed_description": "[00:00-00:02] hi (Gender: Male)",
           "prompt": "Who is speaking?", "response": "A man.",
           "messages": [{"role": "user", "content": "<|AUDIO|>\nWho is speaking?",
                         "audios": [{"audio": f"vox/{i}.wav", "text": "hi"}]},
                        {"role": "assistant", "content": "A man."}]}
    rec.update(over)
    return rec


def test_aqa5m_reader_streams_and_resolves_paths(tmp_path):
    path = tmp_path / "aqa.jsonl"
    path.write_text("\n".join(json.dumps(aqa_line(i)) for i in range(3)) + "\n\n")
    recs = iter_aqa5m(path, data_root=tmp_path / "data")
    first = next(recs)  # a generator: records come one at a time
    assert first.id == "x0" and first.audios[0].path == tmp_path / "data" / "vox" / "0.wav"
    assert first.audios[0].relative == "vox/0.wav" and first.audios[0].text == "hi"
    assert first.messages[0]["audios"][0]["audio"] == str(tmp_path / "data" / "vox" / "0.wav")
    assert [r.line for r in recs] == [2, 3]
    with pytest.raises(ValueError, match="audio file not found"):
        list(iter_aqa5m(path, data_root=tmp_path, check_audio=True))


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({k: v for k, v in aqa_line(1).items() if k != "response"}), "missing field 'response'"),
    (json.dumps(aqa_line(1, prompt=3)), "'prompt' must be a string"),
    (json.dumps(aqa_line(1, messages=[{"role": "user", "content": "<|AUDIO|>\nhi"}])), "1 <|AUDIO|> and 0 audios"),
    (json.dumps(aqa_line(1, messages=[{"role": "bot", "content": "x"}])), "role"),
])
def test_aqa5m_reader_errors_name_the_line(tmp_path, bad, message):
    path = tmp_path / "aqa.jsonl"
    path.write_text(json.dumps(aqa_line(0)) + "\n" + bad + "\n")
    with pytest.raises(ValueError, match=r"aqa.jsonl:2: .*" + re.escape(message)):
        list(iter_aqa5m(path))


def test_answers_contradicting_the_labels_are_set_aside_and_not_redone(tmp_path):
    """Every answer claims a male, slow, quiet speaker."""
    opts = options(tmp_path, limit=None, filter_labels=True)
    llm = lambda convs: ["A man speaking slowly and quietly." for _ in convs]  # noqa: E731
    result = dg.run_datagen(opts, llm)
    kept, rejected = read(result.path), read(dg.rejected_path(result.path))
    assert result.written == len(kept) and result.rejected == len(rejected) and len(kept) + len(rejected) == 9
    assert rejected
    clips = {c["id"]: c for c in read_metadata(opts.corpus_dir)}
    # the speech clips are Female / Fast / Loud: the answer contradicts them whatever was asked; it
    # names no label of a sound clip (a beep), so only the sound-type question about those misses
    for r in rejected:
        assert clips[r["id"]]["kind"] == "speech" or r["category"] == "sound"
    for r in kept:
        assert clips[r["id"]]["kind"] == "sound" and r["category"] != "sound"
    again = dg.run_datagen(opts, FakeLLM())  # resuming regenerates nothing: set-asides count as done
    assert again.written == again.rejected == 0 and again.existing == 9
    unfiltered = dg.run_datagen(options(tmp_path / "u", filter_labels=False), llm)
    assert unfiltered.rejected == 0 and unfiltered.written == 9


def test_label_rule():
    item = dg.Item("x", SPEECH, "desc", "pitch", "How high is the voice?")  # SPEECH's pitch is High
    assert dg.off_label(item, "The voice is low.")
    assert not dg.off_label(item, "A high, bright voice.")
    assert dg.off_label(item, "I cannot tell.")  # names no label: not trained on
    assert dg.off_label(item, "It is normal, not high.")  # names Normal; the negated High does not count
    assert dg.off_label(item, "The voice is low, normal or high.")  # echoes the options
    describe = dg.Item("y", SPEECH, "desc", "describe", "Describe the audio.")
    assert not dg.off_label(describe, "Someone asks about France.")  # free-form answers need not name labels
    assert not dg.off_label(describe, "A woman asks, in a high voice, about France.")
    assert dg.off_label(describe, "A man asks about France.")  # ... but must not contradict them
    assert dg.off_label(describe, "A conversation between a female speaker and a male host.")
    sound = dg.Item("s", SOUND, "desc", "describe", "Describe the audio.")
    assert not dg.off_label(sound, "A steady, noisy beep.")  # a sound clip's "noise" is its sound, not a label
    assert dg.off_label(sound, "A beep over white noise.")  # two sound types: one contradicts the clip
    noisy = dg.Item("z", NOISY, "desc", "noise", "Is there noise?")
    assert not dg.off_label(noisy, "Yes, the background is noisy.") and dg.off_label(noisy, "It is clean.")


def test_answers_echoing_the_description_are_set_aside():
    item = dg.Item("x", SPEECH, "desc", "pitch", "Low, normal or high?")  # SPEECH's pitch is High
    assert dg.set_aside(item, "What is the capital of France? (Gender: Female, Pitch: High, Duration: 3s)")
    assert dg.set_aside(item, "[00:00-00:03] A high voice.")  # the timestamp is copied
    assert dg.set_aside(item, "speaking speed : fast, and the pitch is high")
    assert not dg.set_aside(item, "The pitch is high.") and dg.set_aside(item, "The pitch is low.")
    assert not dg.echoes_description("A high voice, asking about the gender gap.")


def test_candidates_keep_the_shortest_answer_that_passes(tmp_path):
    """Greedy pads its answer; sampled candidates give a short right answer, a short wrong one, an echo."""
    calls = []
    tries = {None: "The audio is from a podcast and the speaker is female, fast, loud, high, clean.",
             1: "Male.", 2: "Female, fast, loud, high, clean.", 3: "(Gender: Female)"}

    seeds: list[int] = []  # sampled seeds in the order they are first used: candidate 1, 2, 3

    def llm(convs, seed=None):
        calls.append((len(convs), seed))
        if seed is not None and seed not in seeds:
            seeds.append(seed)
        return [tries[None if seed is None else seeds.index(seed) + 1] for _ in convs]

    cats = ("gender", "transcribe")
    result = dg.run_datagen(options(tmp_path, categories=cats, filter_labels=True, candidates=4, batch_size=9), llm)
    kept = read(result.path)
    closed = [r for r in kept if r["category"] == "gender"]
    assert closed and all(r["response"] == tries[2] for r in closed)  # shortest of those that pass
    assert all(r["response"] == tries[None] for r in kept if r["category"] == "transcribe")  # free-form: greedy
    # greedy for every row, then three sampled rounds over the gender rows only, each with its own seed
    assert calls[0] == (result.total, None) and [n for n, _ in calls[1:]] == [len(closed)] * 3
    assert len(seeds) == 3
    settings = json.loads(dg.settings_path(result.path).read_text())
    assert settings["candidates"] == 4
    tie = dg.run_datagen(options(tmp_path / "tie", categories=("gender",), filter_labels=True, candidates=2),
                         lambda convs, seed=None: ["The speaker is female." if seed is None else "A female voice speaks."
                                                   for _ in convs])
    assert {r["response"] for r in read(tie.path)} == {"The speaker is female."}  # equal length: greedy kept
    with pytest.raises(ValueError, match="candidates"):
        dg.run_datagen(options(tmp_path / "bad", candidates=0), llm)


def test_label_answers_name_the_clip_label_and_only_other_questions_reach_the_llm(tmp_path):
    from desta_edge.training.evaluate import expected_label, named_labels

    for clip, attrs in ((SPEECH, ("gender", "pitch", "speed", "volume", "noise")), (SOUND, ("sound",))):
        for attr in attrs:
            for label in LABEL_WORDS[attr] if attr != "noise" else ("Clean", "Slightly noisy", "Noisy", "Very noisy"):
                answer = dg.label_answer(dg.Item("x", {**clip, attr: label}, "desc", attr, "?"))
                assert named_labels(attr, answer) == [expected_label(attr, label)], answer
    assert dg.label_answer(dg.Item("x", SOUND, "desc", "sound", "?")) == "The sound is a beep."
    assert dg.label_answer(dg.Item("x", {**SOUND, "sound": "white noise"}, "desc", "sound", "?")) == \
        "The sound is white noise."
    assert dg.label_answer(dg.Item("x", SPEECH, "desc", "describe", "?")) is None
    assert dg.label_answer(dg.Item("x", NOISY, "desc", "gender", "?")) is None  # no gender label

    calls = []

    def llm(convs):
        calls.append(len(convs))
        return ["A short clip." for _ in convs]

    cats = ("gender", "pitch", "describe")
    corpus = write_corpus(tmp_path / "normal")
    clips = list(read_metadata(corpus))
    for c in clips:  # a normal pitch: "normal" also names a speed and a volume, which the filter would take as wrong
        c["pitch"] = "Normal" if c["kind"] == "speech" else None
    (corpus / "metadata.jsonl").write_text("".join(json.dumps(c) + "\n" for c in clips))
    opts = options(tmp_path, corpus_dir=corpus, categories=cats, answers="label", filter_labels=True, batch_size=9)
    result = dg.run_datagen(opts, llm)
    recs = read(result.path)
    by_cat = {c: [r for r in recs if r["category"] == c] for c in cats}
    assert result.rejected == 0 and len(recs) == result.total == 9  # label answers are right by construction
    assert by_cat["gender"] and all(r["response"] == "The speaker is female." for r in by_cat["gender"])
    assert by_cat["pitch"] and all(r["response"] == "The voice is normal in pitch." for r in by_cat["pitch"])
    assert by_cat["describe"] and all(r["response"] == "A short clip." for r in by_cat["describe"])
    assert calls == [len(by_cat["describe"])]  # one batch, only the rows without a label answer
    assert json.loads(dg.settings_path(result.path).read_text())["answers"] == "label"
    only_labels = options(tmp_path / "l", categories=("gender",), answers="label")
    assert dg.run_datagen(only_labels).written == 3  # no generator is loaded when nothing needs one
    with pytest.raises(ValueError, match="answers must be one of"):
        dg.run_datagen(options(tmp_path / "bad", answers="template"), llm)
    assert dg.set_aside(dg.Item("x", clips[0], "desc", "pitch", "?"), "The voice is normal in pitch.")  # why the bypass


def test_constrained_decoding_bans_the_other_labels_words(tmp_path):
    gender = dg.Item("g", SPEECH, "desc", "gender", "Male or female?")  # SPEECH is Female, High, Fast, Loud
    assert "male" in dg.banned_words(gender) and "man" in dg.banned_words(gender)
    assert not {"female", "woman", "she"} & set(dg.banned_words(gender))
    pitch = dg.Item("p", SPEECH, "desc", "pitch", "How high?")
    assert {"low", "deep", "normal", "average"} <= set(dg.banned_words(pitch)) and "high" not in dg.banned_words(pitch)
    clean = dg.Item("n", SPEECH, "desc", "noise", "Noisy?")
    assert set(dg.banned_words(clean)) == set(LABEL_WORDS["noise"]["Noisy"])
    assert dg.banned_words(dg.Item("d", SPEECH, "desc", "describe", "Describe.")) == []
    assert dg.banned_words(dg.Item("x", NOISY, "desc", "gender", "Male?")) == []  # no gender label: nothing to enforce

    seen = []

    def llm(convs, seed=None, banned=None):  # a backbone that says "male" unless that word is banned
        seen.append(banned)
        return ["The speaker is female." if b and "male" in b else "The speaker is male." for b in banned or [[]] * len(convs)]

    opts = options(tmp_path, categories=("gender", "transcribe"), filter_labels=True, constrain_labels=True)
    kept = read(dg.run_datagen(opts, llm).path)
    gender = [r for r in kept if r["category"] == "gender"]
    assert gender and all(r["response"] == "The speaker is female." for r in gender)  # the clips are female
    assert all(b is None or len(b) == 3 for b in seen)  # one row of banned words per conversation, or none
    settings = json.loads(dg.settings_path(opts.out_file).read_text())
    assert settings["constrain_labels"] is True and settings["categories"] == ["gender", "transcribe"]


@pytest.mark.slow
def test_word_token_ids_with_the_real_tokenizer():
    from transformers import AutoTokenizer

    from desta_edge.runtime.bundled import prepare_smollm2

    tok = AutoTokenizer.from_pretrained(prepare_smollm2(progress=False))
    ids = dg.word_token_ids(tok, ["male", "he", "masculine"])
    spelled = {tok.decode([i]) for i in ids}
    assert {" male", "Male", " Male", "male", " he", "He", " He", " masculine"} <= spelled
    assert "he" not in spelled and " female" not in spelled  # short bare pieces and other words are not banned


def test_retries_resample_off_label_answers_before_setting_them_aside(tmp_path):
    """Greedy says "a man ..." for every clip; sampled tries say "a woman ..." (right for some clips)."""
    calls = []
    resampled = "A woman speaking fast and loud, a beep, clean."

    def llm(convs, seed=None):
        calls.append((len(convs), seed))
        return [resampled if seed is not None else "A man speaking slowly and quietly." for _ in convs]

    result = dg.run_datagen(options(tmp_path, limit=None, filter_labels=True, retries=2), llm)
    kept, rejected = read(result.path), read(dg.rejected_path(result.path))
    fixed = [r for r in kept if r["response"] == resampled]
    assert fixed and all(r["category"] in LABEL_WORDS for r in fixed)  # rescued attribute answers
    assert rejected and all(r["response"] == resampled for r in rejected)  # set aside after both tries
    # a rescued answer took one sampled try, a set-aside one both; nothing else was re-asked
    assert sum(n for n, seed in calls if seed is not None) == len(fixed) + 2 * len(rejected)
    sampled = [seed for _, seed in calls if seed is not None]
    assert len(set(sampled)) == len(sampled)  # each retry batch has its own seed
    without = dg.run_datagen(options(tmp_path / "plain", limit=None, filter_labels=True), llm)
    assert without.rejected == len(fixed) + len(rejected)  # the default (no retries) keeps greedy only
    with pytest.raises(ValueError, match="retries"):
        dg.run_datagen(options(tmp_path / "neg", retries=-1), llm)
