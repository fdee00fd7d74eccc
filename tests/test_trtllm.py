"""TensorRT-LLM path, tested up to the library boundary (TensorRT-LLM cannot be installed here).

The boundary: a DeSTA batch becomes token ids (audio positions = ids past the vocabulary) and a
prompt-embedding table; TensorRT-LLM's embedding rule (`lookup`) applied to them must rebuild
exactly the input embeddings the PyTorch backend splices, and decoding from them must give the
same greedy answer. The export and the backend are checked against recording stand-ins for
`tensorrt_llm` and its runner, and for the errors they give when the library is missing.
"""

import json
import sys
import types

import numpy as np
import pytest
import torch

from conftest import PROMPT_SIZE, build_tiny_model, save_tiny_checkpoint, tiny_config, tiny_llm
from desta_edge.cli import main
from desta_edge.runtime import model as model_module
from desta_edge.runtime.generation import SamplingOptions, generate_stream
from desta_edge.runtime.prompt import normalize_batch
from desta_edge.runtime.prompt_table import PromptTableInputs, lookup, prompt_table_inputs
from desta_edge.runtime.trtllm_backend import (
    TrtLlmBackend, check_trtllm_export, runner_kwargs, runner_steps, stop_words_array,
)

LOC = "<|AUDIO|>"


