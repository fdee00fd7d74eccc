"""Official-layout checkpoints: strict loading, round trips, official config.json."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from conftest import build_tiny_model, tiny_config, tiny_llm, tiny_whisper
from desta_edge.runtime.checkpoint import CONNECTOR_PREFIX, CheckpointError, read_weights
from desta_edge.runtime.config import DestaConfig
from desta_edge.runtime.model import DestaModel

OFFICIAL_CONFIG = {  # the fields of DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B's config.json (+ bookkeeping)
    "architectures": ["DeSTA25AudioModel"],
    "model_type": "desta25",
    "llm_model_id": "DeSTA-ntu/Llama-3.1-8B-Instruct",
    "encoder_model_id": "openai/whisper-large-v3",
    "connector_mode": "qformer_1",
    "qformer_num_hidden_layers": 6,
    "prompt_size": 64,
    "use_lora": False,
    "audio_locator": "<|AUDIO|>",
    "placeholder_token": "<|reserved_special_token_87|>",
    "info": "desta",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.3",
}


def test_reads_the_official_config_without_io(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(OFFICIAL_CONFIG))
    cfg = DestaConfig.from_json(p)
    assert cfg.qformer_num_hidden_layers == 6 and cfg.prompt_size == 64
    assert cfg.encoder_model_id == "openai/whisper-large-v3" and cfg.taps(32) == (7, 15, 23, 31)
    assert cfg.placeholder_token == "<|reserved_special_token_87|>"
    back = cfg.to_dict()
    assert {k: back[k] for k in OFFICIAL_CONFIG if k in back} == {k: OFFICIAL_CONFIG[k] for k in back if k in OFFICIAL_CONFIG}
    with pytest.raises(ValueError, match="connector_mode"):
        DestaConfig(connector_mode="mlp")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        DestaConfig.from_json(tmp_path / "bad.json")


def test_round_trip_is_exact(tmp_path):
    model = build_tiny_model()
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == model.connector_state_dict().keys()
    assert all(k.startswith(CONNECTOR_PREFIX) for k in saved)
    assert json.loads((tmp_path / "config.json").read_text())["prompt_size"] == model.config.prompt_size
    whisper, wtok = tiny_whisper()
    llm, ltok = tiny_llm()
    again = DestaModel.from_components(tiny_config(), whisper, wtok, llm, ltok, connector_weights=read_weights(tmp_path / "model.safetensors"))
    for k, v in model.connector_state_dict().items():
        assert torch.equal(v, again.connector_state_dict()[k]), k
    # and back out again: byte-identical tensors
    again.save_pretrained(tmp_path / "again")
    saved2 = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert all(torch.equal(saved[k], saved2[k]) for k in saved)


def test_fp16_save_loads_into_fp32(tmp_path):
    model = build_tiny_model()
    model.save_pretrained(tmp_path, dtype=torch.float16)
    w = read_weights(tmp_path / "model.safetensors")
    assert all(v.dtype == torch.float16 for v in w.values())
    again = build_tiny_model(connector_weights=w)
    assert next(again.connector.parameters()).dtype == torch.float32


@pytest.mark.parametrize("change, message", [
    ("missing", "missing connector keys: perception.connector.qformer.layer.1.output.dense.bias"),
    ("extra", "unexpected keys: perception.connector.extra.weight"),
    ("shape", "perception.connector.layer_weights: expected shape (4, 4), found (4, 3)"),
])
def test_strict_loading_names_the_bad_key(change, message):
    weights = build_tiny_model().connector_state_dict()
    if change == "missing":
        del weights["perception.connector.qformer.layer.1.output.dense.bias"]
    elif change == "extra":
        weights["perception.connector.extra.weight"] = torch.zeros(1)
    else:
        weights["perception.connector.layer_weights"] = torch.zeros(4, 3)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_tiny_model(connector_weights=weights)


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_weights(p)
    with pytest.raises(CheckpointError, match="missing weights file"):
        read_weights(tmp_path / "nope.safetensors")


def test_from_pretrained_loads_a_checkpoint_dir_with_local_backbones(tmp_path, caplog):
    """A checkpoint directory whose config names backbone directories next to it."""
    whisper, wtok = tiny_whisper()
    llm, ltok = tiny_llm()
    whisper.save_pretrained(tmp_path / "whisper"); wtok.save_pretrained(tmp_path / "whisper")
    llm.save_pretrained(tmp_path / "llm"); ltok.save_pretrained(tmp_path / "llm")
    model = build_tiny_model()
    cfg = tiny_config(llm_model_id="llm", encoder_model_id="whisper")
    from desta_edge.runtime.checkpoint import save_checkpoint

    save_checkpoint(tmp_path, cfg, model.connector)
    loaded = DestaModel.from_pretrained(tmp_path, device="cpu")
    assert loaded.audio_features and loaded.connector is not None
    for k, v in model.connector_state_dict().items():
        assert torch.equal(v, loaded.connector_state_dict()[k])
    conv = [{"role": "user", "content": "<|AUDIO|> hi", "audios": [{"audio": (torch.zeros(800).numpy(), 16000), "text": "x"}]}]
    assert loaded.generate(conv, max_new_tokens=3).generated_ids == model.generate(conv, max_new_tokens=3).generated_ids
    # a checkpoint without weights is transcript-only, and says so
    (tmp_path / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="desta_edge.runtime.model"):
        for _ in range(2):
            assert DestaModel.from_pretrained(tmp_path, device="cpu").audio_features is False
    assert sum("no trained adapter yet" in r.getMessage() for r in caplog.records) == 1  # said once per name
    with pytest.raises(ValueError, match="no trained adapter"):
        DestaModel.from_pretrained(tmp_path, device="cpu", audio_features=True)


def test_unknown_model_and_backend_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a preset"):
        DestaModel.from_pretrained(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        DestaModel.from_pretrained("tiny", backend="tensorflow")
