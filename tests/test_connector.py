"""The Q-Former connector: official names/shapes, and parity with a BERT encoder built by transformers."""

import pytest
import torch

from desta_edge.runtime.checkpoint import connector_state
from desta_edge.runtime.config import DestaConfig, tapped_layers
from desta_edge.runtime.connector import ConnectorShape, QFormerConnector


def official_names(n_layers: int, n_taps: int = 4) -> set[str]:
    p = "perception.connector."
    names = {f"{p}layer_prompts.{i}" for i in range(n_taps)} | {f"{p}layer_weights"}
    for j in range(n_layers):
        q = f"{p}qformer.layer.{j}."
        for block in ("attention", "crossattention"):
            for lin in ("query", "key", "value"):
                names |= {f"{q}{block}.self.{lin}.weight", f"{q}{block}.self.{lin}.bias"}
            names |= {f"{q}{block}.output.dense.weight", f"{q}{block}.output.dense.bias"}
            names |= {f"{q}{block}.output.LayerNorm.weight", f"{q}{block}.output.LayerNorm.bias"}
        for mod in ("intermediate.dense", "output.dense", "output.LayerNorm"):
            names |= {f"{q}{mod}.weight", f"{q}{mod}.bias"}
    names |= {f"{p}proj.0.weight", f"{p}proj.0.bias", f"{p}proj.1.weight", f"{p}proj.1.bias"}
    return names


def test_official_names_and_shapes_for_desta25_llama31():
    # DeSTA2.5-Audio: whisper-large-v3 (d 1280, 20 heads) -> Llama-3.1-8B (4096), 6 Q-Former layers.
    with torch.device("meta"):
        c = QFormerConnector(ConnectorShape(d_encoder=1280, n_heads=20, d_llm=4096, prompt_size=64, n_layers=6))
    state = connector_state(c)
    assert set(state) == official_names(6)
    p = "perception.connector."
    assert state[p + "layer_prompts.3"].shape == (1, 64, 1280)
    assert state[p + "layer_weights"].shape == (64, 4)
    assert state[p + "qformer.layer.5.intermediate.dense.weight"].shape == (3072, 1280)
    assert state[p + "qformer.layer.5.output.dense.weight"].shape == (1280, 3072)
    assert state[p + "qformer.layer.0.crossattention.self.key.weight"].shape == (1280, 1280)
    assert state[p + "proj.1.weight"].shape == (4096, 1280)
    assert state[p + "proj.0.weight"].shape == (1280,)


def test_tapped_layers_official_and_even_spacing():
    assert tapped_layers("openai/whisper-large-v3", 32) == (7, 15, 23, 31)
    assert tapped_layers("openai/whisper-small", 12) == (2, 5, 8, 11)
    assert tapped_layers("openai/whisper-medium", 24) == (5, 11, 17, 23)
    assert tapped_layers("openai/whisper-tiny", 4) == (0, 1, 2, 3)
    assert tapped_layers("some/other-encoder", 32) == (7, 15, 23, 31)
    assert tapped_layers("some/other-encoder", 6) == (0, 2, 3, 5)
    assert DestaConfig(target_layer_ids=(1, 2, 3, 5)).taps(6) == (1, 2, 3, 5)
    with pytest.raises(ValueError, match="layers"):
        tapped_layers("x", 3)


def test_matches_transformers_bert_encoder_with_cross_attention():
    """Same weights in transformers' BertEncoder (the reference's Q-Former) give the same output."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEncoder

    torch.manual_seed(0)
    shape = ConnectorShape(d_encoder=48, n_heads=4, d_llm=40, prompt_size=8, n_layers=2)
    ours = QFormerConnector(shape).eval()
    with torch.no_grad():
        ours.layer_weights.normal_()  # make the per-query mix non-uniform
        for p in ours.proj.parameters():
            p.normal_(std=0.1)
    cfg = BertConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=48, add_cross_attention=True, is_decoder=True)
    cfg._attn_implementation = "eager"
    bert = BertEncoder(cfg).eval()
    missing, unexpected = bert.load_state_dict(ours.qformer.state_dict(), strict=False)
    assert not unexpected and all("position" in k for k in missing), (missing, unexpected)

    taps = [torch.randn(2, 30, 48) for _ in range(4)]
    with torch.no_grad():
        got = ours(taps)
        outs = [bert(ours.layer_prompts[i].expand(2, -1, -1), encoder_hidden_states=t).last_hidden_state
                for i, t in enumerate(taps)]
        stacked = torch.stack(outs, 0).permute(1, 2, 0, 3)  # the reference's mixing, step by step
        w = torch.softmax(ours.layer_weights, dim=-1).unsqueeze(-1)
        want = ours.proj((stacked * w).sum(dim=2))
    assert got.shape == (2, 8, 40)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_wrong_number_of_taps_is_an_error():
    c = QFormerConnector(ConnectorShape(d_encoder=16, n_heads=2, d_llm=8, prompt_size=2, n_layers=1))
    with pytest.raises(ValueError, match="4 tapped layers, got 3"):
        c([torch.zeros(1, 5, 16)] * 3)


def test_input_norm_reads_each_frame_normalized_and_adds_no_keys():
    shape = ConnectorShape(d_encoder=16, n_heads=2, d_llm=8, prompt_size=3, n_layers=1)
    torch.manual_seed(0)
    plain = QFormerConnector(shape).eval()
    normed = QFormerConnector(ConnectorShape(**{**shape.__dict__, "input_norm": True})).eval()
    assert set(connector_state(normed)) == set(connector_state(plain))  # the official layout, unchanged
    normed.load_state_dict(plain.state_dict())
    taps = [torch.randn(2, 5, 16) for _ in range(4)]
    # a per-frame offset and scale (Whisper's large, nearly constant dimensions) no longer reach the queries
    shifted = [t * torch.rand(2, 5, 1).add(0.5) * 7 + torch.randn(2, 5, 1) * 30 for t in taps]
    with torch.no_grad():
        torch.testing.assert_close(normed(shifted), normed(taps), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(plain(shifted), plain(taps), atol=1e-2)
        want = plain([torch.nn.functional.layer_norm(t, (16,)) for t in taps])
        torch.testing.assert_close(normed(taps), want)  # exactly a weightless LayerNorm in front


def test_input_norm_is_written_only_when_on():
    assert "connector_input_norm" not in DestaConfig().to_dict()  # official configs stay as they are
    assert DestaConfig.from_dict({"model_type": "desta25"}).connector_input_norm is False
    on = DestaConfig(connector_input_norm=True)
    assert on.to_dict()["connector_input_norm"] is True
    assert DestaConfig.from_dict(on.to_dict()) == on
    from desta_edge.runtime.presets import PRESETS

    assert PRESETS["tiny"].config.connector_input_norm  # desta-edge's own adapters are trained with it