def speechlike(seed: int, seconds: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 900), start=1))
    return (0.3 * voice * (0.5 + 0.5 * np.sin(8 * np.pi * t)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def clip(seed: int, text=None) -> dict:
    return {"audio": (speechlike(seed), 16000), "text": text}


def prepared(model, conversations, monkeypatch):
    """Run DestaModel's prompt assembly; keep the batch, audio embeddings and transcript ids it splices."""
    seen = {}
    build = model_module.build_batch
    monkeypatch.setattr(model_module, "build_batch", lambda *a, **kw: seen.setdefault("batch", build(*a, **kw)))
    encode = model.backend.encode

    def spy(*a, **kw):
        enc = encode(*a, **kw)
        seen["audio"] = enc.audio_embeds
        return enc

    monkeypatch.setattr(model.backend, "encode", spy)
    prep = model._prepare(normalize_batch(conversations))
    monkeypatch.undo()
    text_ids = [model.tokenizer.encode(t, add_special_tokens=False) for _, t in prep.audios]
    return prep, seen["batch"], seen.get("audio"), text_ids


def vocab_of(model) -> int:
    return model.backend.llm_model.get_input_embeddings().weight.shape[0]


def embedding_of(model) -> torch.Tensor:
    return model.backend.llm_model.get_input_embeddings().weight.detach()


def tokens_until_eos(steps, eos: set[int], rows: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    for nxt in steps:
        for b, tok in enumerate(nxt.tolist()):
            done[b] = done[b] or tok in eos
            if not done[b]:
                out[b].append(tok)
    return out


BATCH = [
    [{"role": "user", "content": f"{LOC}\nWhat did they say?", "audios": [clip(0, "yes")]}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": f"Listen: {LOC}", "audios": [clip(1, "what is the weather like today")]}],
]


# ---------------------------------------------------------------------- the boundary


def test_lookup_of_ids_and_table_rebuilds_the_spliced_embeddings(tiny_model, monkeypatch):
    prep, batch, audio, text_ids = prepared(tiny_model, BATCH, monkeypatch)
    assert len(text_ids[0]) != len(text_ids[1])  # transcripts of different lengths
    inputs = prompt_table_inputs(batch, audio, text_ids, vocab_size=vocab_of(tiny_model), prompt_size=PROMPT_SIZE,
                                 max_table_rows=PROMPT_SIZE * 2, hidden_size=32)
    assert inputs.prompt_table.shape == (2 * PROMPT_SIZE, 32)
    assert inputs.prompt_tasks == "0,0" and inputs.runner_table.shape == (1, 2 * PROMPT_SIZE, 32)
    mask = prep.attention_mask.bool()
    assert [len(r) for r in inputs.input_ids] == mask.sum(1).tolist()  # left padding removed, lengths differ
    assert len(inputs.input_ids[0]) != len(inputs.input_ids[1])
    for b, row in enumerate(inputs.input_ids):
        assert row.dtype == torch.int32
        assert torch.equal(lookup(row, inputs.prompt_table, embedding_of(tiny_model)), prep.inputs_embeds[b][mask[b]])


def test_decoding_from_the_rebuilt_embeddings_gives_the_models_answers(tiny_model, monkeypatch):
    prep, batch, audio, text_ids = prepared(tiny_model, BATCH, monkeypatch)
    emb = embedding_of(tiny_model)
    inputs = prompt_table_inputs(batch, audio, text_ids, vocab_size=vocab_of(tiny_model), prompt_size=PROMPT_SIZE)
    mask = prep.attention_mask
    rebuilt = emb[torch.full(mask.shape, tiny_model.pad_id)]  # left padding, as the PyTorch path pads
    for b, row in enumerate(inputs.input_ids):
        rebuilt[b, mask.shape[1] - len(row):] = lookup(row, inputs.prompt_table, emb)
    steps = generate_stream(tiny_model.backend.llm_model, attention_mask=mask, inputs_embeds=rebuilt,
                            eos_ids=tiny_model.eos_ids, opts=SamplingOptions(max_new_tokens=8))
    got = tokens_until_eos(steps, tiny_model.eos_ids, 2)
    assert got == tiny_model.generate(BATCH, max_new_tokens=8).generated_ids


def test_one_transcribed_clip_decodes_unpadded_like_the_runner(tiny_model, monkeypatch):
    """One conversation whose transcript comes from ASR; the row goes in unpadded (no left
    padding in TensorRT-LLM) against `generate`, which runs with the prompt-prefix cache."""
    conversation = [{"role": "user", "content": f"{LOC}\nReply.", "audios": [clip(3)]}]
    prep, batch, audio, text_ids = prepared(tiny_model, conversation, monkeypatch)
    assert text_ids[0]  # ASR produced a transcript that goes in as token ids
    inputs = prompt_table_inputs(batch, audio, text_ids, vocab_size=vocab_of(tiny_model), prompt_size=PROMPT_SIZE,
                                 max_table_rows=PROMPT_SIZE)
    embeds = lookup(inputs.input_ids[0], inputs.prompt_table, embedding_of(tiny_model))[None]
    steps = generate_stream(tiny_model.backend.llm_model, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                            inputs_embeds=embeds, eos_ids=tiny_model.eos_ids, opts=SamplingOptions(max_new_tokens=8))
    want = tiny_model.generate(conversation, max_new_tokens=8).generated_ids
    assert tokens_until_eos(steps, tiny_model.eos_ids, 1) == want


def test_fake_ids_sit_exactly_on_the_audio_positions(tiny_model, monkeypatch):
    first = {"role": "user", "content": f"{LOC} then {LOC}?", "audios": [clip(4, "ab"), clip(5, "cde")]}
    two_clips = [[first], BATCH[0][:]]
    prep, batch, audio, text_ids = prepared(tiny_model, two_clips, monkeypatch)
    vocab = vocab_of(tiny_model)
    inputs = prompt_table_inputs(batch, audio, text_ids, vocab_size=vocab, prompt_size=PROMPT_SIZE)
    fake = torch.cat(inputs.input_ids)
    fake = fake[fake >= vocab]
    assert sorted(fake.tolist()) == list(range(vocab, vocab + 3 * PROMPT_SIZE))  # each table row addressed once
    pad = (prep.attention_mask == 0).sum(1).tolist()
    for k, sp in enumerate(batch.splices):
        row = inputs.input_ids[sp.row]
        start = sp.start - pad[sp.row]
        audio_ids = row[start : start + PROMPT_SIZE].tolist()
        assert audio_ids == list(range(vocab + k * PROMPT_SIZE, vocab + (k + 1) * PROMPT_SIZE))  # clip k, rows k*P..
        assert row[start + PROMPT_SIZE : start + PROMPT_SIZE + sp.n_text].tolist() == text_ids[k]
        assert torch.equal(inputs.prompt_table[k * PROMPT_SIZE : (k + 1) * PROMPT_SIZE], audio[k])
    real = [int(t) for r in inputs.input_ids for t in r if t < vocab]
    assert len(real) + len(fake) == sum(len(r) for r in inputs.input_ids)
    assert real and max(real) < vocab
    # two clips in the first conversation: its row holds clips 0 and 1, the second row clip 2
    assert [sp.row for sp in batch.splices] == [0, 0, 1]


def test_table_size_and_shape_checks(tiny_model, monkeypatch):
    prep, batch, audio, text_ids = prepared(tiny_model, BATCH, monkeypatch)
    vocab = vocab_of(tiny_model)
    with pytest.raises(ValueError, match=rf"2 clips need {2 * PROMPT_SIZE} .*max_batch 1 x"):
        prompt_table_inputs(batch, audio, text_ids, vocab_size=vocab, prompt_size=PROMPT_SIZE, max_table_rows=PROMPT_SIZE)
    with pytest.raises(ValueError, match="transcript ids"):
        prompt_table_inputs(batch, audio, [text_ids[0], text_ids[1][:-1]], vocab_size=vocab, prompt_size=PROMPT_SIZE)
    with pytest.raises(ValueError, match="width"):
        prompt_table_inputs(batch, audio, text_ids, vocab_size=vocab, prompt_size=PROMPT_SIZE, hidden_size=64)
    with pytest.raises(ValueError, match="audio embeddings"):
        prompt_table_inputs(batch, None, text_ids, vocab_size=vocab, prompt_size=PROMPT_SIZE)
    with pytest.raises(ValueError, match="outside the LLM vocabulary"):  # would collide with the fake ids
        prompt_table_inputs(batch, audio, text_ids, vocab_size=int(batch.input_ids.max()), prompt_size=PROMPT_SIZE)


def test_transcript_only_prompts_need_no_table(monkeypatch):
    model = build_tiny_model(audio_features=False)
    prep, batch, audio, text_ids = prepared(model, BATCH, monkeypatch)
    inputs = prompt_table_inputs(batch, audio, text_ids, vocab_size=vocab_of(model), prompt_size=PROMPT_SIZE)
    assert inputs.prompt_table is None and inputs.prompt_tasks is None and inputs.runner_table is None
    mask = prep.attention_mask.bool()
    for b, row in enumerate(inputs.input_ids):
        assert int(row.max()) < vocab_of(model)
        assert torch.equal(lookup(row, None, embedding_of(model)), prep.inputs_embeds[b][mask[b]])


def test_lookup_follows_task_offsets():
    emb = torch.arange(10.0)[:, None].repeat(1, 2)  # vocab 10
    table = 100 + torch.arange(6.0)[:, None].repeat(1, 2)  # 2 tasks x 3 rows
    ids = torch.tensor([[1, 10, 12], [11, 3, 10]])
    got = lookup(ids, table, emb, tasks=torch.tensor([[0], [1]]), rows_per_task=3)
    assert got[..., 0].tolist() == [[1, 100, 102], [104, 3, 103]]
    with pytest.raises(ValueError, match="prompt table"):
        lookup(ids, None, emb)


# ---------------------------------------------------------------------- runner inputs and outputs


def test_runner_arguments():
    kw = runner_kwargs(SamplingOptions(max_new_tokens=5), {7, 3, 9}, batch=2, max_new_tokens=4)
    assert kw["end_id"] == 3 and kw["top_k"] == 1 and kw["max_new_tokens"] == 4 and kw["streaming"]
    assert kw["stop_words_list"].tolist() == [[[7, 9], [1, 2]]] * 2  # flat ids, then end offsets
    sampled = runner_kwargs(SamplingOptions(do_sample=True, temperature=0.7, top_p=0.9), {3}, batch=1, max_new_tokens=9)
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 0)
    assert sampled["stop_words_list"] is None and stop_words_array([], 3) is None


def fake_stream(prompts: list[list[int]], answers: list[list[int]], steps: int):
    """What ModelRunner.generate(streaming=True, return_dict=True) yields: growing buffers + lengths."""
    width = max(len(p) + len(a) for p, a in zip(prompts, answers)) + 2
    for s in range(1, steps + 1):
        ids = torch.zeros(len(prompts), 1, width, dtype=torch.int32)
        lens = torch.zeros(len(prompts), 1, dtype=torch.int32)
        for b, (p, a) in enumerate(zip(prompts, answers)):
            seq = p + a[:s]
            ids[b, 0, : len(seq)] = torch.tensor(seq)
            lens[b, 0] = len(seq)
        yield {"output_ids": ids, "sequence_lengths": lens}


def test_runner_steps_match_generate_streams_contract():
    prompts = [[5, 6, 7], [8]]
    answers = [[11, 3], [12, 13, 14, 2]]  # end ids 2 and 3: row 0 ends at its second token
    consumed = []

    def counted(outputs):
        for i, out in enumerate(outputs, 1):
            consumed.append(i)
            yield out

    got, when = [], []
    for s in runner_steps(counted(fake_stream(prompts, answers, 4)), [3, 1], {2, 3}):
        got.append(s.tolist())
        when.append(consumed[-1])
    assert got == [[11, 12], [3, 13], [2, 14], [2, 2]]  # an ended row yields the first end id
    assert when == [1, 2, 3, 4]  # each token as soon as the runner streams it, not at the end


def test_a_row_that_stops_without_an_end_id_does_not_lose_tokens():
    prompts = [[5], [6, 7]]
    answers = [[11], [12, 13, 14]]  # row 0 stops (e.g. a stop word) after one token, nothing shown
    got = [s.tolist() for s in runner_steps(fake_stream(prompts, answers, 3), [1, 2], {2})]
    assert got == [[11, 12], [2, 13], [2, 14]]


class RecordingRunner:
    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def generate(self, batch_input_ids, **kw):
        self.calls.append((batch_input_ids, kw))
        return fake_stream([r.tolist() for r in batch_input_ids], self.answers, 5)


def backend_with(runner, manifest) -> TrtLlmBackend:
    """A TrtLlmBackend without engines (it needs a GPU to construct): only what stream_tokens reads."""
    backend = TrtLlmBackend.__new__(TrtLlmBackend)
    backend.runner, backend.llm_manifest = runner, manifest
    return backend


MANIFEST = {"vocab_size": 300, "prompt_size": PROMPT_SIZE, "max_batch": 2, "max_input_len": 50, "max_seq_len": 60,
            "max_prompt_embedding_table_size": 2 * PROMPT_SIZE, "hidden_size": 32}


def test_stream_tokens_feeds_the_runner_ids_and_the_table():
    from desta_edge.runtime.generation import StepTimes

    runner = RecordingRunner([[11, 2], [12, 2]])
    backend = backend_with(runner, MANIFEST)
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = (ids != 0).long()
    times = StepTimes()
    out = list(backend.stream_tokens(attention_mask=mask, input_ids=ids, inputs_embeds=None, eos_ids={2},
                                     opts=SamplingOptions(max_new_tokens=100), times=times))
    assert [s.tolist() for s in out] == [[11, 12], [2, 2]]
    rows, kw = runner.calls[0]
    assert [r.tolist() for r in rows] == [[5, 6], [7, 8, 9, 10]]  # unpadded
    assert kw["prompt_table"] is None and kw["max_new_tokens"] == 60 - 4  # capped by the engine's max_seq_len
    assert times.first_token_s is not None

    table = torch.randn(PROMPT_SIZE, 32)
    prompt = PromptTableInputs([torch.tensor([5, 300, 301, 302, 303, 9], dtype=torch.int32)], table, 300)
    list(backend.stream_tokens(attention_mask=None, input_ids=None, inputs_embeds=prompt, eos_ids={2},
                               opts=SamplingOptions(max_new_tokens=3), times=StepTimes()))
    _, kw = runner.calls[1]
    assert torch.equal(kw["prompt_table"], table[None]) and kw["prompt_tasks"] == "0"
    with pytest.raises(RuntimeError, match="prompt_inputs"):
        backend.stream_tokens(attention_mask=mask, input_ids=None, inputs_embeds=torch.zeros(2, 4, 32), eos_ids={2},
                              opts=SamplingOptions(), times=StepTimes())
    with pytest.raises(ValueError, match="--max-input-len"):
        backend.stream_tokens(attention_mask=torch.ones(1, 51), input_ids=torch.ones(1, 51, dtype=torch.long),
                              inputs_embeds=None, eos_ids={2}, opts=SamplingOptions(), times=StepTimes())


# ---------------------------------------------------------------------- export (against a stand-in)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_build_settings_and_quantization_choices():
    from desta_edge.export.trtllm import build_settings, check_llama, quant_plan

    s = build_settings(prompt_size=64, max_batch=4, max_input_len=1024, max_output_len=512)
    assert s == {"max_batch_size": 4, "max_input_len": 1024, "max_seq_len": 1536, "max_prompt_embedding_table_size": 256}
    with pytest.raises(ValueError, match="max-input-len"):
        build_settings(prompt_size=64, max_batch=1, max_input_len=64, max_output_len=8)
    assert quant_plan("none") is None
    assert quant_plan("fp8") == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    assert quant_plan("int4_awq") == {"quant_algo": "W4A16_AWQ"}
    with pytest.raises(ValueError, match="--quantize"):
        quant_plan("int3")
    with pytest.raises(ValueError, match="Llama-architecture"):
        check_llama({"model_type": "qwen2"}, "some-llm")


def fake_tensorrt_llm(calls: dict) -> dict[str, types.ModuleType]:
    """Just the TensorRT-LLM names export_trtllm uses, recording their calls."""

    class Engine:
        def save(self, path: str) -> None:
            calls["saved"] = path
            import os

            os.makedirs(path)
            with open(os.path.join(path, "rank0.engine"), "wb") as f:
                f.write(b"ENGINE")

    class LLaMAForCausalLM:
        @classmethod
        def from_hugging_face(cls, path, dtype):
            calls["from_hugging_face"] = (path, dtype)
            return cls()

        @classmethod
        def quantize(cls, path, out, *, dtype, quant_config, calib_dataset):
            calls["quantize"] = (path, dtype, quant_config, calib_dataset)
            import os

            os.makedirs(out)

        @classmethod
        def from_checkpoint(cls, path):
            calls["from_checkpoint"] = path
            return cls()

    def build(model, config):
        calls["build"] = (model, config)
        return Engine()

    root = types.ModuleType("tensorrt_llm")
    root.__version__ = "1.2.0-fake"
    builder = types.ModuleType("tensorrt_llm.builder")
    builder.BuildConfig = lambda **kw: ("BuildConfig", kw)
    builder.build = build
    models = types.ModuleType("tensorrt_llm.models")
    models.LLaMAForCausalLM = LLaMAForCausalLM
    utils = types.ModuleType("tensorrt_llm.models.modeling_utils")
    utils.QuantConfig = lambda **kw: ("QuantConfig", kw)
    quant = types.ModuleType("tensorrt_llm.quantization")
    quant.QuantAlgo = types.SimpleNamespace(FP8="QuantAlgo.FP8", W4A16_AWQ="QuantAlgo.W4A16_AWQ")
    return {"tensorrt_llm": root, "tensorrt_llm.builder": builder, "tensorrt_llm.models": models,
            "tensorrt_llm.models.modeling_utils": utils, "tensorrt_llm.quantization": quant}


def test_export_builds_with_a_table_for_max_batch_clips(checkpoint, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from desta_edge.export.trtllm import export_trtllm

    calls: dict = {}
    for name, module in fake_tensorrt_llm(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    out = tmp_path / "trtllm"
    manifest = export_trtllm(str(checkpoint), out, max_batch=3, max_input_len=200, max_output_len=40, dtype="bfloat16")
    llm_dir = str(checkpoint / "llm")
    assert calls["from_hugging_face"] == (llm_dir, "bfloat16") and "quantize" not in calls
    kind, settings = calls["build"][1]
    assert kind == "BuildConfig" and settings == {"max_batch_size": 3, "max_input_len": 200, "max_seq_len": 240,
                                                  "max_prompt_embedding_table_size": 3 * PROMPT_SIZE}
    assert (out / "engine" / "rank0.engine").read_bytes() == b"ENGINE"
    assert json.loads((out / "trtllm_export.json").read_text()) == manifest
    llm, ltok = tiny_llm()
    assert manifest["vocab_size"] == llm.config.vocab_size and manifest["hidden_size"] == 32
    assert manifest["prompt_size"] == PROMPT_SIZE and manifest["max_prompt_embedding_table_size"] == 3 * PROMPT_SIZE
    assert manifest["eos_token_ids"] == [ltok.convert_tokens_to_ids("<|im_end|>")]
    assert manifest["desta_config"]["llm_model_id"] == "llm" and manifest["tensorrt_llm_version"] == "1.2.0-fake"
    copied = AutoTokenizer.from_pretrained(out / "llm")
    assert copied.get_vocab() == ltok.get_vocab() and copied.chat_template == ltok.chat_template


def test_quantized_export_calibrates_then_builds_from_the_checkpoint(checkpoint, tmp_path, monkeypatch):
    from desta_edge.export.trtllm import export_trtllm

    calls: dict = {}
    for name, module in fake_tensorrt_llm(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    out = tmp_path / "trtllm"
    manifest = export_trtllm(str(checkpoint), out, quantize="fp8", calib_dataset="/data/calib")
    path, dtype, qc, calib = calls["quantize"]
    assert path == str(checkpoint / "llm") and dtype == "float16" and calib == "/data/calib"
    assert qc == ("QuantConfig", {"quant_algo": "QuantAlgo.FP8", "kv_cache_quant_algo": "QuantAlgo.FP8"})
    assert calls["from_checkpoint"].endswith("checkpoint") and "from_hugging_face" not in calls
    assert not (out / "checkpoint").exists()  # the intermediate checkpoint is dropped
    assert manifest["quantization"] == "fp8" and manifest["max_prompt_embedding_table_size"] == PROMPT_SIZE
    export_trtllm(str(checkpoint), out, quantize="int4_awq")
    assert calls["quantize"][2] == ("QuantConfig", {"quant_algo": "QuantAlgo.W4A16_AWQ"})


def test_missing_tensorrt_llm_says_how_to_install_it(checkpoint, tmp_path, monkeypatch, capsys):
    from desta_edge.export.trtllm import export_trtllm

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(RuntimeError, match="pypi.nvidia.com"):
        export_trtllm(str(checkpoint), tmp_path / "x")
    assert main(["export", "trtllm", "--model", str(checkpoint), "--out", str(tmp_path / "x")]) == 1
    assert "TensorRT-LLM is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # bad input is reported as such (exit 2) before TensorRT-LLM is needed
    assert main(["export", "trtllm", "--model", str(checkpoint), "--out", str(tmp_path / "x"), "--max-input-len", "4"]) == 2
    assert main(["export", "trtllm", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


# ---------------------------------------------------------------------- the backend's construction


@pytest.fixture(scope="module")
def onnx_export(checkpoint, tmp_path_factory):
    from desta_edge import DestaModel
    from desta_edge.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("trtllm") / "export"
    export_onnx(DestaModel.from_pretrained(checkpoint, device="cpu"), str(checkpoint), out)
    return out


def write_trtllm_manifest(export_dir, **changes) -> None:
    from desta_edge.export.trtllm import build_settings, trtllm_manifest

    config = tiny_config(llm_model_id="llm", encoder_model_id="whisper").to_dict()
    config.update(changes)
    m = trtllm_manifest(desta_config=config, llm_source="llm", hf_config={"vocab_size": 300, "hidden_size": 32},
                        settings=build_settings(prompt_size=PROMPT_SIZE, max_batch=1, max_input_len=64, max_output_len=8),
                        quantize="none", dtype="float16", eos_token_ids=[2], tensorrt_llm_version="x")
    m["prompt_size"] = config["prompt_size"]
    (export_dir / "trtllm").mkdir(exist_ok=True)
    (export_dir / "trtllm" / "trtllm_export.json").write_text(json.dumps(m))


def test_backend_construction_errors_say_what_to_run(onnx_export, checkpoint, monkeypatch):
    from transformers import AutoTokenizer

    with pytest.raises(FileNotFoundError, match="desta-edge export onnx"):
        check_trtllm_export(checkpoint)
    with pytest.raises(FileNotFoundError, match="desta-edge export trtllm"):
        check_trtllm_export(onnx_export)
    write_trtllm_manifest(onnx_export, prompt_size=PROMPT_SIZE + 1)
    with pytest.raises(ValueError, match="export both from one model"):
        check_trtllm_export(onnx_export)
    write_trtllm_manifest(onnx_export)
    _, llm_manifest, config = check_trtllm_export(onnx_export)
    assert llm_manifest["prompt_size"] == config.prompt_size == PROMPT_SIZE
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(RuntimeError, match="TensorRT-LLM is not installed"):
        TrtLlmBackend(onnx_export, AutoTokenizer.from_pretrained(onnx_export / "whisper"))


def test_the_model_hands_a_trtllm_backend_ids_and_a_table(tiny_model, monkeypatch):
    """DestaModel._prepare gives a backend with `prompt_inputs` its runner inputs, not embeddings."""
    model = tiny_model
    plain, batch, audio, text_ids = prepared(model, BATCH, monkeypatch)
    vocab = vocab_of(model)
    monkeypatch.setattr(model.backend, "prompt_inputs", lambda b, a, t: prompt_table_inputs(
        b, a, t, vocab_size=vocab, prompt_size=PROMPT_SIZE), raising=False)
    prep = model._prepare(normalize_batch(BATCH))
    assert isinstance(prep.inputs_embeds, PromptTableInputs) and prep.prefix_ids is None
    for b, ids in enumerate(prep.inputs_embeds.input_ids):
        rebuilt = lookup(ids.long(), prep.inputs_embeds.prompt_table, embedding_of(model))
        assert torch.equal(rebuilt, plain.inputs_embeds[b, plain.attention_mask[b].bool()])


def test_from_pretrained_trtllm_loads_through_the_backend(onnx_export, monkeypatch):
    from desta_edge import DestaModel

    write_trtllm_manifest(onnx_export)
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(RuntimeError, match="TensorRT-LLM is not installed"):
        DestaModel.from_pretrained(onnx_export, backend="trtllm")
