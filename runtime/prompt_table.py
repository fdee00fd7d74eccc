"""The TensorRT-LLM boundary: one DeSTA prompt batch as token ids plus a prompt-embedding table.

TensorRT-LLM's runner takes token ids, not input embeddings. Its prompt-tuning input (the
one multimodal pipelines use) adds a second lookup table: an id at or past the vocabulary
(`vocab_size + r`) reads row `r` of the prompt table instead of the embedding matrix. A DeSTA
prompt therefore goes in as

    ordinary ids ... <start_audio> [vocab + k*P + 0 ... vocab + k*P + P-1] [transcript ids] <end_audio> ...

where clip k's P (= prompt_size) audio embeddings are rows k*P .. k*P+P-1 of the table, and
the transcript stays as its own token ids (the LLM embeds them exactly as `splice` would). The
table holds the clips of the whole batch, `[n_clips * P, hidden]`, so the engine must be built
with `max_prompt_embedding_table_size = P * max_batch` (one clip per conversation at full
batch). All task ids are 0: the ids alone address the table, which is what both the Python
`ModelRunner` (table flattened, `row = id - vocab + task * rows_per_task`) and the C++
`ModelRunnerCpp` (each request gets `table[task]`) then read the same way.

`lookup` is that embedding rule written in PyTorch; the tests check that it rebuilds exactly
the `inputs_embeds` the PyTorch backend splices. Nothing here imports TensorRT-LLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompt import PromptBatch


@dataclass
class PromptTableInputs:
    """What `tensorrt_llm.runtime.ModelRunner.generate` receives for one batch."""

    input_ids: list[torch.Tensor]  # one int32 [L_b] per conversation, left padding removed
    prompt_table: torch.Tensor | None  # [n_clips * prompt_size, hidden]; None when no audio embeddings
    vocab_size: int  # ids >= vocab_size address the table

    @property
    def prompt_tasks(self) -> str | None:
        """Comma-separated task id per conversation (the runner's format): all 0."""
        return None if self.prompt_table is None else ",".join("0" for _ in self.input_ids)

    @property
    def runner_table(self) -> torch.Tensor | None:
        """The table as one task, [1, rows, hidden]: the shape both runners index by task."""
        return None if self.prompt_table is None else self.prompt_table[None]


def prompt_table_inputs(
    batch: PromptBatch,
    audio_embeds: torch.Tensor | None,
    text_ids: list[list[int]],
    *,
    vocab_size: int,
    prompt_size: int,
    max_table_rows: int | None = None,
    hidden_size: int | None = None,
) -> PromptTableInputs:
    """Turn a left-padded DeSTA batch into runner inputs (see the module docstring).

    batch: `build_batch`'s output (placeholders where the clips go); audio_embeds
    [n_clips, prompt_size, hidden] or None (transcript-only); text_ids: each clip's transcript
    ids. max_table_rows: the engine's `max_prompt_embedding_table_size` (prompt_size * max_batch);
    hidden_size: the engine's hidden size (both checked when given).
    """
    ids = batch.input_ids.clone()
    if len(text_ids) != len(batch.splices):
        raise ValueError(f"{len(text_ids)} transcripts for {len(batch.splices)} clips")
    real = ids[batch.attention_mask.bool()]
    if real.numel() and int(real.max()) >= vocab_size:
        raise ValueError(f"prompt token id {int(real.max())} is outside the LLM vocabulary ({vocab_size})")
    audio_clips = [i for i, sp in enumerate(batch.splices) if sp.n_audio]
    if audio_clips:
        if audio_embeds is None or audio_embeds.shape[0] != len(batch.splices) or audio_embeds.shape[1] != prompt_size:
            got = None if audio_embeds is None else tuple(audio_embeds.shape)
            raise ValueError(f"expected audio embeddings [{len(batch.splices)}, {prompt_size}, hidden], got {got}")
        if hidden_size is not None and audio_embeds.shape[2] != hidden_size:
            raise ValueError(f"audio embeddings have width {audio_embeds.shape[2]}, the LLM engine {hidden_size}")
        rows = len(audio_clips) * prompt_size
        if max_table_rows is not None and rows > max_table_rows:
            raise ValueError(
                f"{len(audio_clips)} clips need {rows} prompt-table rows; the engine holds {max_table_rows} "
                f"(max_batch {max_table_rows // prompt_size} x prompt_size {prompt_size}): send fewer clips per call "
                "or rebuild with a larger --max-batch"
            )
    table_parts: list[torch.Tensor] = []
    for i, sp in enumerate(batch.splices):
        if len(text_ids[i]) != sp.n_text:
            raise ValueError(f"clip {i}: {len(text_ids[i])} transcript ids for {sp.n_text} placeholder positions")
        pos = sp.start
        if sp.n_audio:
            if sp.n_audio != prompt_size:
                raise ValueError(f"clip {i} has {sp.n_audio} audio positions, the engine expects {prompt_size}")
            first = vocab_size + len(table_parts) * prompt_size
            ids[sp.row, pos : pos + prompt_size] = torch.arange(first, first + prompt_size)
            table_parts.append(audio_embeds[i])
            pos += prompt_size
        ids[sp.row, pos : pos + sp.n_text] = torch.tensor(text_ids[i], dtype=ids.dtype)
    rows_ids = [ids[b, batch.attention_mask[b].bool()].to(torch.int32) for b in range(ids.shape[0])]
    table = torch.cat(table_parts, dim=0) if table_parts else None
    return PromptTableInputs(input_ids=rows_ids, prompt_table=table, vocab_size=vocab_size)


def lookup(input_ids: torch.Tensor, prompt_table: torch.Tensor | None, embedding: torch.Tensor,
           tasks: torch.Tensor | None = None, rows_per_task: int | None = None) -> torch.Tensor:
    """TensorRT-LLM's prompt-tuning embedding rule, in PyTorch: ids [..., L] -> [..., L, hidden].

    id < vocab: `embedding[id]`; id >= vocab: `prompt_table[id - vocab + task * rows_per_task]`
    (vocab = embedding rows; tasks broadcast against ids, default 0).
    """
    vocab = embedding.shape[0]
    ids = input_ids.long()
    virtual = ids >= vocab
    out = embedding[torch.where(virtual, torch.zeros_like(ids), ids)]
    if bool(virtual.any()):
        if prompt_table is None:
            raise ValueError(f"ids >= vocab ({vocab}) need a prompt table")
        row = ids - vocab
        if tasks is not None:
            row = row + tasks.long() * (rows_per_task if rows_per_task is not None else prompt_table.shape[0])
        picked = prompt_table[torch.where(virtual, row, torch.zeros_like(row))].to(out.dtype)
        out = torch.where(virtual[..., None], picked, out)
    return out
