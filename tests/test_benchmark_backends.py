"""benchmarks/backends.py end to end on the tiny random model and its ONNX export (2 clips)."""

import json
import shutil

import pytest

from conftest import load_benchmark


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")), reason="needs espeak-ng and flite")
def test_backend_benchmark_runs_every_variant_and_reports_sane_numbers(tiny_checkpoint, tiny_onnx_export, tmp_path):
    bench = load_benchmark("backends")
    out = tmp_path / "results"
    assert bench.main(["--model", str(tiny_checkpoint), "--onnx", str(tiny_onnx_export), "--onnx", str(tmp_path / "nope"),
                       "--limit", "2", "--max-new-tokens", "4", "--out", str(out), "--json"]) == 0
    (result_file,) = out.glob("backends-*.json")
    result = json.loads(result_file.read_text())
    assert (out / result_file.name.replace(".json", ".md")).is_file()
    assert result["clips"] == 2 and len(list((out / "backend_clips").glob("*.wav"))) == 2

    assert list(result["variants"]) == ["torch (cpu)", "onnx fp32 (cpu)"]
    skipped = {s["variant"]: s["reason"] for s in result["skipped"]}
    assert "not an ONNX export directory" in skipped["onnx nope (cpu)"]  # a bad --onnx is listed, not fatal
    assert "trtllm" in skipped and all(skipped.values())
    for label, r in result["variants"].items():
        assert "error" not in r, r
        s = r["summary"]
        m = s["median_ms"]
        assert all(m[k] > 0 for k in ("encoder", "asr", "prefill", "first_token")), m
        assert m["first_token"] >= m["encoder"] and m["total"] >= m["first_token"]
        assert s["load_s"] > 0 and 50 < s["peak_rss_mb"] < 20_000 and s["cuda_max_allocated_mb"] is None
        assert 1 <= s["answer_tokens"] <= 2 * 4
        assert all(c["transcript"] is not None and len(c["answer_ids"]) <= 4 for c in r["clips"])
        assert r["identical_to_torch"] == "2/2"  # the fp32 export gives PyTorch's greedy outputs
        assert r["speedup_vs_torch"]["against"] == "torch (cpu)"
    assert result["variants"]["torch (cpu)"]["speedup_vs_torch"]["total"] == 1.0
    assert result["variants"]["onnx fp32 (cpu)"]["backend_detail"] == "CPUExecutionProvider"
    table = (out / result_file.name.replace(".json", ".md")).read_text()
    assert "| onnx fp32 (cpu) |" in table and "skipped trtllm" in table


def test_speedups_are_computed_against_torch_on_the_same_device():
    bench = load_benchmark("backends")
    summary = lambda ms, tps: {"median_ms": {k: ms for k in bench.STAGES}, "decode_tokens_per_s": tps,  # noqa: E731
                               "load_s": 2.0}
    clips = [{"transcript": "a", "answer_ids": [1, 2]}]
    results = {
        "torch (cpu)": {"summary": summary(100.0, 10.0), "clips": clips},
        "torch (cuda)": {"summary": summary(20.0, 50.0), "clips": [{"transcript": "a", "answer_ids": [1, 3]}]},
        "onnx fp32 (cpu)": {"summary": summary(50.0, 20.0), "clips": clips},
        "onnx fp32 (cuda)": {"summary": summary(10.0, 100.0), "clips": clips},
        "onnx int8 (cpu)": {"error": "boom"},
    }
    variants = {k: bench.Variant(k, k.split()[0], "x", k.split("(")[1].rstrip(")")) for k in results}
    bench.compare(results, variants)
    assert results["onnx fp32 (cpu)"]["speedup_vs_torch"]["total"] == 2.0
    assert results["onnx fp32 (cpu)"]["speedup_vs_torch"]["decode_tokens_per_s"] == 2.0
    assert results["onnx fp32 (cuda)"]["speedup_vs_torch"] == {
        "against": "torch (cuda)", **{k: 2.0 for k in bench.STAGES}, "decode_tokens_per_s": 2.0, "load": 1.0}
    assert results["torch (cuda)"]["identical_to_torch"] == "0/1" and results["onnx fp32 (cuda)"]["identical_to_torch"] == "1/1"
    assert "speedup_vs_torch" not in results["onnx int8 (cpu)"]
    assert "failed: boom" in bench.markdown({"variants": {"onnx int8 (cpu)": results["onnx int8 (cpu)"]}, "skipped": [],
                                             "clips": 1, "max_new_tokens": 4, "machine": "m"})


def test_whisper_dtype_adds_a_torch_variant_per_device():
    bench = load_benchmark("backends")
    runs, _ = bench.plan("tiny", [], ["cpu"], whisper_dtype="bfloat16")
    assert [(v.label, v.whisper_dtype) for v in runs] == [("torch (cpu)", None),
                                                          ("torch (cpu), whisper bfloat16", "bfloat16")]
    runs, _ = bench.plan("tiny", [], ["cpu"])
    assert [v.label for v in runs] == ["torch (cpu)"]


