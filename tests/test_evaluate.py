"""Evaluation: the answer scorers on hand-written answers, and the whole report on a tiny corpus."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from desta_edge.training.cli import register_cli
from desta_edge.training.corpus import CorpusOptions, build_corpus, read_metadata
from desta_edge.training.evaluate import (
    AMBIGUOUS, QUESTIONS, EvalOptions, answer_correct, evaluate, expected_label, length_group, markdown_table,
    score_answer, transcript_only, write_report,
)
from desta_edge.training.metrics import word_error_rate

from conftest import build_tiny_model


@pytest.mark.parametrize("attribute, answer, label", [
    ("gender", "Female.", "Female"),  # "female" contains "male": words, not substrings, are matched
    ("gender", "The speaker is a man.", "Male"),
    ("gender", "It sounds like a woman, not a man.", "Female"),  # negated labels are not named
    ("gender", "A man or a woman.", AMBIGUOUS),  # echoing the options is not an answer
    ("pitch", "The voice is low, normal in pitch.", AMBIGUOUS),
    ("noise", "The recording is clean, with no background noise.", "Clean"),
    ("volume", "It isn't loud, it is quiet.", "Quiet"),
    ("gender", "I cannot tell from the audio.", None),
    ("pitch", "The voice is high-pitched.", "High"),
    ("pitch", "A deep voice.", "Low"),
    ("speed", "She talks rapidly.", "Fast"),
    ("volume", "Quite soft.", "Quiet"),
    ("noise", "There is background noise.", "Noisy"),
    ("noise", "CLEAN", "Clean"),
    ("sound", "It is white noise.", "white noise"),
    ("sound", "A beeping sound.", "beep"),
])
def test_score_answer(attribute, answer, label):
    assert score_answer(attribute, answer) == label


def test_expected_labels_and_short_answers():
    assert expected_label("noise", "Slightly noisy") == expected_label("noise", "Very noisy") == "Noisy"
    assert expected_label("noise", "Clean") == "Clean" and expected_label("pitch", "High") == "High"
    assert answer_correct("Paris", "The capital of France is Paris.")
    assert answer_correct("4", "A dog has four legs.")  # digits and number words match
    assert not answer_correct("New Delhi", "Delhi is new.")
    assert not answer_correct("Paris", "Parisian food is great.")


def FAST(corpus: Path, **kw) -> EvalOptions:  # a random LLM never stops: keep its answers short
    return EvalOptions(corpus_dir=corpus, batch_size=8, label_max_new_tokens=3, qa_max_new_tokens=4,
                       text_max_new_tokens=6, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(CorpusOptions(out_dir=out, size=6, seed=4, workers=1, sound_fraction=0.3,
                               split_fractions=(0.0, 0.0, 1.0), heldout_qa_fraction=0.6, noisy_fraction=0.5))
    return out


def test_length_groups_count_the_words_of_the_reference_transcript():
    assert length_group({"kind": "speech", "transcript": "Two."}) == "1-2 words"
    assert length_group({"kind": "speech", "transcript": "Volume up!"}) == "1-2 words"
    assert length_group({"kind": "speech", "transcript": "Turn it up."}) == "3+ words"
    assert length_group({"kind": "speech", "transcript": None}) == "no transcript"
    assert length_group({"kind": "sound", "transcript": None}) is None


def test_evaluate_plumbing_with_a_tiny_random_model(corpus, tmp_path):
    model = build_tiny_model()
    calls = []
    model.connector.register_forward_hook(lambda *a: calls.append(1))
    result = evaluate(model, FAST(corpus))
    clips = list(read_metadata(corpus))
    para = result["paralinguistic"]
    assert para["variants"] == ["model", "transcript_only", "description_in_text"] and calls  # the connector ran
    assert model.audio_features  # restored after the ablation
    for attr, entry in para["attributes"].items():
        key = QUESTIONS[attr][0]
        assert entry["n"] == sum(1 for c in clips if c.get(key) and (attr == "sound") == (c["kind"] == "sound"))
        assert all(0 <= entry[v] <= 1 for v in ("model", "transcript_only", "description_in_text", "majority"))
        for v in ("model", "transcript_only", "description_in_text"):  # the histogram covers every clip
            assert sum(entry["predicted"][v].values()) == entry["n"]
        assert "by_clip_variant" not in entry  # only a recordings corpus has clip variants
        assert "by_length" not in entry  # every sentence of the synthetic corpus has three words or more
    assert "sound" in para["attributes"] and "gender" in para["attributes"]
    lp = result["language_preservation"]
    assert lp["identical"] == lp["n"] == 4  # text-only conversations are exactly the backbone's
    qa = result["spoken_qa"]
    assert qa["n"] == len((corpus / "spoken_qa.jsonl").read_text().splitlines()) > 0
    assert 0 <= qa["voice_transcript_only"] <= 1  # the same spoken questions without the audio embeddings
    answers = qa["answers"]  # one row per question; the rates are their means
    assert [a["question"] for a in answers] == [json.loads(x)["question"] for x in
                                                (corpus / "spoken_qa.jsonl").read_text().splitlines()]
    for k in ("voice", "text", "voice_true_transcript"):
        assert qa[k] == pytest.approx(sum(a[f"{k}_correct"] for a in answers) / qa["n"])
    engines = {c["id"]: c["synthesizer"] for c in clips}
    assert {a["synthesizer"] for a in answers} == set(qa["by_synthesizer"]) <= set(engines.values())
    assert all(a["synthesizer"] == engines[a["id"]] for a in answers)
    assert sum(g["n"] for g in qa["by_synthesizer"].values()) == qa["n"]
    for e, g in qa["by_synthesizer"].items():
        mine = [a for a in answers if a["synthesizer"] == e]
        assert g["voice_true_transcript"] == pytest.approx(sum(a["voice_true_transcript_correct"] for a in mine) / len(mine))
        assert g["wer"] == word_error_rate([(a["question"], a["transcript"]) for a in mine])
    assert result["wer"]["n"] == sum(1 for c in clips if c["transcript"]) and result["wer"]["wer"] >= 0
    table = markdown_table(result)
    assert "| **average** |" in table and "transcript-only %" in table and "spoken QA" in table
    assert "description-in-text %" in table
    j, m = write_report(result, tmp_path / "report")
    assert json.loads(j.read_text())["clips"] == len(clips) and m.read_text() == table
    assert "answers" not in json.loads(j.read_text())["paralinguistic"]
    assert "answers" not in json.loads(j.read_text())["spoken_qa"] and "true transcript" in table
    qa_rows = [json.loads(x) for x in (tmp_path / "report" / "qa_answers.jsonl").read_text().splitlines()]
    assert qa_rows == answers
    rows = [json.loads(x) for x in (tmp_path / "report" / "answers.jsonl").read_text().splitlines()]
    for attr, entry in para["attributes"].items():  # one row per clip, attribute and variant; they add up
        for variant in para["variants"]:
            mine = [r for r in rows if r["attribute"] == attr and r["variant"] == variant]
            assert len(mine) == entry["n"]
            assert sum(r["predicted"] == r["expected"] for r in mine) / len(mine) == pytest.approx(entry[variant])


def test_ablation_switch_and_model_without_connector(corpus):
    model = build_tiny_model(audio_features=False)
    assert model.connector is None
    result = evaluate(model, FAST(corpus, limit=2))
    assert result["paralinguistic"]["variants"] == ["transcript_only", "description_in_text"]
    assert result["clips"] == 2
    assert "voice_transcript_only" not in result["spoken_qa"]  # the voice column already is the ablation
    with_connector = build_tiny_model()
    with transcript_only(with_connector):
        assert not with_connector.audio_features
    assert with_connector.audio_features


def test_eval_cli_reports_bad_input(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--corpus", str(tmp_path / "nope"), "--json"])
    assert args.func(args) == 2
    assert "metadata.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_with_the_real_tiny_preset(corpus):
    from desta_edge import DestaModel

    model = DestaModel.from_pretrained("tiny", progress=False)
    # short answers: every question is still asked (19 generate calls), at half the time of full-length ones
    result = evaluate(model, EvalOptions(corpus_dir=corpus, limit=3, label_max_new_tokens=4, qa_max_new_tokens=8,
                                         text_max_new_tokens=8))
    assert result["language_preservation"]["identical"] == 4
    assert result["wer"]["wer"] < 0.5  # Whisper tiny.en on clean-ish synthetic speech


def test_evaluate_an_onnx_export_against_its_pytorch_source(corpus, tiny_onnx_export):
    from desta_edge import DestaModel

    model = DestaModel.from_pretrained(tiny_onnx_export, backend="onnx")
    result = evaluate(model, FAST(corpus, limit=2))
    assert result["backend"] == model.backend_name and "onnx" in result["backend"]
    lp = result["language_preservation"]  # compared with the torch model the export came from
    assert lp["identical"] == lp["n"] == 4  # fp32 export: the same greedy tokens
    assert result["paralinguistic"]["variants"] == ["model", "transcript_only", "description_in_text"]
    assert "voice_transcript_only" in result["spoken_qa"]  # the export's connector is scored, not skipped
    assert f"| model, backend, split | {tiny_onnx_export}, {model.backend_name}, test |" in markdown_table(result)
    source = evaluate(DestaModel.from_pretrained(str(model.backend.manifest["source"]), device="cpu"),
                      FAST(corpus, limit=2))
    for attr, entry in result["paralinguistic"]["attributes"].items():  # fp32 export: the same answers
        assert entry["predicted"] == source["paralinguistic"]["attributes"][attr]["predicted"], attr
    assert result["wer"] == source["wer"]
