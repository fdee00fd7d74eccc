"""The CUDA code paths on a GPU: same answers as the CPU in fp32, the bf16 default, streaming,
training in bf16, the listen loop. Skipped where torch sees no GPU (the CI machines); run on a GPU
machine with `pytest tests/test_cuda.py`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import build_tiny_model, load_benchmark
from test_assistant import listen
from test_model import conv
from test_trainer import options
from streaming_helpers import signal
from desta_edge.runtime.model import DestaModel
from desta_edge.training.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """cuDNN convolutions default to TF32, which rounds differently from the CPU."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_fp32_on_cuda_gives_the_cpus_answers():
    cpu, gpu = build_tiny_model(), build_tiny_model().to("cuda")
    assert gpu.device.type == "cuda"
    batch = [conv(), conv(text="hello there"), [{"role": "user", "content": "Say something."}]]
    a, b = cpu.generate(batch, max_new_tokens=12), gpu.generate(batch, max_new_tokens=12)
    assert [x for x, _ in a.audios] == [x for x, _ in b.audios]
    assert a.audios[0][1] == b.audios[0][1]  # the transcript
    assert a.generated_ids == b.generated_ids


def test_bf16_is_the_cuda_default_and_streams_what_generate_gives(tiny_checkpoint):
    model = DestaModel.from_pretrained(tiny_checkpoint, device="cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert model.backend.dtype == expected and model.backend.whisper_dtype == expected
    out = model.generate(conv(), max_new_tokens=10)
    stream = model.stream(conv(), max_new_tokens=10)
    assert "".join(stream) == out.text[0]
    assert stream.generated_ids == out.generated_ids[0]
    assert all(math.isfinite(v) and v >= 0 for v in out.timings_ms.values())


def test_bf16_training_on_cuda_moves_fp32_connector_weights(tmp_path):
    model = build_tiny_model().to("cuda")
    before = {k: v.detach().clone() for k, v in model.connector.state_dict().items()}
    result = train(options(tmp_path, steps=3, precision="bf16", device="cuda"), model)
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    after = model.connector.state_dict()
    assert all(v.dtype == torch.float32 and v.device.type == "cuda" for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_listen_loop_on_cuda_answers_each_utterance():
    model = build_tiny_model().to("cuda")
    x = signal(("s", 0.5), ("v", 0.8), ("s", 1.0), ("v", 0.6), ("s", 1.0))
    events, stats = listen(model, x)
    assert stats.answers == 2 and stats.errors == 0
    assert all(e["timings_ms"]["encoder"] > 0 for e in events if e["type"] == "answer")


def test_shapes_benchmark_on_cuda(tmp_path):
    shapes = load_benchmark("shapes")
    assert shapes.main(["--shapes", "test", "--runs", "1", "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(next(tmp_path.glob("shapes-*.json")).read_text())
    assert result["device"] == "cuda" and result["dtype"] in ("bfloat16", "float16")


def test_warm_up_on_cuda_changes_no_answer():
    model = build_tiny_model().to("cuda")
    before = model.generate(conv(), max_new_tokens=8)
    assert model.warm_up() > 0
    assert model.generate(conv(), max_new_tokens=8).generated_ids == before.generated_ids
