"""`ship`: the fp16 adapter and a model card whose numbers come from the run's own files."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from desta_edge.runtime.checkpoint import read_weights
from desta_edge.training import datagen as dg
from desta_edge.training.cli import register_cli
from desta_edge.training.corpus import CorpusOptions, build_corpus
from desta_edge.training.evaluate import EvalOptions, evaluate, summary, write_report
from desta_edge.training.modelcard import _eval_corpus, corpus_command
from desta_edge.training.trainer import TrainOptions, train

from conftest import build_tiny_model


@pytest.mark.parametrize("lora", [None, "audio"])
def test_ship_writes_fp16_weights_and_a_card_from_the_run(tmp_path, capsys, lora):
    corpus = tmp_path / "corpus"
    build_corpus(CorpusOptions(out_dir=corpus, size=6, seed=3, workers=1, sound_fraction=0.3,
                               split_fractions=(0.0, 0.0, 1.0), noisy_fraction=0.5))
    data = tmp_path / "aqa.jsonl"
    answers = dg.run_datagen(dg.DatagenOptions(corpus_dir=corpus, out_file=data, splits=("test",), batch_size=4,
                                               retries=1, candidates=2, limit=5),
                             lambda convs, seed=None, banned=None: ["A quiet man speaking slowly, a beep." for _ in convs])
    # a second file of label answers to one category, trained on after the first (`train --data A --data B`)
    labels = tmp_path / "labels.jsonl"
    second = dg.run_datagen(dg.DatagenOptions(corpus_dir=corpus, out_file=labels, splits=("test",), batch_size=4,
                                              seed=7, categories=("volume",), answers="label"),
                            lambda convs, seed=None, banned=None: pytest.fail("label answers ask no model"))
    model = build_tiny_model()
    run = tmp_path / "run"
    train(TrainOptions(data=(data, labels), data_root=corpus, out_dir=run, steps=3, batch_size=2, lr=1e-3,
                       warmup_steps=1, loss_plot=False, lora=lora, precision="bf16" if lora else "tf32"), model)
    assert json.loads((run / "train.json").read_text())["records"] == answers.written + second.written
    result = evaluate(model, EvalOptions(corpus_dir=corpus, batch_size=8, label_max_new_tokens=3,
                                         qa_max_new_tokens=4, text_max_new_tokens=6))
    write_report(result, tmp_path / "eval")
    notes = tmp_path / "notes.md"
    notes.write_text("Synthetic voices only.")

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "shipped"
    args = parser.parse_args(["ship", "--run", str(run), "--eval", str(tmp_path / "eval"), "--data", str(data),
                              "--data", str(labels), "--corpus", str(corpus), "--out", str(out), "--notes", str(notes),
                              "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)

    trained, shipped = read_weights(run / "model.safetensors"), read_weights(out / "model.safetensors")
    assert set(shipped) == set(trained) and all(v.dtype == torch.float16 for v in shipped.values())
    assert all(torch.allclose(shipped[k].float(), trained[k].float(), atol=1e-3, rtol=1e-3) for k in trained)
    assert json.loads((out / "config.json").read_text()) == json.loads((run / "config.json").read_text())
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{answers.written} records kept, {answers.rejected} answers set aside" in card
    assert "`desta-edge datagen --seed 0 --max-new-tokens 64 --limit 5 --splits test --retries 1 --candidates 2`" in card
    assert "`desta-edge datagen --seed 7 --max-new-tokens 64 --splits test --categories volume --answers label`" in card
    assert f"Training read these 2 files in this order: {answers.written + second.written} records." in card
    assert card.index("--candidates 2`") < card.index("--answers label`")
    assert "`desta-edge train --model tiny --steps 3 --batch-size 2" in card and "| **average** |" in card
    assert "`desta-edge corpus --size 6 --seed 3 --room-fraction 0.7 --reverb-fraction 0.3 --channel-fraction 0.3`" in card
    assert f"on {result['clips']} held-out clips of the corpus above" in card
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert f"{sum(losses) / len(losses):.3f}" in card  # 3 steps: first and last windows are all of them
    assert card.rstrip().endswith("Synthetic voices only.")
    if lora is None:
        assert "Only the connector is trained" in card
    else:
        assert "a LoRA (r=16, q/k/v of every LLM layer, active from a conversation's first audio position" in card
        assert "--seed 0 --lora audio --precision bf16`" in card and any(".lora_B." in k for k in shipped)
    assert json.loads((out / "eval.json").read_text()) == summary(result)


def test_the_card_names_the_corpus_options_used_and_the_corpus_evaluated(tmp_path):
    options = dataclasses.asdict(CorpusOptions(out_dir="x", size=2500, seed=1, short_fraction=0.3,
                                               short_low_female_fraction=0.6, low_female_fraction=0.4))
    assert corpus_command(options) == ("desta-edge corpus --size 2500 --seed 1 --room-fraction 0.7 --reverb-fraction 0.3"
                                       " --channel-fraction 0.3 --short-fraction 0.3 --short-low-female-fraction 0.6"
                                       " --low-female-fraction 0.4")
    other = tmp_path / "other"
    other.mkdir()
    (other / "corpus.json").write_text(json.dumps({"options": {**options, "size": 5000, "seed": 0,
                                                               "short_fraction": 0.0, "short_low_female_fraction": 0.0,
                                                               "low_female_fraction": 0.0}}))
    result = {"options": {"corpus_dir": str(other)}}
    assert _eval_corpus(result, tmp_path / "train-corpus") == ("of the corpus `desta-edge corpus --size 5000 --seed 0"
                                                               " --room-fraction 0.7 --reverb-fraction 0.3 --channel-fraction 0.3`")
    assert _eval_corpus(result, other) == "of the corpus above"
    assert _eval_corpus({"options": {"corpus_dir": str(tmp_path / "gone")}}, other) == "of another corpus (gone)"


def test_ship_names_what_is_missing(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ship", "--run", str(tmp_path / "run"), "--eval", str(tmp_path), "--data", "x.jsonl",
                              "--corpus", str(tmp_path), "--out", str(tmp_path / "out")])
    assert args.func(args) == 2
    assert "run/config.json not found" in capsys.readouterr().err


def test_card_says_when_attribute_targets_are_labels_not_self_generated():
    from desta_edge.training.modelcard import _targets_line, datagen_command

    settings = {"seed": 8, "max_new_tokens": 64, "answers": "label", "model": "tiny"}
    assert datagen_command(settings) == "desta-edge datagen --seed 8 --max-new-tokens 64 --answers label"
    kept = [{"category": "gender"}, {"category": "sound"}, {"category": "assistant"}]
    line = _targets_line(settings, kept, [{"category": "assistant"}])
    assert "2 attribute questions answered with the clip's label" in line and "not self-generated" in line
    assert "1 records answered by the backbone itself; 1 answers set aside" in line
    own = _targets_line({**settings, "answers": "backbone"}, kept, [])
    assert own.startswith("- Self-generated targets (") and "not self-generated" not in own

