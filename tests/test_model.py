"""The pipeline on tiny random backbones: one encoder pass, parity with the reference's path,
text-only identity with the backbone LLM, splicing, streaming and batching."""

import numpy as np
import pytest
import torch

from conftest import PROMPT_SIZE, build_tiny_model, load_benchmark, tone
from desta_edge.runtime.audio import LogMel
from desta_edge.runtime.model import NO_SPEECH_TRANSCRIPT

LOC = "<|AUDIO|>"


def speechlike(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonic noise that webrtcvad calls speech (the tiny ASR is random anyway)."""
    return load_benchmark("shapes").clip(seconds, seed)


def conv(text=None, audio=None, prompt="What did they say?"):
    audio = audio if audio is not None else (speechlike(), 16000)
    return [{"role": "user", "content": f"{LOC}\n{prompt}", "audios": [{"audio": audio, "text": text}]}]


def count_encoder_passes(model):
    calls = []
    enc = model.backend.perception.whisper.whisper.model.encoder
    h1 = enc.conv1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, h1


def test_encoder_runs_once_for_connector_and_asr(tiny_model):
    calls, hook = count_encoder_passes(tiny_model)
    try:
        out = tiny_model.generate(conv(text=None), max_new_tokens=3)
    finally:
        hook.remove()
    assert calls == [1], "one encoder pass over the one clip"
    assert out.audios[0][1] != NO_SPEECH_TRANSCRIPT  # ASR ran on the shared pass
    assert out.timings_ms["asr"] > 0 and out.timings_ms["encoder"] > 0


def test_batch_of_clips_is_encoded_in_one_pass(tiny_model):
    calls, hook = count_encoder_passes(tiny_model)
    two = [{"role": "user", "content": f"{LOC} and {LOC}", "audios": [
        {"audio": (speechlike(seed=1), 16000), "text": None}, {"audio": (speechlike(seed=2), 16000), "text": None}]}]
    try:
        out = tiny_model.generate([conv(text=None), two], max_new_tokens=2)
    finally:
        hook.remove()
    assert calls == [3] and len(out.audios) == 3 and len(out.text) == 2


def test_one_pass_equals_the_references_two_passes(tiny_model):
    """Taps, final states and transcript from our single pass equal what the reference computes
    with a separate connector pass and `whisper.generate` (its second encoder pass)."""
    whisper = tiny_model.backend.perception.whisper
    hf = whisper.whisper
    feats = LogMel(80)([speechlike(seed=3)])
    ours = whisper.encode(feats)
    with torch.no_grad():
        ref = hf.model.encoder(feats, output_hidden_states=True)
    # hidden_states[i + 1] is layer i's raw output (the last entry is after the final LayerNorm)
    for tap, layer in zip(ours.taps[:-1], whisper.taps[:-1]):
        torch.testing.assert_close(tap, ref.hidden_states[layer + 1])
    torch.testing.assert_close(ours.final, ref.last_hidden_state)
    torch.testing.assert_close(hf.model.encoder.layer_norm(ours.taps[-1]), ref.last_hidden_state)
    ids = whisper.transcribe_ids(ours.final, max_new_tokens=12, stop_loops=False)  # a random model loops
    gen = hf.generate(feats, attention_mask=torch.ones(1, 3000), max_new_tokens=12, do_sample=False)
    want = gen[0].tolist()  # transformers returns the new tokens only
    assert len(ids[0]) == 12 and ids[0] == want[:12]


def test_audio_and_transcript_embeddings_are_spliced_in(tiny_model):
    m = tiny_model
    prep = m._prepare([conv(text="hello")])
    feats = m.features([speechlike()])
    audio = m.backend.encode(feats, with_connector=True).audio_embeds[0]
    text = m.backend.embed(torch.tensor(m.tokenizer.encode("hello", add_special_tokens=False)))
    emb = prep.inputs_embeds[0]
    ph = (emb == m.backend.embed(torch.tensor([m.placeholder_id]))[0]).all(-1)
    assert not ph.any(), "every placeholder was overwritten"
    n = PROMPT_SIZE + text.shape[0]
    # find the run: it starts right after <start_audio>
    ids = m.tokenizer.encode(m.tokenizer.apply_chat_template(conv("hello"), tokenize=False, add_generation_prompt=True).split(LOC)[0] + "<start_audio>", add_special_tokens=False)
    s = len(ids)
    torch.testing.assert_close(emb[s : s + PROMPT_SIZE], audio)
    torch.testing.assert_close(emb[s + PROMPT_SIZE : s + n], text)


def test_text_only_gives_exactly_the_backbone_llm_output(tiny_model):
    llm, tok = tiny_model.backend.llm_model, tiny_model.tokenizer
    convs = [[{"role": "user", "content": "Name a colour."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three, please."}]]
    out = tiny_model.generate(convs, max_new_tokens=12)
    for c, got in zip(convs, out.generated_ids):
        ids = torch.tensor([tok.apply_chat_template(c, add_generation_prompt=True)])
        ref = llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        want = [t for t in ref[0, ids.shape[1]:].tolist()]
        want = want[: next((i for i, t in enumerate(want) if t in tiny_model.eos_ids), len(want))]
        assert got == want
    assert out.audios == []


def test_prefill_projects_only_the_last_position_to_the_vocabulary(tiny_model):
    """Every prompt position goes through the LLM, but only the last one through lm_head (the
    others' logits are never read): with audio, with text only, and in a batch."""
    head = tiny_model.backend.llm_model.lm_head
    rows = []
    hook = head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    try:
        tiny_model.generate([conv(text="what is this?"), conv(text="a much longer transcript than that")],
                            max_new_tokens=3)
        tiny_model.generate([[{"role": "user", "content": "Name a colour."}]], max_new_tokens=3)
    finally:
        hook.remove()
    assert rows and set(rows) == {1}, rows


def test_left_padded_batch_equals_single_runs(tiny_model):
    a, b = conv(text="short"), conv(text="a much longer transcript than the other one", prompt="Summarize.")
    batch = tiny_model.generate([a, b], max_new_tokens=8)
    singles = [tiny_model.generate(c, max_new_tokens=8).generated_ids[0] for c in (a, b)]
    assert batch.generated_ids == singles


def test_transcript_only_ablation_has_no_audio_embeddings():
    m = build_tiny_model(audio_features=False)
    assert m.connector is None
    prep = m._prepare([conv(text="hello")])
    with_audio = build_tiny_model()._prepare([conv(text="hello")])
    assert with_audio.inputs_embeds.shape[1] - prep.inputs_embeds.shape[1] == PROMPT_SIZE


def test_caller_text_skips_asr_and_silence_gets_a_space(tiny_model):
    calls, hook = count_encoder_passes(tiny_model)
    try:
        out = tiny_model.generate(conv(text="given"), max_new_tokens=2)
        silent = tiny_model.generate(conv(text=None, audio=(np.zeros(16000, np.float32), 16000)), max_new_tokens=2)
    finally:
        hook.remove()
    assert out.audios[0][1] == "given" and out.timings_ms["asr"] == 0
    assert silent.audios[0][1] == NO_SPEECH_TRANSCRIPT and silent.timings_ms["asr"] == 0
    assert calls == [1, 1]  # the connector still needs the encoder


def test_stream_yields_the_same_text_as_generate(tiny_model):
    c = conv(text="stream me")
    full = tiny_model.generate(c, max_new_tokens=10)
    s = tiny_model.stream(c, max_new_tokens=10)
    pieces = list(s)
    assert "".join(pieces) == full.text[0] == s.text
    assert s.generated_ids == full.generated_ids[0]
    assert set(s.timings_ms) == {"features", "encoder", "asr", "prefill", "first_token", "total"}
    assert s.timings_ms["first_token"] <= s.timings_ms["total"]


def test_stream_cancel_stops_generation(tiny_model):
    s = tiny_model.stream(conv(text="x"), max_new_tokens=50)
    next(iter(s), None)
    s.cancel()
    rest = list(s)
    assert len(s.generated_ids) <= 2 + len(rest)


def test_stream_rejects_a_batch(tiny_model):
    with pytest.raises(ValueError, match="one conversation"):
        tiny_model.stream([conv(text="a"), conv(text="b")])


def test_sampling_options_are_validated(tiny_model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_model.generate(conv(text="a"), max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        tiny_model.generate(conv(text="a"), do_sample=True, top_p=0.0)
    torch.manual_seed(0)
    out = tiny_model.generate(conv(text="a"), max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9)
    assert len(out.generated_ids[0]) <= 4


def test_banned_token_ids_are_never_generated_per_row(tiny_model):
    a, b = conv(text="ban me"), conv(text="not me", prompt="Summarize.")
    free = tiny_model.generate([a, b], max_new_tokens=6).generated_ids
    first = free[0][0]
    out = tiny_model.generate([a, b], max_new_tokens=6, banned_token_ids=[[first], []])
    assert first not in out.generated_ids[0] and out.generated_ids[0][0] != first
    assert out.generated_ids[1] == free[1]  # the other row is untouched
    with pytest.raises(ValueError, match="2 conversations"):
        tiny_model.generate([a, b], banned_token_ids=[[first]])
    with pytest.raises(ValueError, match="banned token ids must be in"):
        tiny_model.generate(a, banned_token_ids=[[10**9]])


def test_tone_is_accepted_as_audio_tuple_and_bad_audio_type_rejected(tiny_model):
    out = tiny_model.generate(conv(text="t", audio=(tone(0.5, rate=8000), 8000)), max_new_tokens=1)
    assert out.audios[0][0] == "<array>"
    with pytest.raises(ValueError, match="'audio' must be a file path"):
        tiny_model.generate(conv(text="t", audio=12345), max_new_tokens=1)


def test_multilingual_whisper_prompt_detects_the_language():
    """Large-v3-style prompt: <|startoftranscript|><|lang|><|transcribe|><|notimestamps|>."""
    from conftest import tiny_whisper
    from desta_edge.runtime.whisper import WhisperFrontEnd

    whisper, tok = tiny_whisper()
    whisper.requires_grad_(False)
    gen = whisper.generation_config
    gen.is_multilingual = True
    gen.lang_to_id = {"<|en|>": 40, "<|de|>": 41, "<|fr|>": 42}
    gen.task_to_id = {"transcribe": 50, "translate": 51}
    front = WhisperFrontEnd(whisper, tok, (0, 1, 2, 3))
    final = front.encode(LogMel(80)([speechlike(seed=4), speechlike(seed=5)])).final
    step = front.step_fn(final)
    with torch.no_grad():
        sot = torch.full((2, 1), gen.decoder_start_token_id)
        logits = whisper.proj_out(whisper.model.decoder(input_ids=sot, encoder_hidden_states=final).last_hidden_state)[:, -1]
    want_lang = torch.tensor([40, 41, 42])[logits[:, 40:43].argmax(-1)]
    prompt = front.decoding.prompt(step, 2, None)
    assert prompt[:, 0].eq(gen.decoder_start_token_id).all() and torch.equal(prompt[:, 1], want_lang)
    assert prompt[:, 2:].tolist() == [[50, gen.no_timestamps_token_id]] * 2
    assert front.decoding.prompt(step, 2, "de")[:, 1].tolist() == [41, 41]
    with pytest.raises(ValueError, match="does not know language 'xx'"):
        front.decoding.prompt(step, 2, "xx")
    assert len(front.transcribe_ids(final, max_new_tokens=3)[0]) <= 3


def test_prefix_cache_gives_the_same_tokens_and_is_reused(tiny_model):
    calls = []
    hook = tiny_model.backend.llm_model.register_forward_hook(lambda m, a, kw, out: calls.append(1), with_kwargs=True)
    convs = [conv(text="first question"), conv(text="another, longer question here")]
    try:
        tiny_model.backend.reset()
        cached = [tiny_model.generate(c, max_new_tokens=6).generated_ids[0] for c in convs]
        n_cached = len(calls)
        tiny_model.use_prefix_cache = False
        calls.clear()
        plain = [tiny_model.generate(c, max_new_tokens=6).generated_ids[0] for c in convs]
    finally:
        tiny_model.use_prefix_cache = True
        hook.remove()
    assert cached == plain
    # one extra forward for the shared prefix, computed once for both requests
    assert n_cached == len(calls) + 1


def test_whisper_in_bfloat16_keeps_connector_and_llm_in_float32():
    model = build_tiny_model()
    ref = model.backend.encode(model.features([speechlike()]), with_connector=True)
    model.backend.set_whisper_dtype(torch.bfloat16)
    assert model.backend.whisper_dtype == torch.bfloat16 and model.backend.dtype == torch.float32
    assert model.backend_detail == "cpu float32, whisper bfloat16"
    enc = model.backend.encode(model.features([speechlike()]), with_connector=True)
    assert enc.final.dtype == torch.bfloat16 and enc.audio_embeds.dtype == torch.float32
    # the same computation at bfloat16 precision, not something else
    assert torch.allclose(enc.audio_embeds, ref.audio_embeds, atol=0.1, rtol=0.05)
    out = model.generate(conv(text=None), max_new_tokens=3)
    assert out.audios[0][1] and len(out.text) == 1


def test_whisper_dtype_is_checked():
    model = build_tiny_model()
    with pytest.raises(ValueError, match="float16 Whisper is for GPUs"):
        model.backend.set_whisper_dtype(torch.float16)
    with pytest.raises(ValueError, match="whisper dtype must be one of"):
        model.backend.set_whisper_dtype(torch.int8)


def test_a_suspended_answer_stream_leaves_no_inference_mode_behind(tiny_model):
    """Between tokens the caller's thread is back in its own grad mode (a `with` spanning the
    generator's yield would leak the mode and undo it whenever the generator is collected)."""
    stream = tiny_model.stream(conv(text="hi"), max_new_tokens=5)
    pieces = iter(stream)
    next(pieces)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    stream.cancel()
    del pieces, stream
    assert not torch.is_inference_mode_enabled()


def test_stream_stops_between_stages_when_cancelled(tiny_model):
    from desta_edge.runtime.model import Cancelled

    calls = []
    backend = tiny_model.backend
    encode, transcribe = backend.encode, backend.transcribe
    backend.encode = lambda *a, **k: calls.append("encode") or encode(*a, **k)
    backend.transcribe = lambda *a, **k: calls.append("transcribe") or transcribe(*a, **k)
    try:
        with pytest.raises(Cancelled, match="after features"):
            tiny_model.stream(conv(), cancelled=lambda: True)
        assert calls == []
        with pytest.raises(Cancelled, match="after the encoder"):
            tiny_model.stream(conv(), cancelled=lambda: calls == ["encode"])
        assert calls == ["encode"]
        calls.clear()
        assert list(tiny_model.stream(conv(), max_new_tokens=2, cancelled=lambda: False)) is not None
        assert calls == ["encode", "transcribe"]
    finally:
        del backend.encode, backend.transcribe


def test_loop_start_finds_only_real_loops():
    from desta_edge.runtime.whisper import LOOP_LONG_BLOCK, loop_start

    phrase = list(range(10, 10 + LOOP_LONG_BLOCK))  # a whole phrase said twice: a loop at once
    assert loop_start([1, 2] + phrase + phrase) == 2 + len(phrase)
    assert loop_start([7, 8, 9, 7, 8, 9]) is None  # a short block twice: people say "no, no"
    assert loop_start([5, 7, 8, 9, 7, 8, 9, 7, 8, 9]) == 4  # ... but not three times running
    assert loop_start([4, 4, 4, 4, 4]) is None  # one token repeated is never cut ("ha ha ha")
    assert loop_start([1, 2, 3, 4, 5, 6, 7]) is None
    assert loop_start([]) is None


def test_answer_loop_start_needs_three_copies_over_sixteen_tokens():
    from desta_edge.runtime.generation import ANSWER_LOOP_TOKENS, answer_loop_start

    sentence = list(range(10, 18))  # 8 tokens: a loop on its third copy in a row
    assert answer_loop_start([1] + sentence * 2) is None  # said twice: a chorus, not a loop
    assert answer_loop_start([1] + sentence * 3) == 1 + len(sentence)
    assert answer_loop_start([1] + [7, 8] * 7) is None  # a short block needs 16 tokens of it ...
    assert answer_loop_start([1] + [7, 8] * 8) == 3  # ... then it keeps the first copy
    assert answer_loop_start([4] * (ANSWER_LOOP_TOKENS - 1)) is None
    assert answer_loop_start([4] * ANSWER_LOOP_TOKENS) == 1
    assert answer_loop_start([]) is None


def test_generate_and_stream_end_a_looping_answer_after_its_first_copy(tiny_model):
    """The tiny random LLM falls into a two-token loop: unguarded it runs to the token cap; guarded,
    generate() and stream() stop where the loop is found and keep one copy of the block."""
    from desta_edge.runtime.generation import answer_loop_start

    c = conv(text="given")
    free = tiny_model.generate(c, max_new_tokens=64, stop_loops=False).generated_ids[0]
    assert len(free) == 64 and answer_loop_start(free) is not None  # the premise: it loops
    cut = tiny_model.generate(c, max_new_tokens=64).generated_ids[0]
    assert 0 < len(cut) < 64 and free[: len(cut)] == cut and answer_loop_start(cut) is None
    # cut where the loop is first found, after the block's first copy
    found = next(n for n in range(1, 65) if answer_loop_start(free[:n]) is not None)
    assert answer_loop_start(free[:found]) == len(cut)
    stream = tiny_model.stream(c, max_new_tokens=64)
    assert "".join(stream) and stream.generated_ids == cut and stream.looped
    assert stream.text == tiny_model.tokenizer.decode(cut, skip_special_tokens=True)
    unguarded = tiny_model.stream(c, max_new_tokens=64, stop_loops=False)
    assert "".join(unguarded) and unguarded.generated_ids == free and not unguarded.looped


def test_greedy_transcript_stops_at_a_loop_and_keeps_one_copy():
    """A decoder that would repeat "a b c d e f" until the token cap stops after its first copy."""
    from conftest import tiny_whisper
    from desta_edge.runtime.whisper import WhisperDecoding

    whisper, tok = tiny_whisper()
    decoding = WhisperDecoding(whisper.generation_config, tok)
    decoding.suppress = decoding.begin_suppress = []
    vocab = whisper.config.vocab_size
    script = [100, 101, 102, 103, 104, 105] * 10

    def step(tokens, state):
        i = 0 if state is None else state + 1
        logits = torch.zeros(tokens.shape[0], vocab)
        logits[:, script[i] if i < len(script) else decoding.eos] = 1.0
        return logits, i

    assert decoding.greedy(step, 2, max_new_tokens=40) == [script[:6]] * 2


def test_encoder_padding_shortens_the_window_the_encoder_reads(tiny_model):
    backend = tiny_model.backend
    frames = []
    original = backend.encode
    backend.encode = lambda features, *, with_connector: frames.append(features.shape[-1]) or original(
        features, with_connector=with_connector)

    def ask(seconds):
        audio = (speechlike(seconds=seconds), 16000)
        tiny_model.generate([{"role": "user", "content": "<|AUDIO|>", "audios": [{"audio": audio, "text": None}]}],
                            max_new_tokens=1)

    try:
        ask(1.5)
        tiny_model.set_encoder_padding(2.0)
        ask(1.5)  # 1.5 s + 2 s of silence, rounded up to 4 s
        ask(29.0)  # never beyond the 30 s window
        with pytest.raises(ValueError, match="padding must be > 0"):
            tiny_model.set_encoder_padding(0.0)
    finally:
        tiny_model.set_encoder_padding(None)
        del backend.encode
    assert frames == [3000, 400, 3000]


def test_audio_embedding_cache_encodes_each_clip_once_with_the_same_answers(tiny_model):
    a, b = (speechlike(seed=5), 16000), (speechlike(seed=6), 16000)
    questions = [[conv(text="one", audio=a, prompt="Who?"), conv(text="two", audio=b, prompt="Who?")],
                 [conv(text="two", audio=b, prompt="How fast?")],
                 [conv(text="one", audio=a, prompt="How loud?"), conv(text="two", audio=b, prompt="How loud?")]]
    plain = [tiny_model.generate(q, max_new_tokens=3).generated_ids for q in questions]
    calls, hook = count_encoder_passes(tiny_model)
    try:
        with tiny_model.audio_embedding_cache():
            cached = [tiny_model.generate(q, max_new_tokens=3) for q in questions]
            unknown = tiny_model.generate(conv(text=None, audio=a), max_new_tokens=1)  # needs ASR: encoded
        again = tiny_model.generate(questions[1], max_new_tokens=3)  # the block has ended: encoded
    finally:
        hook.remove()
    assert calls == [2, 1, 1], "the two clips once, then the ASR question and the call after the block"
    assert [c.generated_ids for c in cached] == plain
    assert cached[1].timings_ms["encoder"] == 0 and again.timings_ms["encoder"] > 0
    assert unknown.timings_ms["asr"] > 0


def test_stage_clock_waits_for_cuda_work(monkeypatch):
    """CUDA runs kernels asynchronously: a stage's end is read only once the device is done."""
    from desta_edge.runtime import generation

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", synced.append)
    generation.clock(torch.device("cpu"))
    assert synced == []
    generation.clock(torch.device("cuda", 0))
    assert synced == [torch.device("cuda", 0)]


def test_warm_up_runs_every_stage_once_and_changes_no_answer(tiny_model):
    """warm_up: the encoder with the connector (the LLM pass, transcript given), the encoder alone
    with a few transcript steps, the prefill of the caller's prompt; later answers are unchanged."""
    before = tiny_model.generate(conv(), max_new_tokens=6)
    calls, hook = count_encoder_passes(tiny_model)
    front = tiny_model.backend
    transcribed = []
    original = front.transcribe
    front.transcribe = lambda enc, rows, n: transcribed.append((rows, n)) or original(enc, rows, n)
    seen = []
    try:
        ms = tiny_model.warm_up(lambda x: seen.append(x) or conv(audio=(x, 16000), prompt="Tell me."))
    finally:
        hook.remove()
        del front.transcribe
    assert ms > 0 and calls == [1, 1] and transcribed == [([0], 4)]
    assert len(seen) == 1 and seen[0].shape == (16000,) and np.isfinite(seen[0]).all()
    after = tiny_model.generate(conv(), max_new_tokens=6)
    assert after.generated_ids == before.generated_ids and after.audios == before.audios
    assert tiny_model.warm_up() > 0  # the default conversation


def test_cuda_default_dtype_is_float32_on_the_bundled_backbones_only(monkeypatch):
    """The embedded default runs faster in float32 on a GPU, with the CPU's answers; full-size
    backbones default to bfloat16."""
    from dataclasses import replace

    from desta_edge.runtime.checkpoint import is_checkpoint_dir
    from desta_edge.runtime.config import DestaConfig
    from desta_edge.runtime.model import default_dtype
    from desta_edge.runtime.presets import PRESETS

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cuda, tiny = torch.device("cuda"), PRESETS["tiny"].config
    shipped = PRESETS["tiny"].adapter_dir
    assert shipped is not None and is_checkpoint_dir(shipped)
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(cuda, tiny) == torch.float32
    assert default_dtype(cuda, DestaConfig.from_json(shipped / "config.json")) == torch.float32
    assert default_dtype(cuda, replace(tiny, llm_model_id="meta-llama/Llama-3.1-8B-Instruct")) == torch.bfloat16
    assert default_dtype(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert default_dtype(cuda, replace(tiny, encoder_model_id="openai/whisper-large-v3")) == torch.float16
