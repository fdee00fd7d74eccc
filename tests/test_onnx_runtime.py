"""ONNX Runtime execution: IOBinding step loops, the optimized-graph cache, TensorRT provider
options, and backend="auto". CUDA and TensorRT cannot run here: their options are checked as
data and their wiring through a recording stand-in for InferenceSession."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from desta_edge import DestaModel
from desta_edge.runtime import onnx_backend as ob
from desta_edge.runtime.model import choose_backend
from desta_edge.runtime.onnx_backend import OrtKV, OrtOptions, OrtProvider, OrtRunner, ShapeLimits

ort = pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime (part of the test extra)")


def speechlike(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(24000) / 16000
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 560), 1)) * (0.5 + 0.5 * np.sin(8 * np.pi * t))
    return (0.3 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def conversations(n: int) -> list:
    return [[{"role": "user", "content": "<|AUDIO|> what?", "audios": [{"audio": (speechlike(i), 16000), "text": None}]}]
            for i in range(n)]


@pytest.fixture
def export_copy(tiny_onnx_export, tmp_path):
    """A private copy of the tiny export (the cache tests write into it); mtimes preserved."""
    dst = tmp_path / "export"
    shutil.copytree(tiny_onnx_export, dst, ignore=shutil.ignore_patterns(ob.ORT_CACHE_DIR))
    return dst


# ---------------------------------------------------------------------- IOBinding


def test_bound_runner_gives_exactly_the_plain_outputs_step_after_step(tiny_onnx_export):
    manifest = ob.read_manifest(tiny_onnx_export)
    session = ob.open_session(tiny_onnx_export / ob.LLM_FILE, torch.device("cpu"))
    plain, bound = OrtRunner(session), OrtRunner(session, bind=True, device="cpu")
    c = manifest["llm_cache"]
    d = manifest["signatures"]["llm"]["inputs_embeds"][2]  # the LLM hidden size
    rng = np.random.default_rng(0)
    empty = np.zeros((c["layers"], 2, c["kv_heads"], 0, c["head_dim"]), np.float32)
    state = {"plain": (empty, empty), "bound": (empty, empty)}
    for step, s in enumerate((5, 1, 1, 1)):  # a prefill, then decode steps fed their own caches
        p = state["plain"][0].shape[3]
        feeds = {"inputs_embeds": (rng.standard_normal((2, s, d)) * 0.02).astype(np.float32),
                 "attention_mask": np.ones((2, p + s), np.int64),
                 "position_ids": np.tile(np.arange(p, p + s), (2, 1)).astype(np.int64)}
        a = plain.run({**feeds, "past_k": state["plain"][0], "past_v": state["plain"][1]})
        b = bound.run({**feeds, "past_k": state["bound"][0], "past_v": state["bound"][1]}, host=("logits",))
        assert isinstance(b["logits"], np.ndarray)
        assert isinstance(b["k"], ort.OrtValue) and b["k"].device_name().lower() == "cpu"  # stays "on the device"
        np.testing.assert_array_equal(b["logits"], a["logits"])
        np.testing.assert_array_equal(b["k"].numpy(), a["k"])
        np.testing.assert_array_equal(b["v"].numpy(), a["v"])
        state = {"plain": (a["k"], a["v"]), "bound": (b["k"], b["v"])}
    assert OrtKV(*state["bound"]).length == OrtKV(*state["plain"]).length == 8


def test_backend_with_io_binding_gives_the_same_transcripts_and_answers(tiny_onnx_export):
    plain = DestaModel.from_pretrained(tiny_onnx_export, backend="onnx", device="cpu")
    bound = DestaModel.from_pretrained(tiny_onnx_export, backend="onnx", device="cpu",
                                       ort_options=OrtOptions(io_binding=True))
    assert bound.backend.io_binding and not plain.backend.io_binding
    assert bound.backend_detail == "CPUExecutionProvider + IOBinding"
    convs = conversations(2)
    a, b = plain.generate(convs, max_new_tokens=8), bound.generate(convs, max_new_tokens=8)
    assert b.audios == a.audios and b.generated_ids == a.generated_ids
    assert "".join(bound.stream(convs[0], max_new_tokens=8)) == a.text[0]  # prefix cache shared as OrtValues
    assert "".join(bound.stream(convs[1], max_new_tokens=8)) == a.text[1]  # (a second request reuses it)
    first = a.generated_ids[0][0]  # constrained decoding runs in the shared loop: the same on both
    banned = [plain.generate(convs, max_new_tokens=8, banned_token_ids=[[first], []]),
              bound.generate(convs, max_new_tokens=8, banned_token_ids=[[first], []])]
    assert banned[0].generated_ids == banned[1].generated_ids and first not in banned[0].generated_ids[0]


# ---------------------------------------------------------------------- optimized-graph cache


class SessionSpy:
    """Records which file each InferenceSession is created from, and per graph whether its idle
    threads may spin ("0": not allowed; None: ONNX Runtime's default)."""

    def __init__(self, monkeypatch) -> None:
        self.paths: list[str] = []
        self.spinning: dict[str, str | None] = {}
        real = ort.InferenceSession

        def make(path, opts=None, *args, **kw):
            path = Path(path)
            self.paths.append(path.name)
            graph = path.parent.name.split(".")[0] if path.name == ob.CACHED_GRAPH else path.stem
            try:
                self.spinning[graph] = opts.get_session_config_entry("session.intra_op.allow_spinning")
            except RuntimeError:  # not set
                self.spinning[graph] = None
            return real(str(path), opts, *args, **kw)

        monkeypatch.setattr(ort, "InferenceSession", make)


def test_optimized_graphs_are_written_once_then_loaded(export_copy, monkeypatch, caplog):
    cache = export_copy / ob.ORT_CACHE_DIR
    first = DestaModel.from_pretrained(export_copy, backend="onnx", device="cpu")
    written = sorted(p.name for p in cache.iterdir())
    assert [n.split(".")[:2] for n in written] == [["decoder", "cpu"], ["encoder", "cpu"], ["llm", "cpu"]]
    for entry in cache.iterdir():  # the optimized graph, and its weights in a file of their own
        assert sorted(f.name for f in entry.iterdir()) == [ob.CACHED_WEIGHTS, ob.CACHED_GRAPH]
        assert (entry / ob.CACHED_GRAPH).stat().st_size < (entry / ob.CACHED_WEIGHTS).stat().st_size

    spy = SessionSpy(monkeypatch)
    second = DestaModel.from_pretrained(export_copy, backend="onnx", device="cpu")
    assert spy.paths == [ob.CACHED_GRAPH] * 3  # every graph came from the cache
    convs = conversations(2)
    want = first.generate(convs, max_new_tokens=8)
    got = second.generate(convs, max_new_tokens=8)
    assert got.audios == want.audios and got.generated_ids == want.generated_ids

    # a changed graph file gets a new entry and its stale one is removed
    llm = export_copy / ob.LLM_FILE
    os.utime(llm, ns=(llm.stat().st_atime_ns, llm.stat().st_mtime_ns + 10**9))
    DestaModel.from_pretrained(export_copy, backend="onnx", device="cpu")
    now = sorted(p.name for p in cache.iterdir())
    assert len(now) == 3 and [n for n in now if n.startswith("llm.")] != [n for n in written if n.startswith("llm.")]

    # a damaged entry is dropped with a warning, and the model still loads and answers
    entry = next(cache.glob("decoder.cpu.*"))
    (entry / ob.CACHED_GRAPH).write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING):
        third = DestaModel.from_pretrained(export_copy, backend="onnx", device="cpu")
    assert "unreadable optimized graph" in caplog.text
    assert third.generate(convs, max_new_tokens=8).generated_ids == want.generated_ids
    assert (entry / ob.CACHED_GRAPH).stat().st_size > 1000  # rewritten
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_speech_sessions_do_not_spin(export_copy, monkeypatch):
    """The encoder's and the Whisper decoder's idle threads must not busy-wait (they would slow
    the stages after them); the LLM keeps ONNX Runtime's default for its decode loop."""
    for load in ("writes the cache", "reads the cache", "no cache"):
        spy = SessionSpy(monkeypatch)
        DestaModel.from_pretrained(export_copy, backend="onnx", device="cpu",
                                   ort_options=OrtOptions(optimized_cache=load != "no cache"))
        assert spy.spinning == {"encoder": "0", "decoder": "0", "llm": None}, load
        assert (spy.paths == [ob.CACHED_GRAPH] * 3) == (load == "reads the cache")


