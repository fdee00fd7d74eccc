"""Dataset + collate (label masking, inference-identical prompts), the training loop, resume, DDP."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from desta_edge.runtime.checkpoint import read_weights
from desta_edge.runtime.prompt import build_batch
from desta_edge.training.cli import register_cli
from desta_edge.training.dataset import IGNORE_INDEX, MAX_TRAIN_TRANSCRIPT_TOKENS, AQADataset, Collator
from desta_edge.training import trainer as trainer_module
from desta_edge.training.trainer import TrainOptions, train, training_loss, warmup_cosine

from conftest import build_tiny_model

RESPONSES = ["A high beep.", "A low hum, quite long and steady.", "Beep.", "Two short clicks."]


def write_data(root: Path, n: int = 4, transcript: str = "beep") -> Path:
    """n tone clips + a DeSTA-AQA5M JSONL about them (audio paths relative to root)."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        t = np.arange(int(16000 * (0.5 + 0.25 * i))) / 16000
        sf.write(str(root / "audio" / f"{i}.wav"), (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t)).astype(np.float32), 16000)
        response = RESPONSES[i % len(RESPONSES)]
        lines.append({"id": f"r{i}", "dataset": "test", "seed_description": f"[00:00-00:01] (Sound: tone {i})",
                      "prompt": "What sound is this?", "response": response,
                      "messages": [{"role": "user", "content": "<|AUDIO|>\nWhat sound is this?",
                                    "audios": [{"audio": f"audio/{i}.wav", "text": transcript}]},
                                   {"role": "assistant", "content": response}]})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def options(tmp_path: Path, **kw) -> TrainOptions:
    base = dict(data=write_data(tmp_path / "data"), out_dir=tmp_path / "out", steps=4, batch_size=2, lr=1e-3,
                warmup_steps=1, save_every=2, loss_plot=False)
    base.update(kw)
    return TrainOptions(**base)


def connector_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.connector.state_dict().items()}


# ------------------------------------------------------------------ dataset and collate


def test_collate_masks_all_but_response_and_end_of_turn(tmp_path):
    model = build_tiny_model()
    data = AQADataset(write_data(tmp_path, n=2, transcript="x" * 150))
    collate = Collator(model)
    batch = collate([data[0], data[1]])
    tok = model.tokenizer
    assert batch.features.shape == (2, 80, 3000)
    assert [len(t) for t in batch.transcript_ids] == [MAX_TRAIN_TRANSCRIPT_TOKENS] * 2  # 150 byte tokens cut to 100
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for r, ex in enumerate([data[0], data[1]]):
        labelled = batch.labels[r][batch.labels[r] != IGNORE_INDEX].tolist()
        assert tok.decode(labelled) == ex.response + "<|im_end|>" and labelled[-1] == end
        # the prompt part is exactly what inference builds for this conversation
        ref = build_batch(tok, [ex.prompt], audio_locator="<|AUDIO|>", placeholder_id=model.placeholder_id,
                          pad_id=model.pad_id, spans=[(model.config.prompt_size, MAX_TRAIN_TRANSCRIPT_TOKENS)])
        row = batch.input_ids[r][batch.attention_mask[r].bool()].tolist()
        n_prompt = ref.input_ids.shape[1]
        assert row[:n_prompt] == ref.input_ids[0].tolist() and row[n_prompt:] == labelled
        pad = int((batch.attention_mask[r] == 0).sum())
        assert batch.splices[r].start == pad + ref.splices[0].start and batch.splices[r].row == r
        assert (batch.labels[r][:pad + n_prompt] == IGNORE_INDEX).all()
        assert batch.position_ids[r, pad:].tolist() == list(range(len(row)))
    assert (batch.attention_mask[0] == 0).sum() > 0  # shorter row is left-padded
    assert batch.attention_mask[:, -1].all()


