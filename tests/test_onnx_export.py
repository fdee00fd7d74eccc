"""ONNX export: every graph checked against PyTorch, and the ONNX Runtime backend giving the
same greedy transcripts and answers as the PyTorch backend."""

import json

import numpy as np
import pytest
import torch

from desta_edge import DestaModel

pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime (part of the test extra)")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    from desta_edge.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "export"
    torch_model = DestaModel.from_pretrained(checkpoint, device="cpu")
    manifest = export_onnx(torch_model, str(checkpoint), out)
    return torch_model, out, manifest


def speechlike(seed):
    rng = np.random.default_rng(seed)
    t = np.arange(24000) / 16000
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 560), 1)) * (0.5 + 0.5 * np.sin(8 * np.pi * t))
    return (0.3 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_manifest_and_graph_parity(exported):
    _, out, manifest = exported
    assert manifest["has_connector"] and manifest["opset"] >= 17
    assert set(manifest["parity_max_abs"]) == {"encoder", "encoder_short_window", "decoder", "llm"}
    assert set(manifest["parity_max_abs"]["encoder"]) == {"cross_k", "cross_v", "audio_embeds"}
    assert json.loads((out / "onnx_export.json").read_text()) == manifest
    for f in ("encoder.onnx", "decoder.onnx", "llm.onnx", "llm_embeddings.safetensors", "config.json"):
        assert (out / f).is_file(), f


def test_onnx_backend_encodes_like_pytorch(exported):
    from desta_edge.export.graphs import WhisperCrossKV

    torch_model, out, _ = exported
    onnx_model = DestaModel.from_pretrained(out, backend="onnx", device="cpu")
    feats = torch_model.features([speechlike(0), speechlike(1)])
    a = torch_model.backend.encode(feats, with_connector=True)
    b = onnx_model.backend.encode(feats, with_connector=True)
    with torch.inference_mode():
        ck, cv = WhisperCrossKV(torch_model.backend.perception.whisper.whisper)(a.final)
    np.testing.assert_allclose(b.final[0], ck.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(b.final[1], cv.numpy(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.audio_embeds, a.audio_embeds, atol=1e-4, rtol=1e-4)


def test_onnx_backend_gives_the_same_greedy_outputs(exported):
    torch_model, out, _ = exported
    onnx_model = DestaModel.from_pretrained(out, backend="onnx", device="cpu")
    convs = [[{"role": "user", "content": "<|AUDIO|> what?", "audios": [{"audio": (speechlike(i), 16000), "text": None}]}]
             for i in range(3)]
    want = torch_model.generate(convs, max_new_tokens=8)
    got = onnx_model.generate(convs, max_new_tokens=8)
    assert got.audios == want.audios and got.generated_ids == want.generated_ids
    text_only = [{"role": "user", "content": "Say something."}]
    assert onnx_model.generate(text_only, max_new_tokens=8).generated_ids == torch_model.generate(text_only, max_new_tokens=8).generated_ids
    one = convs[0]
    assert "".join(onnx_model.stream(one, max_new_tokens=8)) == want.text[0]  # streaming + prefix cache


def test_a_shorter_encoder_window_gives_the_same_outputs_on_both_backends(exported):
    torch_model, out, _ = exported
    onnx_model = DestaModel.from_pretrained(out, backend="onnx", device="cpu", encoder_padding_s=2.0)
    torch_model.set_encoder_padding(2.0)
    try:
        convs = [[{"role": "user", "content": "<|AUDIO|> what?", "audios": [{"audio": (speechlike(i), 16000), "text": None}]}]
                 for i in range(2)]
        want = torch_model.generate(convs, max_new_tokens=8)
        got = onnx_model.generate(convs, max_new_tokens=8)
        assert got.audios == want.audios and got.generated_ids == want.generated_ids
    finally:
        torch_model.set_encoder_padding(None)
    full = torch_model.generate(convs, max_new_tokens=8)
    assert full.audios != want.audios  # the window does reach the model (the transcripts differ)


def test_an_export_with_fixed_frames_refuses_a_shorter_window(exported):
    _, out, _ = exported
    model = DestaModel.from_pretrained(out, backend="onnx", device="cpu")
    model.backend.full_window_only = "this export's encoder has a fixed frame count; re-export it"
    with pytest.raises(ValueError, match="full 30 s window .*re-export"):
        model.set_encoder_padding(3.0)
    model.set_encoder_padding(None)  # the full window is always fine


def test_backend_and_directory_must_match(checkpoint, exported, tmp_path):
    _, out, _ = exported
    with pytest.raises(FileNotFoundError, match="not an ONNX export directory"):
        DestaModel.from_pretrained(checkpoint, backend="onnx", device="cpu")
    with pytest.raises(ValueError, match="backend='onnx'"):
        DestaModel.from_pretrained(out, device="cpu")
    from desta_edge.export.onnx import export_onnx

    export_onnx(DestaModel.from_pretrained(checkpoint, device="cpu", audio_features=False), str(checkpoint), tmp_path / "x")
    with pytest.raises(ValueError, match="without a connector"):
        DestaModel.from_pretrained(tmp_path / "x", backend="onnx", device="cpu", audio_features=True)
    assert DestaModel.from_pretrained(tmp_path / "x", backend="onnx", device="cpu").audio_features is False


@pytest.mark.slow
def test_tiny_preset_export_gives_the_same_transcripts_and_answers(tmp_path):
    from conftest import speak
    from desta_edge.export.onnx import export_onnx

    tiny = DestaModel.from_pretrained("tiny", device="cpu")
    export_onnx(tiny, "tiny", tmp_path / "onnx")
    fast = DestaModel.from_pretrained(tmp_path / "onnx", backend="onnx", device="cpu")
    for i, (text, voice) in enumerate([("What is the capital of France?", "en-us"), ("Set a timer for ten minutes.", "en+f3"),
                                       ("How many legs does a spider have?", "en-gb+m3")]):
        path = speak(text, tmp_path / f"{i}.wav", voice=voice)
        conv = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "<|AUDIO|>\nReply to the speaker.", "audios": [{"audio": str(path), "text": None}]}]
        a, b = tiny.generate(conv, max_new_tokens=24), fast.generate(conv, max_new_tokens=24)
        assert a.audios == b.audios and a.generated_ids == b.generated_ids, (a, b)


@pytest.mark.parametrize("quantize, max_size_ratio, op", [("int8", 0.95, "MatMulInteger"), ("int4", 0.5, "MatMulNBits")])
def test_quantized_export_is_smaller_and_runs(checkpoint, exported, tmp_path, quantize, max_size_ratio, op):
    import onnx

    from desta_edge.export.onnx import INT8_KEEP_FP32, export_onnx
    from desta_edge.runtime.onnx_backend import QUANTIZER_REVISION

    _, fp32_dir, _ = exported
    manifest = export_onnx(DestaModel.from_pretrained(checkpoint, device="cpu"), str(checkpoint), tmp_path / "q",
                           quantize=quantize)
    assert manifest["quantization"] == quantize and manifest["quantizer_revision"] == QUANTIZER_REVISION
    for name in ("encoder.onnx", "decoder.onnx", "llm.onnx"):
        graph = onnx.load(str(tmp_path / "q" / name), load_external_data=False).graph
        quantized = [n for n in graph.node if n.op_type == op]
        assert quantized, name  # the weights really went through the quantizer
        # every weight reached the quantizer, those the connector shares between tapped layers too
        weights = {t.name for t in graph.initializer}
        aliases = {n.output[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in weights}
        assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in aliases], name
        assert "ConvInteger" not in {n.op_type for n in graph.node}, name  # convolutions stay fp32
        if op == "MatMulNBits":
            assert {a.i for n in quantized for a in n.attribute if a.name == "bits"} == {4}
        else:  # the feed-forward output and vocabulary projections stay fp32 MatMuls
            kept = [n for n in graph.node if n.op_type == "MatMul" and INT8_KEEP_FP32.search(n.name)]
            assert kept and manifest["int8_fp32_matmuls"][name.split(".")[0]] == len(kept), name
            assert not [n for n in quantized if INT8_KEEP_FP32.search(n.name)], name
    # the tiny test LLM: graph overhead included, and for int8 its fp32 LM head
    size = lambda d: (d / "llm.onnx").stat().st_size  # noqa: E731
    assert size(tmp_path / "q") < max_size_ratio * size(fp32_dir)
    model = DestaModel.from_pretrained(tmp_path / "q", backend="onnx", device="cpu")
    out = model.generate([{"role": "user", "content": "<|AUDIO|> hi", "audios": [{"audio": (speechlike(0), 16000), "text": "x"}]}],
                         max_new_tokens=4)
    assert len(out.generated_ids[0]) <= 4
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_onnx(model, "x", tmp_path / "bad", quantize="int3")


def test_an_encoder_quantized_by_an_older_recipe_is_named_for_export_again():
    from desta_edge.runtime.onnx_backend import QUANTIZER_REVISION, stale_quantization

    graphs = ["encoder", "decoder", "llm"]
    old = {"quantization": "int8", "quantized_graphs": graphs}  # no quantizer_revision: before it existed
    assert "export it again" in stale_quantization("exports/int8", old)
    assert stale_quantization("x", {**old, "quantizer_revision": QUANTIZER_REVISION}) is None
    assert stale_quantization("x", {"quantization": "int8", "quantized_graphs": ["llm"]}) is None  # encoder fp32
    assert stale_quantization("x", {"quantization": None, "quantized_graphs": []}) is None


def test_quantizing_only_the_llm_keeps_the_transcripts_exact(checkpoint, exported, tmp_path):
    import onnx

    from desta_edge.export.onnx import export_onnx

    _, fp32_dir, _ = exported
    manifest = export_onnx(DestaModel.from_pretrained(checkpoint, device="cpu"), str(checkpoint), tmp_path / "q",
                           quantize="int8", quantize_graphs=("llm",))
    assert manifest["quantization"] == "int8" and manifest["quantized_graphs"] == ["llm"]
    ops = {name: {n.op_type for n in onnx.load(str(tmp_path / "q" / name), load_external_data=False).graph.node}
           for name in ("encoder.onnx", "decoder.onnx", "llm.onnx")}
    assert "MatMulInteger" in ops["llm.onnx"]
    assert "MatMulInteger" not in ops["encoder.onnx"] and "MatMulInteger" not in ops["decoder.onnx"]
    conv = [[{"role": "user", "content": "<|AUDIO|> hi", "audios": [{"audio": (speechlike(s), 16000)}]}] for s in (0, 1)]
    fp32 = DestaModel.from_pretrained(fp32_dir, backend="onnx", device="cpu").generate(conv, max_new_tokens=4)
    mixed = DestaModel.from_pretrained(tmp_path / "q", backend="onnx", device="cpu").generate(conv, max_new_tokens=4)
    assert mixed.audios == fp32.audios  # the speech graphs are the fp32 ones: the same transcripts
    with pytest.raises(ValueError, match="quantize_graphs must name"):
        export_onnx(DestaModel.from_pretrained(checkpoint, device="cpu"), "x", tmp_path / "bad", quantize="int8",
                    quantize_graphs=("llm", "vocoder"))