def test_cache_can_be_turned_off_or_moved(export_copy, tmp_path):
    DestaModel.from_pretrained(export_copy, backend="onnx", device="cpu", ort_options=OrtOptions(optimized_cache=False))
    assert not (export_copy / ob.ORT_CACHE_DIR).exists()
    DestaModel.from_pretrained(export_copy, backend="onnx", device="cpu", ort_options=OrtOptions(cache_dir=tmp_path / "c"))
    assert len(list((tmp_path / "c").iterdir())) == 3 and not (export_copy / ob.ORT_CACHE_DIR).exists()


def test_unwritable_cache_falls_back_to_an_uncached_session(export_copy, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING):
        model = DestaModel.from_pretrained(export_copy, backend="onnx", device="cpu",
                                           ort_options=OrtOptions(cache_dir=blocker / "cache"))
    assert "could not cache the optimized" in caplog.text
    assert len(model.generate(conversations(1), max_new_tokens=4).generated_ids[0]) <= 4


def test_cache_key_follows_onnxruntime_version_provider_and_file(tiny_onnx_export, tmp_path):
    g = tiny_onnx_export / ob.LLM_FILE
    a = ob.optimized_graph_dir(g, tmp_path, "CPUExecutionProvider", "1.31.1")
    assert a.parent == tmp_path and a.name.startswith("llm.cpu.")
    assert a == ob.optimized_graph_dir(g, tmp_path, "CPUExecutionProvider", "1.31.1")
    assert a != ob.optimized_graph_dir(g, tmp_path, "CPUExecutionProvider", "1.32.0")
    assert ob.optimized_graph_dir(g, tmp_path, "CUDAExecutionProvider", "1.31.1").name.startswith("llm.cuda.")