def test_several_jsonl_files_are_read_in_order_each_against_its_own_directory(tmp_path):
    first, second = write_data(tmp_path / "a", n=2), write_data(tmp_path / "b", n=3)
    data = AQADataset([first, second])
    assert [ex.id for ex in data] == ["r0", "r1", "r0", "r1", "r2"]
    assert [Path(ex.audios[0]).parent.parent.name for ex in data] == ["a", "a", "b", "b", "b"]
    assert all(Path(ex.audios[0]).is_file() for ex in data)
    assert [ex.id for ex in AQADataset([first, second], limit=3)] == ["r0", "r1", "r0"]  # the limit spans the files
    assert [ex.audios for ex in AQADataset(first)] == [ex.audios for ex in data][:2]
    with pytest.raises(ValueError, match="no training data"):
        AQADataset([])


def test_mixed_encoder_windows_per_batch(tmp_path):
    model = build_tiny_model()
    data = list(AQADataset(write_data(tmp_path, n=4)))  # clips of 0.5-1.25 s
    pairs = [[data[i], data[j]] for i in range(4) for j in range(4) if i != j]
    mixed = Collator(model, encoder_padding_s=2.0, short_window_share=0.5)
    frames = [mixed(p).features.shape[-1] for p in pairs]
    # short batches: the longest clip (<= 1.25 s) + 2 s, in whole seconds; the rest the full window
    assert set(frames) <= {300, 400, 3000} and 3000 in frames and min(frames) < 3000
    assert frames == [mixed(p).features.shape[-1] for p in pairs]  # decided by the record ids: reproducible
    short = mixed(pairs[frames.index(min(frames))])
    full = Collator(model)(pairs[frames.index(min(frames))])
    assert torch.equal(short.features, full.features[..., : short.features.shape[-1]])  # the full window's start
    assert torch.equal(short.input_ids, full.input_ids) and torch.equal(short.labels, full.labels)
    loss, _ = training_loss(model, model.connector, short)  # the encoder and connector take the shorter window
    assert torch.isfinite(loss)
    assert 3000 not in {Collator(model, encoder_padding_s=2.0, short_window_share=1.0)(p).features.shape[-1]
                        for p in pairs}
    assert {Collator(model, encoder_padding_s=2.0, short_window_share=0.0)(p).features.shape[-1] for p in pairs} == {3000}
    with pytest.raises(ValueError, match="short_window_share"):
        Collator(model, encoder_padding_s=2.0, short_window_share=1.5)
    with pytest.raises(ValueError, match="encoder padding"):
        Collator(model, encoder_padding_s=0.0)


def test_template_without_a_prefix_is_refused(tmp_path):
    model = build_tiny_model()
    model.tokenizer.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}"
                                     "{% if add_generation_prompt %}<assistant>{% endif %}")
    data = AQADataset(write_data(tmp_path, n=1))
    with pytest.raises(ValueError, match="prefix"):
        Collator(model)([data[0]])


def test_loss_reaches_only_the_connector(tmp_path):
    model = build_tiny_model()
    model.connector.train()
    batch = Collator(model)(list(AQADataset(write_data(tmp_path, n=2))))
    loss, n = training_loss(model, model.connector, batch)
    loss.backward()
    assert n == sum(len(r) + 1 for r in model.tokenizer(RESPONSES[:2])["input_ids"])  # response + <|im_end|>
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.connector.parameters())
    frozen = list(model.backend.llm_model.parameters()) + list(model.backend.perception.whisper.parameters())
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_schedule_warms_up_then_decays_to_the_floor():
    f = warmup_cosine(warmup=4, total=12, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(8) == pytest.approx(0.55) and f(12) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 12))


# ------------------------------------------------------------------ the loop


