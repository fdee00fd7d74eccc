"""The Q-Former connector: learned queries read four encoder layers and become LLM embeddings.

Written for this project; parameter names and shapes match the official checkpoint, whose
connector is a BERT encoder (default BERT config: feed-forward 3072, GELU, LayerNorm eps 1e-12)
with cross-attention, at the encoder's width and head count:

    perception.connector.layer_prompts.{i}        [1, prompt_size, d_enc]   one query set per tap
    perception.connector.layer_weights            [prompt_size, n_taps]     per-query mix over taps
    perception.connector.qformer.layer.{j}.attention.self.{query,key,value}     self-attention
    perception.connector.qformer.layer.{j}.attention.output.{dense,LayerNorm}
    perception.connector.qformer.layer.{j}.crossattention.self.{query,key,value}  queries -> encoder
    perception.connector.qformer.layer.{j}.crossattention.output.{dense,LayerNorm}
    perception.connector.qformer.layer.{j}.intermediate.dense                 d_enc -> 3072
    perception.connector.qformer.layer.{j}.output.{dense,LayerNorm}           3072 -> d_enc
    perception.connector.proj.0 (LayerNorm d_enc), proj.1 (Linear d_enc -> d_llm)

Self-attention over the queries is bidirectional (no mask). The same Q-Former weights serve
every tap; only the query sets differ.

`input_norm` (desta-edge's, off for official checkpoints): each tapped layer goes through a
LayerNorm without weights before the Q-Former reads it. Whisper's residual stream carries a few
large, nearly constant dimensions; from the raw taps a freshly initialized Q-Former passes on
almost nothing that differs between clips, and four training runs never learned to read the
voice. With the taps normalized, 100 steps on a gender question did (training/RUNS.md, run 5).
No weights means no new checkpoint keys, so the layout stays the official one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BERT_INTERMEDIATE_SIZE = 3072  # BERT's default feed-forward width, kept whatever d_enc is
BERT_LAYER_NORM_EPS = 1e-12
BERT_DROPOUT = 0.1  # hidden and attention dropout of the default BERT config (training only)
INPUT_NORM_EPS = 1e-5  # epsilon of the weightless LayerNorm on the taps (input_norm)


@dataclass(frozen=True)
class ConnectorShape:
    """Sizes the connector is built with (taken from the backbones' configs, no I/O here)."""

    d_encoder: int  # Whisper d_model
    n_heads: int  # Whisper encoder attention heads
    d_llm: int  # LLM hidden size
    n_taps: int = 4  # tapped encoder layers
    prompt_size: int = 64  # queries per tap
    n_layers: int = 2  # Q-Former layers
    intermediate_size: int = BERT_INTERMEDIATE_SIZE
    dropout: float = BERT_DROPOUT
    input_norm: bool = False  # read the taps through a weightless LayerNorm (see the module notes)


class _Attention(nn.Module):
    """BERT self-/cross-attention projections (`self.{query,key,value}`)."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"width {d} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: [B, Q, D] queries; context: [B, T, D] keys/values
        b, q_len, d = x.shape
        h = self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, S, D] -> [B, H, S, D/H]
            return t.view(b, -1, h, d // h).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(context)), heads(self.value(context))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # [B, H, Q, D/H]
        return out.transpose(1, 2).reshape(b, q_len, d)


class _AddNorm(nn.Module):
    """BERT's `output` block: dense, dropout, residual add, LayerNorm."""

    def __init__(self, d_in: int, d: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d)
        self.LayerNorm = nn.LayerNorm(d, eps=BERT_LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _AttentionBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.self = _Attention(d, n_heads, dropout)
        self.output = _AddNorm(d, d, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, context), x)


class _Intermediate(nn.Module):
    def __init__(self, d: int, d_ff: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class QFormerLayer(nn.Module):
    """Self-attention over the queries, cross-attention to the encoder, feed-forward."""

    def __init__(self, shape: ConnectorShape) -> None:
        super().__init__()
        d, h, p = shape.d_encoder, shape.n_heads, shape.dropout
        self.attention = _AttentionBlock(d, h, p)
        self.crossattention = _AttentionBlock(d, h, p)
        self.intermediate = _Intermediate(d, shape.intermediate_size)
        self.output = _AddNorm(shape.intermediate_size, d, p)

    def forward(self, queries: torch.Tensor, encoder_states: torch.Tensor) -> torch.Tensor:
        x = self.attention(queries, queries)  # [B, Q, D]
        x = self.crossattention(x, encoder_states)  # [B, Q, D]
        return self.output(self.intermediate(x), x)


class QFormerStack(nn.Module):
    """`qformer.layer.{j}`: the BERT-encoder-shaped stack."""

    def __init__(self, shape: ConnectorShape) -> None:
        super().__init__()
        self.layer = nn.ModuleList(QFormerLayer(shape) for _ in range(shape.n_layers))

    def forward(self, queries: torch.Tensor, encoder_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            queries = layer(queries, encoder_states)
        return queries


class QFormerConnector(nn.Module):
    """Four tapped encoder layers -> `prompt_size` audio embeddings in the LLM's space."""

    def __init__(self, shape: ConnectorShape) -> None:
        super().__init__()
        self.shape = shape
        self.layer_prompts = nn.ParameterList(
            nn.Parameter(torch.randn(1, shape.prompt_size, shape.d_encoder))
            for _ in range(shape.n_taps)
        )
        self.layer_weights = nn.Parameter(torch.zeros(shape.prompt_size, shape.n_taps))
        self.qformer = QFormerStack(shape)
        self.proj = nn.Sequential(nn.LayerNorm(shape.d_encoder), nn.Linear(shape.d_encoder, shape.d_llm))
        self._init_linear_like_bert()

    def _init_linear_like_bert(self) -> None:
        std = 0.02  # BERT's initializer_range
        for module in self.qformer.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.proj[1].weight, std=1.0 / math.sqrt(self.shape.d_encoder))
        nn.init.zeros_(self.proj[1].bias)

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """taps: n_taps tensors [B, T, d_enc] (raw encoder layer outputs) -> [B, prompt_size, d_llm]."""
        if len(taps) != self.shape.n_taps:
            raise ValueError(f"expected {self.shape.n_taps} tapped layers, got {len(taps)}")
        b = taps[0].shape[0]
        if self.shape.input_norm:
            # a static normalized shape: `t.shape[-1:]` is traced as a tensor and the ONNX export fails
            taps = [F.layer_norm(t, (self.shape.d_encoder,), eps=INPUT_NORM_EPS) for t in taps]
        outs = [
            self.qformer(prompt.expand(b, -1, -1), states)  # [B, Q, d_enc]
            for prompt, states in zip(self.layer_prompts, taps)
        ]
        stacked = torch.stack(outs, dim=2)  # [B, Q, n_taps, d_enc]
        mix = self.layer_weights.softmax(dim=-1).unsqueeze(-1)  # [Q, n_taps, 1]
        mixed = (stacked * mix.to(stacked.dtype)).sum(dim=2)  # [B, Q, d_enc]
        return self.proj(mixed)
