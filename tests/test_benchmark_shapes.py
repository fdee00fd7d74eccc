"""benchmarks/shapes.py on the CPU at toy sizes (the GPU figures in the README come from the same script)."""

import json

import pytest

from conftest import load_benchmark


def test_shapes_benchmark_times_every_stage(tmp_path):
    shapes = load_benchmark("shapes")
    assert shapes.main(["--shapes", "test", "--runs", "2", "--transcript-tokens", "8", "--answer-tokens", "6",
                        "--out", str(tmp_path), "--json"]) == 0
    (result_file,) = tmp_path.glob("shapes-*.json")
    result = json.loads(result_file.read_text())
    assert "| test |" in result_file.with_suffix(".md").read_text()
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["runs"] == 2
    r = result["shapes"]["test"]
    assert all(r[k] > 0 for k in ("encoder", "asr", "prefill", "first_token", "peak_memory_gb")), r
    assert r["after_audio"] == pytest.approx(r["asr"] + r["first_token"], abs=0.05)
    assert 1 <= r["asr_tokens"] <= 8 and 1 <= r["answer_tokens"] <= 6  # random weights may stop early
    assert r["parameters_m"] > 0 and r["prompt_positions"] > shapes.SHAPES["test"].prompt_size + 8


def test_random_ids_decode_and_bad_arguments_are_refused():
    shapes = load_benchmark("shapes")
    tok = shapes.padded_byte_tokenizer(shapes.LLM_SPECIALS, 400)
    assert len(tok) == 400 and tok.decode([399]) == "<t399>"  # every id a random model can emit decodes
    assert tok.decode(tok.encode("hi", add_special_tokens=False)) == "hi"
    with pytest.raises(ValueError, match="vocab_size 100"):
        shapes.padded_byte_tokenizer(shapes.LLM_SPECIALS, 100)
    for bad in (["--shapes", "huge"], ["--answer-tokens", "1"]):
        with pytest.raises(SystemExit):
            shapes.main(bad)