def test_a_few_steps_overfit_a_tiny_batch(tmp_path):
    model = build_tiny_model()
    # conftest's LLM (init std 0.02) gives near-uniform logits whatever its input, so nothing the
    # connector does can move its loss; larger random weights make the LLM input-sensitive
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.backend.llm_model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.3)
    opts = options(tmp_path, steps=20, batch_size=4, lr=3e-3, warmup_steps=0, save_every=100)
    result = train(opts, model)
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert set(rows[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "seconds"}
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.85 * first, (first, last)
    assert rows[0]["lr"] == pytest.approx(3e-3) and rows[-1]["lr"] < 1e-4  # cosine to zero


def test_bf16_autocast_on_the_cpu_trains_fp32_weights(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: False)
    model = build_tiny_model()
    before = connector_state(model)
    with caplog.at_level(logging.WARNING, logger=trainer_module.__name__):
        result = train(options(tmp_path, steps=2, precision="bf16", device="cpu"), model)
    assert "no native bfloat16" in caplog.text  # emulated bf16 is slow: the user is told
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    after = connector_state(model)
    assert all(v.dtype == torch.float32 for v in after.values())  # autocast, not bf16 weights
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_continues_exactly(tmp_path):
    straight = build_tiny_model()
    train(options(tmp_path / "a"), straight)

    class Interrupt(Exception):
        pass

    def stop_at_2(row):
        if row["step"] == 2:
            raise Interrupt

    first = build_tiny_model()
    with pytest.raises(Interrupt):
        train(options(tmp_path / "b"), first, on_step=stop_at_2)
    out = tmp_path / "b" / "out"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]
    fresh = build_tiny_model()
    torch.manual_seed(123)  # the resumed run must not depend on the RNG state it starts with
    result = train(options(tmp_path / "b", resume=True), fresh)
    assert result.steps == 4
    a, b = connector_state(straight), connector_state(fresh)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the final adapter is the official layout and loads strictly into a new model
    loaded = build_tiny_model(connector_weights=read_weights(out / "model.safetensors"))
    assert all(torch.equal(connector_state(loaded)[k], b[k]) for k in b)
    assert json.loads((out / "config.json").read_text())["placeholder_token"] == "<ph>"
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    with pytest.raises(ValueError, match="batch_size"):
        train(options(tmp_path / "b", resume=True, batch_size=1), build_tiny_model())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = build_tiny_model()
    if rank == 1:  # different starting weights: DDP must broadcast rank 0's
        with torch.no_grad():
            for p in model.connector.parameters():
                p.add_(1.0)
    # with a LoRA, which each rank initializes from its own RNG: DDP must broadcast it too
    opts = TrainOptions(data=Path(tmp) / "data" / "data.jsonl", out_dir=Path(tmp) / "out", steps=3, batch_size=1,
                        grad_accum=2, lr=1e-3, warmup_steps=1, save_every=2, loss_plot=False, device="cpu",
                        lora="audio")
    train(opts, model)
    lora = {k: v.detach().clone() for k, v in model.lora.state().items()}
    torch.save((connector_state(model), lora), Path(tmp) / f"rank{rank}.pt")


def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    write_data(tmp_path / "data")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    (a, lora_a), (b, lora_b) = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)
    start = connector_state(build_tiny_model())
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it trained
    assert any(v.any() for k, v in lora_a.items() if "lora_B" in k)  # the LoRA too (B starts at 0)
    saved = read_weights(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(saved["perception.connector." + k], a[k]) for k in a)
    assert all(torch.equal(saved[k], lora_a[k]) for k in lora_a)
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 3  # rank 0 only


def test_train_cli_reports_bad_input(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"),
                              "--steps", "1", "--json"])
    assert args.func(args) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    args = parser.parse_args(["train", "--data", "x.jsonl", "--out", str(tmp_path / "o"), "--json"])
    assert args.func(args) == 2
    assert "--steps or --epochs" in capsys.readouterr().err
    data = write_data(tmp_path / "d", n=1)  # of several files, the one missing is named
    args = parser.parse_args(["train", "--data", str(data), "--data", str(tmp_path / "second.jsonl"),
                              "--out", str(tmp_path / "o"), "--steps", "1", "--json"])
    assert args.func(args) == 2
    assert "--data " + str(tmp_path / "second.jsonl") + ": file not found" in capsys.readouterr().err


def test_unknown_precision_is_refused_before_any_work(tmp_path):
    options = TrainOptions(data=tmp_path / "missing.jsonl", out_dir=tmp_path / "out", steps=1, precision="fp16",
                           loss_plot=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        train(options)
    assert not (tmp_path / "out").exists()


def test_plain_cuda_device_becomes_this_ranks_gpu(monkeypatch):
    """`--device cuda` names no index; torch.cuda.set_device needs one (found on an H200)."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = trainer_module._setup_distributed("cuda")
    assert d.device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    assert trainer_module._setup_distributed("cuda:0").device == torch.device("cuda", 0)