# ---------------------------------------------------------------------- TensorRT options


def test_manifest_records_graph_signatures(tiny_onnx_export):
    sig = ob.read_manifest(tiny_onnx_export)["signatures"]
    assert sig["encoder"] == {"features": ["b", 80, "frames"]}
    assert sig["llm"]["past_k"] == [2, "b", 2, "p", 8] and sig["llm"]["attention_mask"] == ["b", "t"]
    for graph, file in (("encoder", ob.ENCODER_FILE), ("decoder", ob.DECODER_FILE), ("llm", ob.LLM_FILE)):
        assert ob.graph_signature(tiny_onnx_export / file) == sig[graph]


def test_trt_profiles_cover_every_dynamic_input(tiny_onnx_export):
    sig = ob.read_manifest(tiny_onnx_export)["signatures"]
    limits = ShapeLimits(max_batch=4, max_context=1024, opt_context=256, max_transcript=128)
    enc = ob.trt_profile_shapes(sig["encoder"], ob.axis_ranges("encoder", limits))
    assert enc == {"trt_profile_min_shapes": "features:1x80x3000", "trt_profile_opt_shapes": "features:1x80x3000",
                   "trt_profile_max_shapes": "features:4x80x3000"}
    llm = ob.trt_profile_shapes(sig["llm"], ob.axis_ranges("llm", limits))
    assert llm["trt_profile_min_shapes"] == ("inputs_embeds:1x1x32,attention_mask:1x1,position_ids:1x1,"
                                             "past_k:2x1x2x0x8,past_v:2x1x2x0x8")
    assert llm["trt_profile_opt_shapes"] == ("inputs_embeds:1x1x32,attention_mask:1x257,position_ids:1x1,"
                                             "past_k:2x1x2x256x8,past_v:2x1x2x256x8")
    assert llm["trt_profile_max_shapes"].startswith("inputs_embeds:4x1024x32,attention_mask:4x1024,")
    dec = ob.trt_profile_shapes(sig["decoder"], ob.axis_ranges("decoder", limits))
    names = [part.split(":")[0] for part in dec["trt_profile_max_shapes"].split(",")]
    assert names == list(sig["decoder"]) and "past_k:2x4x4x132x8" in dec["trt_profile_max_shapes"]
    with pytest.raises(ValueError, match="no range"):
        ob.trt_profile_shapes(sig["llm"], {"b": (1, 1, 2)})
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ob.trt_profile_shapes(sig["encoder"], {"b": (2, 1, 4)})


