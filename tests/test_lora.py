"""LoRA on the LLM's q/k/v: official key names both ways, where it applies ("all" / "audio"), a
fresh LoRA changing nothing, the prefix cache staying exact, and training reaching it."""

from __future__ import annotations

import json

import pytest
import torch

from desta_edge.runtime.checkpoint import CheckpointError, read_weights
from desta_edge.runtime.config import DestaConfig
from desta_edge.runtime.lora import NEVER, audio_positions
from desta_edge.runtime.model import DestaModel
from desta_edge.runtime.prompt import Splice
from desta_edge.training.dataset import AQADataset, Collator
from desta_edge.training.trainer import train, training_loss

from conftest import tiny_config, tiny_llm, tiny_whisper, tone
from test_trainer import options, write_data

QUESTION = "What is this?"


def build(scope: str | None, *, weights=None, audio_features: bool = True, lora_std: float = 0.0) -> DestaModel:
    """The tiny model (sharpened LLM, so its answers depend on its input), with a LoRA of `scope`."""
    whisper, wtok = tiny_whisper()
    llm, ltok = tiny_llm()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in llm.parameters():
            if p.ndim == 2:
                p.normal_(std=0.3)
    torch.manual_seed(2)
    config = tiny_config(use_lora=scope is not None, lora_scope=scope or "all")
    model = DestaModel.from_components(config, whisper, wtok, llm, ltok, connector_weights=weights,
                                       audio_features=audio_features)
    if lora_std:
        torch.manual_seed(7)
        with torch.no_grad():
            for b in model.lora.B:
                b.normal_(std=lora_std)
    return model


def audio_turn(text: str = "beep") -> list[dict]:
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"<|AUDIO|>\n{QUESTION}",
             "audios": [{"audio": (tone(0.5), 16000), "text": text}]}]


TEXT_TURN = [{"role": "user", "content": QUESTION}]


def ids(model: DestaModel, conversation, **kw) -> list[int]:
    return model.generate(conversation, max_new_tokens=8, **kw).generated_ids[0]


def test_audio_positions_follow_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    splices = [Splice(row=0, start=3, n_audio=4, n_text=1), Splice(row=1, start=4, n_audio=4, n_text=1),
               Splice(row=1, start=2, n_audio=4, n_text=1)]
    assert audio_positions(mask, splices).tolist() == [1, 2, NEVER]  # row 1: its first clip; row 2: no audio
    assert audio_positions(mask, []) is None


def test_a_fresh_lora_changes_nothing():
    plain, fresh = build(None), build("all")
    assert fresh.lora is not None and not any(b.detach().any() for b in fresh.lora.B)
    for conversation in (audio_turn(), TEXT_TURN):
        assert ids(fresh, conversation) == ids(plain, conversation)


def test_audio_scope_applies_from_the_given_position_on():
    model = build("audio", lora_std=0.5)
    llm, lora = model.backend.llm_model, model.lora
    embeds = torch.randn(2, 10, llm.config.hidden_size)
    pos = torch.arange(10).expand(2, 10)
    with torch.no_grad():
        base = llm(inputs_embeds=embeds, position_ids=pos).logits
        with lora.active(torch.tensor([4, NEVER])):
            gated = llm(inputs_embeds=embeds, position_ids=pos).logits
        after = llm(inputs_embeds=embeds, position_ids=pos).logits
    assert torch.equal(gated[0, :4], base[0, :4])  # causal: nothing before the start changes
    assert (gated[0, 4:] - base[0, 4:]).abs().amax(-1).min() > 1e-3  # every position from the start on does
    assert torch.equal(gated[1], base[1])  # a row without audio is the backbone
    assert torch.equal(after, base)  # outside `active` the hooks add nothing


def test_audio_scope_keeps_text_only_answers_exact_and_all_scope_does_not():
    plain = build(None)
    audio_only, everywhere = build("audio", lora_std=0.5), build("all", lora_std=0.5)
    assert ids(audio_only, TEXT_TURN) == ids(plain, TEXT_TURN)
    assert ids(everywhere, TEXT_TURN) != ids(plain, TEXT_TURN)
    assert ids(audio_only, audio_turn()) != ids(plain, audio_turn())
    # the transcript-only ablation runs the plain backbone
    for model in (audio_only, everywhere):
        model.audio_features = False
        assert ids(model, audio_turn()) == ids(plain_ablation(), audio_turn())


