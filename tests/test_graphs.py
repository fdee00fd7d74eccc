"""The explicit-cache forward passes used for export equal transformers' own forward passes."""

import torch

from conftest import tiny_llm, tiny_whisper
from desta_edge.export.graphs import LlamaStep, WhisperCrossKV, WhisperDecoderStep


def test_llama_step_matches_transformers_with_left_padding_and_cache():
    llm, _ = tiny_llm()
    step = LlamaStep(llm).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # row 1 is left-padded
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    emb = llm.get_input_embeddings()(ids)
    cfg = llm.config
    empty = torch.zeros(cfg.num_hidden_layers, 2, cfg.num_key_value_heads, 0, cfg.hidden_size // cfg.num_attention_heads)
    with torch.no_grad():
        ref = llm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=True)
        logits, k, v = step(emb, mask, pos, empty, empty)
        torch.testing.assert_close(logits, ref.logits[:, -1], atol=1e-4, rtol=1e-4)
        nxt = torch.randint(5, 200, (2, 1))
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        pos2 = pos[:, -1:] + 1
        ref2 = llm(input_ids=nxt, attention_mask=mask2, position_ids=pos2, past_key_values=ref.past_key_values, use_cache=True)
        logits2, k2, v2 = step(llm.get_input_embeddings()(nxt), mask2, pos2, k, v)
    torch.testing.assert_close(logits2, ref2.logits[:, -1], atol=1e-4, rtol=1e-4)
    assert k2.shape[3] == 10


def test_whisper_decoder_step_matches_transformers():
    whisper, _ = tiny_whisper()
    whisper.eval()
    final = torch.randn(2, 1500, whisper.config.d_model)
    cross_k, cross_v = WhisperCrossKV(whisper)(final)
    step = WhisperDecoderStep(whisper).eval()
    cfg = whisper.config
    empty = torch.zeros(cfg.decoder_layers, 2, cfg.decoder_attention_heads, 0, cfg.d_model // cfg.decoder_attention_heads)
    prompt = torch.tensor([[1, 2], [1, 2]])
    with torch.no_grad():
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = whisper.model.decoder(input_ids=prompt, encoder_hidden_states=final, past_key_values=cache, use_cache=True)
        want = whisper.proj_out(out.last_hidden_state[:, -1])
        got, k, v = step(prompt, cross_k, cross_v, empty, empty)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        nxt = torch.tensor([[7], [9]])
        out2 = whisper.model.decoder(input_ids=nxt, encoder_hidden_states=final, past_key_values=out.past_key_values, use_cache=True)
        got2, _, _ = step(nxt, cross_k, cross_v, k, v)
    torch.testing.assert_close(got2, whisper.proj_out(out2.last_hidden_state[:, -1]), atol=1e-4, rtol=1e-4)
