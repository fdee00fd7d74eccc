"""Prompt assembly: placeholder expansion, left padding, splice positions."""

import pytest
import torch

from conftest import CHATML, LLM_SPECIALS, byte_tokenizer
from desta_edge.runtime.prompt import END_AUDIO, START_AUDIO, build_batch, collect_audios, normalize_batch, splice

LOC = "<|AUDIO|>"


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(LLM_SPECIALS, CHATML)


def test_expansion_and_left_padding(tok):
    ph = tok.convert_tokens_to_ids("<ph>")
    pad = tok.pad_token_id
    convs = [
        [{"role": "user", "content": f"first {LOC} then {LOC} done"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{LOC}?"}],
    ]
    spans = [(4, 3), (4, 2), (0, 5)]  # (audio embeddings, transcript tokens) per clip
    batch = build_batch(tok, convs, audio_locator=LOC, placeholder_id=ph, pad_id=pad, spans=spans)
    ids, mask = batch.input_ids, batch.attention_mask
    assert ids.shape == mask.shape and ids.shape[0] == 2
    # row 1 is shorter: left padding, with the mask zero exactly on the padding
    n_pad = int((mask[1] == 0).sum())
    assert n_pad > 0 and mask[1, :n_pad].sum() == 0 and mask[1, n_pad:].all() and mask[0].all()
    assert (ids[1, :n_pad] == pad).all()
    assert [(s.row, s.n_audio, s.n_text) for s in batch.splices] == [(0, 4, 3), (0, 4, 2), (1, 0, 5)]
    assert batch.splices[2].start >= n_pad
    for s in batch.splices:
        run = ids[s.row, s.start : s.start + s.n_audio + s.n_text]
        assert (run == ph).all()
        assert ids[s.row, s.start - 1] != ph and ids[s.row, s.start + s.n_audio + s.n_text] != ph
        before = tok.decode(ids[s.row, : s.start])
        after = tok.decode(ids[s.row, s.start + s.n_audio + s.n_text :])
        assert before.endswith(START_AUDIO) and after.startswith(END_AUDIO)
    assert int((ids == ph).sum()) == sum(a + t for a, t in spans)
    # everything but the placeholders is the chat template's text with the locator expanded
    text = tok.decode(ids[0][ids[0] != ph])
    assert text == tok.apply_chat_template(convs[0], tokenize=False, add_generation_prompt=True).replace(
        LOC, START_AUDIO + END_AUDIO)
    # position ids ignore the left padding
    assert batch.position_ids[1, n_pad] == 0 and batch.position_ids[1, -1] == int(mask[1].sum()) - 1


def test_text_only_tokens_equal_the_chat_template(tok):
    conv = [{"role": "user", "content": "What is two plus two?"}]
    batch = build_batch(tok, [conv], audio_locator=LOC, placeholder_id=0, pad_id=0, spans=[])
    assert batch.input_ids[0].tolist() == tok.apply_chat_template(conv, add_generation_prompt=True)
    assert batch.splices == []


def test_splice_writes_audio_then_transcript():
    embeds = torch.zeros(2, 10, 3)
    from desta_edge.runtime.prompt import Splice

    sps = [Splice(row=1, start=3, n_audio=2, n_text=2), Splice(row=0, start=5, n_audio=2, n_text=1)]
    audio = torch.stack([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
    text = [torch.full((2, 3), -1.0), torch.full((1, 3), -2.0)]
    out = splice(embeds, sps, audio, text)
    assert out[1, 3:5].eq(1).all() and out[1, 5:7].eq(-1).all()
    assert out[0, 5:7].eq(2).all() and out[0, 7].eq(-2).all()
    assert out[1, :3].eq(0).all() and out[1, 7:].eq(0).all() and out[0, :5].eq(0).all()
    assert embeds.eq(0).all()  # input untouched


def test_message_validation_errors():
    with pytest.raises(ValueError, match="content has 1 <\\|AUDIO\\|> but 'audios' lists 0"):
        collect_audios([[{"role": "user", "content": f"hi {LOC}"}]], LOC)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        collect_audios([[{"content": "x"}]], LOC)
    with pytest.raises(TypeError, match="'text' must be a string"):
        collect_audios([[{"role": "user", "content": LOC, "audios": [{"audio": "a.wav", "text": 3}]}]], LOC)
    with pytest.raises(TypeError):
        normalize_batch([])
    with pytest.raises(TypeError):
        normalize_batch(["not a message"])
    one = [{"role": "user", "content": "x"}]
    assert normalize_batch(one) == [one] and normalize_batch([one, one]) == [one, one]
