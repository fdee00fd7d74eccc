"""Export-friendly forward passes with explicit key/value tensors.

transformers' models keep their caches in Python objects, which a graph exporter cannot trace.
These modules run the *same weights* (they hold references to the transformers modules) with
the cache as plain tensors in and out, stacked over layers:

    WhisperCrossKV:     final encoder states [B, T, D]          -> cross k, v [L, B, H, T, Dh]
    WhisperDecoderStep: ids [B, S], cross k/v, past k/v [L, B, H, P, Dh] -> last logits [B, V], k/v [.., P+S, ..]
    LlamaStep:          embeds [B, S, D], mask [B, P+S], positions [B, S], past k/v [L, B, Hkv, P, Dh]
                        -> last logits [B, V], k/v [L, B, Hkv, P+S, Dh]

Only the last position's logits leave the graph (all that greedy decoding and sampling need).
Parity with the transformers forward passes is tested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -1e9  # finite, so fully masked (left-padding) rows give no NaN


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    # q: [B, H, S, Dh]; k, v: [B, H, K, Dh]; bias: broadcastable to [B, H, S, K]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


def _causal_bias(s: int, p: torch.Tensor | int, key_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """[B or 1, 1, S, P+S]: query i (at position P+i) sees keys 0..P+i that the mask allows."""
    total = p + s
    keys = torch.arange(total)
    queries = torch.arange(s) + p
    allowed = (keys[None, :] <= queries[:, None])[None, None]  # [1, 1, S, P+S]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.full((), MASK_VALUE, dtype=dtype))


class WhisperCrossKV(nn.Module):
    """Cross-attention keys/values of every decoder layer, computed once per clip."""

    def __init__(self, whisper) -> None:
        super().__init__()
        self.layers = whisper.model.decoder.layers
        cfg = whisper.config
        self.h, self.dh = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads

    def forward(self, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = final.shape
        ks, vs = [], []
        for layer in self.layers:
            att = layer.encoder_attn
            ks.append(att.k_proj(final).view(b, t, self.h, self.dh).transpose(1, 2))
            vs.append(att.v_proj(final).view(b, t, self.h, self.dh).transpose(1, 2))
        return torch.stack(ks), torch.stack(vs)


class WhisperDecoderStep(nn.Module):
    def __init__(self, whisper) -> None:
        super().__init__()
        self.decoder = whisper.model.decoder
        self.proj_out = whisper.proj_out
        cfg = whisper.config
        self.h, self.dh = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads
        self.scale = self.dh**-0.5

    def forward(self, input_ids, cross_k, cross_v, past_k, past_v):
        b, s = input_ids.shape
        p = past_k.shape[3]
        dec = self.decoder
        x = dec.embed_tokens(input_ids) + dec.embed_positions.weight[p : p + s]  # [B, S, D]
        bias = _causal_bias(s, p, None, x.dtype)
        heads = lambda t: t.view(b, s, self.h, self.dh).transpose(1, 2)  # noqa: E731
        ks, vs = [], []
        for i, layer in enumerate(dec.layers):
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = heads(att.q_proj(h) * self.scale)
            k = torch.cat([past_k[i], heads(att.k_proj(h))], dim=2)
            v = torch.cat([past_v[i], heads(att.v_proj(h))], dim=2)
            ks.append(k)
            vs.append(v)
            o = _attend(q, k, v, bias, 1.0)  # q is pre-scaled, as in Whisper
            x = x + att.out_proj(o.transpose(1, 2).reshape(b, s, -1))
            cross = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            o = _attend(heads(cross.q_proj(h) * self.scale), cross_k[i], cross_v[i], None, 1.0)
            x = x + cross.out_proj(o.transpose(1, 2).reshape(b, s, -1))
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(F.gelu(layer.fc1(h)))
        x = dec.layer_norm(x[:, -1])
        return self.proj_out(x), torch.stack(ks), torch.stack(vs)


class LlamaStep(nn.Module):
    """Llama-family (Llama 3, SmolLM2) causal LM step on input embeddings."""

    def __init__(self, llm) -> None:
        super().__init__()
        cfg = llm.config
        # static rotary frequencies (default or Llama-3.1's "llama3" scaling, both precomputed by
        # transformers' rotary module); dynamic schemes would change them per length
        if getattr(llm.model.rotary_emb, "rope_type", "default") not in ("default", "llama3"):
            raise ValueError(f"rope type {llm.model.rotary_emb.rope_type!r} is not supported for export")
        self.model = llm.model
        self.lm_head = llm.lm_head
        self.h, self.hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rotary = llm.model.rotary_emb
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone().float(), persistent=False)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))

    def forward(self, inputs_embeds, attention_mask, position_ids, past_k, past_v):
        b, s, _ = inputs_embeds.shape
        p = past_k.shape[3]
        freqs = position_ids[..., None].float() * self.inv_freq  # [B, S, Dh/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos = (emb.cos() * self.rope_scale).to(inputs_embeds.dtype)[:, None]  # [B, 1, S, Dh]
        sin = (emb.sin() * self.rope_scale).to(inputs_embeds.dtype)[:, None]
        bias = _causal_bias(s, p, attention_mask, inputs_embeds.dtype)
        x = inputs_embeds
        rep = self.h // self.hkv
        ks, vs = [], []
        for i, layer in enumerate(self.model.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            q = att.q_proj(h).view(b, s, self.h, self.dh).transpose(1, 2)
            k = att.k_proj(h).view(b, s, self.hkv, self.dh).transpose(1, 2)
            v = att.v_proj(h).view(b, s, self.hkv, self.dh).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            k = torch.cat([past_k[i], k], dim=2)
            v = torch.cat([past_v[i], v], dim=2)
            ks.append(k)
            vs.append(v)
            o = _attend(q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), bias, self.dh**-0.5)
            x = x + att.o_proj(o.transpose(1, 2).reshape(b, s, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.model.norm(x[:, -1])
        return self.lm_head(x), torch.stack(ks), torch.stack(vs)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