def test_cuda_runs_pytorch_in_float32_and_bfloat16_and_compares_with_float32(monkeypatch):
    """On a GPU the default dtype depends on the model, so both run: float32, whose answers must be
    the CPU's and which the other CUDA variants are compared with, and bfloat16."""
    import torch

    bench = load_benchmark("backends")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    runs, _ = bench.plan("tiny", [], ["cpu", "cuda"])
    assert [(v.label, v.device, v.dtype) for v in runs] == [
        ("torch (cpu)", "cpu", None), ("torch (cuda), float32", "cuda", "float32"),
        ("torch (cuda), bfloat16", "cuda", "bfloat16")]
    summary = lambda ms: {"median_ms": {k: ms for k in bench.STAGES}, "decode_tokens_per_s": 10.0,  # noqa: E731
                          "load_s": 2.0}
    clips = [{"transcript": "a", "answer_ids": [1, 2]}]
    results = {v.label: {"summary": summary(ms), "clips": clips} for v, ms in zip(runs, (100.0, 20.0, 40.0))}
    bench.compare(results, {v.label: v for v in runs})
    assert results["torch (cuda), bfloat16"]["speedup_vs_torch"]["against"] == "torch (cuda), float32"
    assert results["torch (cuda), bfloat16"]["speedup_vs_torch"]["total"] == 0.5


def test_encoder_padding_applies_to_every_variant_and_shows_in_the_table():
    bench = load_benchmark("backends")
    runs, _ = bench.plan("tiny", [], ["cpu"], whisper_dtype="bfloat16", encoder_padding_s=5.0)
    assert len(runs) == 2 and all(v.encoder_padding_s == 5.0 for v in runs)
    table = bench.markdown({"variants": {}, "skipped": [], "clips": 1, "max_new_tokens": 4, "machine": "m",
                            "encoder_padding_s": 5.0})
    assert "each clip + 5 s of silence" in table


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")), reason="needs espeak-ng and flite")
def test_spinning_benchmark_swaps_sessions_and_keeps_outputs(tiny_onnx_export, tmp_path):
    bench = load_benchmark("ort_threads")
    out = tmp_path / "results"
    assert bench.main([str(tiny_onnx_export), "--limit", "2", "--repeats", "1", "--max-new-tokens", "4",
                       "--out", str(out), "--json"]) == 0
    (result_file,) = out.glob("ort_threads-*.json")
    result = json.loads(result_file.read_text())
    assert result["clips"] == 2 and [r["setting"] for r in result["rows"]] == list(bench.SETTINGS)
    for r in result["rows"]:
        assert r["identical"] == "2/2", r  # spinning changes timing, never outputs
        assert 0 < r["encoder"] < r["first_token"] <= r["total"] and r["asr"] > 0 and r["prefill"] > 0, r
    assert result["rows"][0]["speed-up first token"] == 1.0
    assert "| no session spins |" in (out / result_file.name.replace(".json", ".md")).read_text()


def test_rounds_alternate_the_order_and_pool_every_clip(monkeypatch, tmp_path):
    """--rounds 3 runs A B, B A, A B; the medians pool every round, the load time is the median and
    the peak memory the largest; a round that fails fails the variant."""
    bench = load_benchmark("backends")
    order, calls = [], {"torch (cpu)": 0, "onnx fp32 (cpu)": 0}

    def fake_spawn(v, clips, max_new_tokens, timeout_s):
        order.append(v.label)
        calls[v.label] += 1
        k = calls[v.label]
        if v.label == "onnx fp32 (cpu)" and k == 3:
            return {"error": "died in round 3"}
        ms = 100.0 * k  # rounds 1, 2, 3 take 100, 200, 300 ms a stage
        clip = {"transcript": "a", "answer_ids": [1, 2], "tokens": 2, "decode_tokens_per_s": 10.0 * k,
                "timings_ms": {s: ms for s in bench.STAGES}}
        return {"load_s": float(k), "backend_detail": "x", "clips": [clip, dict(clip)], "peak_rss_mb": 100.0 * (4 - k),
                "cuda_max_allocated_mb": None}

    monkeypatch.setattr(bench, "spawn", fake_spawn)
    monkeypatch.setattr(bench, "question_clips", lambda out, limit=None: [type("C", (), {"path": tmp_path / "q.wav"})()])
    monkeypatch.setattr(bench, "plan", lambda *a: ([bench.Variant("torch (cpu)", "torch", "tiny", "cpu"),
                                                     bench.Variant("onnx fp32 (cpu)", "onnx", "e", "cpu")], []))
    assert bench.main(["--rounds", "3", "--out", str(tmp_path), "--json"]) == 0
    assert order == ["torch (cpu)", "onnx fp32 (cpu)", "onnx fp32 (cpu)", "torch (cpu)", "torch (cpu)", "onnx fp32 (cpu)"]
    (result_file,) = tmp_path.glob("backends-*.json")
    result = json.loads(result_file.read_text())
    torch_result = result["variants"]["torch (cpu)"]
    assert result["rounds"] == 3 and [c["round"] for c in torch_result["clips"]] == [0, 0, 1, 1, 2, 2]
    assert torch_result["summary"]["median_ms"]["total"] == 200.0 and torch_result["summary"]["decode_tokens_per_s"] == 20.0
    assert torch_result["load_s"] == 2.0 and torch_result["peak_rss_mb"] == 300.0
    assert result["variants"]["onnx fp32 (cpu)"] == {"error": "died in round 3"}
    assert "3 rounds in alternating order" in (tmp_path / result_file.name.replace(".json", ".md")).read_text()
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0", "--out", str(tmp_path)])