def plain_ablation() -> DestaModel:
    model = build(None)
    model.audio_features = False
    return model


@pytest.mark.parametrize("scope", ["all", "audio"])
def test_prefix_cache_gives_the_same_answers(scope):
    model = build(scope, lora_std=0.5)
    model.use_prefix_cache = False
    full = ids(model, audio_turn())
    model.use_prefix_cache = True
    assert ids(model, audio_turn()) == full  # computes the prefix
    assert ids(model, audio_turn("boop")) == ids(build(scope, lora_std=0.5), audio_turn("boop"))  # reuses it
    model.audio_features = False  # the ablation must not reuse a prefix computed with LoRA on
    assert ids(model, audio_turn()) == ids(plain_ablation(), audio_turn())
    model.audio_features = True
    assert ids(model, audio_turn()) == full


def test_checkpoint_round_trip_uses_the_official_names(tmp_path):
    model = build("audio", lora_std=0.5)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["use_lora"] is True and config["lora_scope"] == "audio"
    weights = read_weights(tmp_path / "model.safetensors")
    lora_keys = sorted(k for k in weights if not k.startswith("perception.connector."))
    assert len(lora_keys) == 2 * 3 * 2  # A and B of q, k, v in 2 layers
    d, kv = 32, 2 * 8  # hidden size; key/value heads x head size
    assert weights["llm_model.model.layers.0.self_attn.q_proj.lora_A.default.weight"].shape == (16, d)
    assert weights["llm_model.model.layers.1.self_attn.k_proj.lora_B.default.weight"].shape == (kv, 16)
    again = build("audio", weights=weights)
    for name, value in model.lora.state().items():
        assert torch.equal(again.lora.state()[name], value), name
    assert ids(again, audio_turn()) == ids(model, audio_turn())

    with pytest.raises(CheckpointError, match="use_lora"):  # LoRA weights, a config without LoRA
        build(None, weights=weights)
    del weights["llm_model.model.layers.1.self_attn.v_proj.lora_A.default.weight"]
    with pytest.raises(CheckpointError, match="v_proj.lora_A"):
        build("audio", weights=weights)


def test_config_writes_the_scope_only_with_lora():
    assert "lora_scope" not in DestaConfig().to_dict()
    assert DestaConfig(use_lora=True, lora_scope="audio").to_dict()["lora_scope"] == "audio"
    with pytest.raises(ValueError, match="lora_scope"):
        DestaConfig(use_lora=True, lora_scope="text")


def test_training_reaches_the_lora_and_resumes_it_exactly(tmp_path):
    model = build("audio")
    model.connector.train()
    batch = Collator(model)(list(AQADataset(write_data(tmp_path / "grad", n=2))))
    for p in model.lora.parameters():
        p.requires_grad_(True)
    loss, _ = training_loss(model, model.connector, batch)
    loss.backward()
    assert all(float(b.grad.abs().sum()) > 0 for b in model.lora.B)  # (A's gradient is 0 while B is)
    assert all(p.grad is None for p in model.backend.llm_model.parameters())

    straight = build(None)
    train(options(tmp_path / "a", lora="audio"), straight)
    assert straight.config.use_lora and any(b.detach().any() for b in straight.lora.B)

    class Interrupt(Exception):
        pass

    def stop_at_2(row):
        if row["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(options(tmp_path / "b", lora="audio"), build(None), on_step=stop_at_2)
    resumed = build(None)
    train(options(tmp_path / "b", lora="audio", resume=True), resumed)
    for name, value in straight.lora.state().items():
        assert torch.equal(resumed.lora.state()[name], value), name
    saved = DestaModel.from_components(
        DestaConfig.from_json(tmp_path / "b" / "out" / "config.json"), *tiny_whisper(), *tiny_llm(),
        connector_weights=read_weights(tmp_path / "b" / "out" / "model.safetensors"))
    assert saved.lora.scope == "audio"
    assert all(torch.equal(saved.lora.state()[k], v) for k, v in straight.lora.state().items())


def test_export_refuses_a_lora_model(tmp_path):
    pytest.importorskip("onnx")
    from desta_edge.export.onnx import export_onnx

    with pytest.raises(ValueError, match="LoRA"):
        export_onnx(build("audio"), "lora-model", tmp_path / "export")