def test_tensorrt_options_and_provider_order(tmp_path):
    sig = {"features": ["b", 80, 3000]}
    opts = ob.tensorrt_options("encoder", sig, tmp_path, device_id=1, fp16=True)
    assert opts["trt_fp16_enable"] is True and opts["trt_layer_norm_fp32_fallback"] is True and opts["device_id"] == 1
    assert opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path / "trt")
    assert opts["trt_profile_max_shapes"] == "features:4x80x3000"
    provs = ob.execution_providers(OrtProvider.TENSORRT, device_id=1, trt=opts)
    assert [p if isinstance(p, str) else p[0] for p in provs] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provs[1][1] == {"device_id": 1}
    assert ob.execution_providers(OrtProvider.CPU) == ["CPUExecutionProvider"]


def test_provider_resolution(caplog):
    cpu_only, gpu = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ob.resolve_provider(None, torch.device("cpu"), gpu) is OrtProvider.CPU
    assert ob.resolve_provider(None, torch.device("cuda"), gpu) is OrtProvider.CUDA
    with caplog.at_level(logging.WARNING):
        assert ob.resolve_provider(None, torch.device("cuda"), cpu_only) is OrtProvider.CPU
    assert "no CUDA provider" in caplog.text
    with pytest.raises(RuntimeError, match="TensorrtExecutionProvider.*onnxruntime-gpu and TensorRT"):
        ob.resolve_provider("tensorrt", torch.device("cuda"), gpu)
    with pytest.raises(ValueError, match="unknown ONNX Runtime provider"):
        ob.resolve_provider("rocm", torch.device("cpu"), cpu_only)


def test_tensorrt_backend_wiring_up_to_the_library(tiny_onnx_export, tmp_path, monkeypatch):
    """With the TensorRT EP "present", every session gets the TRT options, then CUDA and CPU, and
    the step loops are bound to the CUDA device. (Sessions really run on the CPU EP here.)"""
    calls = []
    real = ort.InferenceSession

    def fake(path, opts, providers):
        calls.append((os.path.basename(str(path)), providers))
        return real(path, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", fake)
    model = DestaModel.from_pretrained(tiny_onnx_export, backend="onnx", device="cuda:0", ort_provider="tensorrt",
                                       ort_options=OrtOptions(cache_dir=tmp_path))
    assert [name for name, _ in calls] == ["encoder.onnx", "decoder.onnx", "llm.onnx"]  # graphs, never cached copies
    for name, providers in calls:
        trt_name, trt = providers[0]
        assert trt_name == "TensorrtExecutionProvider" and trt["trt_engine_cache_path"] == str(tmp_path / "trt")
        assert trt["trt_profile_min_shapes"] and providers[1][0] == "CUDAExecutionProvider"
    assert (tmp_path / "trt").is_dir()
    assert model.backend.provider is OrtProvider.TENSORRT
    assert model.backend.llm.runner.bind and model.backend.llm.runner.device == "cuda"
    assert model.backend.decoder.bind and model.backend.decoder.device == "cuda"


def test_tensorrt_request_without_the_provider_is_a_clear_error(tiny_onnx_export):
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT provider")
    with pytest.raises(RuntimeError, match="install onnxruntime-gpu"):
        DestaModel.from_pretrained(tiny_onnx_export, backend="onnx", ort_provider="tensorrt")


# ---------------------------------------------------------------------- backend="auto"


def test_auto_picks_onnx_for_an_export_and_torch_otherwise(tiny_onnx_export, tiny_checkpoint):
    fast = DestaModel.from_pretrained(tiny_onnx_export, backend="auto", device="cpu")
    assert fast.backend_name == "onnx" and "ONNX export directory" in fast.backend_reason
    assert fast.backend_detail == "CPUExecutionProvider"
    ref = DestaModel.from_pretrained(tiny_checkpoint, backend="auto", device="cpu")
    assert ref.backend_name == "torch" and ref.backend_detail == "cpu float32"
    assert "export onnx" in ref.backend_reason  # says how to get the faster one
    assert DestaModel.from_pretrained(tiny_checkpoint, device="cpu").backend_reason is None  # only auto explains
    convs = conversations(1)
    assert fast.generate(convs, max_new_tokens=6).generated_ids == ref.generate(convs, max_new_tokens=6).generated_ids
    with pytest.raises(ValueError, match="needs an ONNX export"):
        DestaModel.from_pretrained(tiny_checkpoint, backend="auto", ort_provider="cpu")
    with pytest.raises(ValueError, match="apply to the onnx backend"):
        DestaModel.from_pretrained(tiny_checkpoint, backend="torch", ort_provider="cpu")


def test_auto_device_choice(tiny_onnx_export, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    backend, dev, reason = choose_backend(str(tiny_onnx_export), None)
    assert (backend.value, dev.type) == ("onnx", "cpu") and "CPU provider" in reason  # GPU, but no CUDA EP
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backend, dev, reason = choose_backend(str(tiny_onnx_export), None)
    assert (backend.value, dev.type) == ("onnx", "cuda") and "CUDA provider" in reason
    backend, dev, _ = choose_backend(str(tiny_checkpoint), None)
    assert (backend.value, dev.type) == ("torch", "cuda")
    backend, dev, _ = choose_backend(str(tiny_checkpoint), "cpu")
    assert (backend.value, dev.type) == ("torch", "cpu")


def test_cli_ask_and_listen_accept_backend_auto(tiny_onnx_export, tmp_path):
    import subprocess
    import sys

    import soundfile as sf

    clip = tmp_path / "q.wav"
    sf.write(str(clip), np.concatenate([np.zeros(8000, np.float32), speechlike(0), np.zeros(16000, np.float32)]), 16000)
    def run(*a):
        return subprocess.run([sys.executable, "-m", "desta_edge", *a], capture_output=True, text=True, timeout=300)

    r = run("ask", str(clip), "--model", str(tiny_onnx_export), "--backend", "auto", "--device", "cpu",
            "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["backend"] == "onnx" and out["backend_detail"] == "CPUExecutionProvider"
    assert out["timings_ms"]["encoder"] > 0
    r = run("listen", "--source", str(clip), "--fast", "--json", "--model", str(tiny_onnx_export),
            "--backend", "auto", "--model-device", "cpu", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert "backend: onnx (CPUExecutionProvider); ONNX export directory" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["type"] == "summary"  # stdout stays JSON events


def test_whisper_dtype_is_refused_for_an_export(tiny_onnx_export):
    with pytest.raises(ValueError, match="whisper_dtype applies to the torch backend"):
        DestaModel.from_pretrained(str(tiny_onnx_export), backend="onnx", whisper_dtype=torch.bfloat16)
