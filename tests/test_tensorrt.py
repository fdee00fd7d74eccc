"""TensorRT encoder engine, tested up to the library boundary (TensorRT cannot be installed here).

The pure pieces run on a real ONNX export of the tiny random model; the builder's calls are
checked against a small recording stand-in for the `tensorrt` module whose parser turns each
ONNX node into one layer named after it (what TensorRT's ONNX parser does for these ops).
"""

import json
import sys
import types

import pytest
import torch

from conftest import build_tiny_model

onnx = pytest.importorskip("onnx", reason="pip install onnx onnxruntime (part of the test extra)")
pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime (part of the test extra)")

from desta_edge.cli import main  # noqa: E402
from desta_edge.export.tensorrt import (  # noqa: E402
    build_engine, engine_manifest, fp32_node_names, graph_signature, keep_fp32, profile_shapes,
)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    from desta_edge.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("trt") / "export"
    export_onnx(build_tiny_model(), "tiny-random", out)
    return out


@pytest.fixture(scope="module")
def encoder(onnx_dir):
    return onnx.load(str(onnx_dir / "encoder.onnx"))


def test_profile_spans_the_batch_of_the_log_mel_input(encoder):
    assert profile_shapes(encoder, max_batch=4) == {
        "features": {"min": [1, 80, 3000], "opt": [1, 80, 3000], "max": [4, 80, 3000]}
    }
    assert profile_shapes(encoder, max_batch=4, opt_batch=2)["features"]["opt"] == [2, 80, 3000]
    with pytest.raises(ValueError, match="opt_batch"):
        profile_shapes(encoder, max_batch=2, opt_batch=3)
    other = onnx.ModelProto()
    other.CopyFrom(encoder)
    other.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "mels"  # a dynamic dimension with no known size
    with pytest.raises(ValueError, match="only the batch"):
        profile_shapes(other, max_batch=2)


def test_every_layernorm_of_encoder_and_connector_stays_fp32(encoder):
    names = fp32_node_names(encoder)
    by_name = {n.name: n.op_type for n in encoder.graph.node}
    layernorms = sorted(n for n, op in by_name.items() if op == "LayerNormalization")
    assert names == layernorms
    assert "/layer_norm/LayerNormalization" in names  # Whisper's final LayerNorm (feeds the decoder's cross k/v)
    assert any(n.startswith("/connector/") for n in names)  # the Q-Former's and the projection's
    assert len(names) >= 4 * 2 + 1  # two per encoder layer + the final one, at least


class DecomposedNorm(torch.nn.Module):
    """LayerNorm spelled out (what exporters emit below opset 17), next to a mean that is not a norm."""

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        d = x - mu
        y = d / torch.sqrt((d**2).mean(-1, keepdim=True) + 1e-5)
        pooled = x.mean(1, keepdim=True) + 1.0  # ReduceMean + Add, not a normalization
        return y * 2.0 + 0.5, pooled


def test_a_decomposed_layernorm_is_recognised_and_nothing_else(tmp_path):
    path = tmp_path / "norm.onnx"
    torch.onnx.export(DecomposedNorm(), (torch.randn(1, 3, 8),), str(path), opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    names = fp32_node_names(model)
    ops = sorted({n.name: n.op_type for n in model.graph.node}[name] for name in names)
    assert ops == sorted(["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div"])
    pooling_mean = [n for n in model.graph.node if n.op_type == "ReduceMean" and n.input[0] == model.graph.input[0].name
                    and n.name not in names]
    assert len(pooling_mean) == 1  # the pooling mean and its Add stay free to run in fp16


def test_which_tensorrt_layers_are_pinned():
    pinned = {"/a/Sub", "/a/LayerNormalization"}
    assert keep_fp32("anything", "", True, set())  # every normalization layer
    assert keep_fp32("/a/Sub", "", False, pinned)
    assert keep_fp32("(Unnamed Layer* 7) [ElementWise]", "[ONNX Layer: /a/Sub]", False, pinned)
    assert not keep_fp32("/a/Sub_1", "[ONNX Layer: /a/Sub_1]", False, pinned)
    assert not keep_fp32("/a/MatMul", "", False, pinned)


def test_manifest_copies_the_graph_signature(onnx_dir, encoder):
    m = engine_manifest(encoder, onnx_dir=onnx_dir, max_batch=2, opt_batch=1, fp16=True, fp32_layers=["x"],
                        tensorrt_version="10.x", workspace_gb=2.0)
    assert m["inputs"] == [{"name": "features", "shape": ["b", 80, "frames"], "dtype": "float"}]
    assert m["profile"]["features"] == {"min": [1, 80, 3000], "opt": [1, 80, 3000], "max": [2, 80, 3000]}
    assert [o["name"] for o in m["outputs"]] == ["cross_k", "cross_v", "audio_embeds"]
    assert m["outputs"][2]["shape"][0] == "b" and m["outputs"][2]["shape"][2] == 32  # [B, Q, d_llm]
    assert m["outputs"] == graph_signature(encoder)["outputs"]
    assert m["profile"]["features"]["max"] == [2, 80, 3000]
    assert m["has_connector"] is True and m["n_mels"] == 80 and m["precision"] == "fp16"
    json.dumps(m)  # serializable as written


# ---------------------------------------------------------------------- the builder against a stand-in


class FakeLayer:
    def __init__(self, name: str, type_: str) -> None:
        self.name, self.type, self.metadata = name, type_, f"[ONNX Layer: {name}]"
        self.precision = None
        self.num_outputs = 1
        self.output_types: dict[int, str] = {}

    def set_output_type(self, i: int, dtype: str) -> None:
        self.output_types[i] = dtype


class FakeNormalizationLayer(FakeLayer):
    compute_precision = None  # only the subclass has it, as in TensorRT's Python API


def fake_tensorrt(calls: dict, *, parse_ok: bool = True, engine: bytes | None = b"SERIALIZED"):
    """Just the TensorRT 10 API that build_engine uses, recording what it is asked to do."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0-fake"
    trt.float32 = "float32"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.LayerType = types.SimpleNamespace(NORMALIZATION="NORMALIZATION")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.INormalizationLayer = FakeNormalizationLayer

    class Network:
        def __init__(self) -> None:
            self.layers: list[FakeLayer] = []

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> FakeLayer:
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            calls["parsed"] = path
            if not parse_ok:
                self.num_errors = 1
                return False
            for node in onnx.load(path, load_external_data=False).graph.node:
                kind = "NORMALIZATION" if node.op_type == "LayerNormalization" else node.op_type.upper()
                self.network.layers.append(FakeLayer(node.name, kind))
            calls["layers"] = self.network.layers
            return True

        def get_error(self, i: int) -> str:
            return "unsupported op Foo"

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timed"

    class Config:
        def __init__(self) -> None:
            self.flags: list[str] = []
            calls["config"] = self

        def set_flag(self, flag: str) -> None:
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls["pool"] = (pool, size)

        def add_optimization_profile(self, profile) -> None:
            calls["profiles"] = calls.get("profiles", []) + [profile.shapes]

        def create_timing_cache(self, data: bytes) -> Cache:
            calls["cache_in"] = data
            return Cache(data)

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
            self.cache = cache

        def get_timing_cache(self) -> Cache:
            return self.cache

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict = {}

        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network, config):
            calls["built"] = True
            return engine

    trt.OnnxParser, trt.Builder = OnnxParser, Builder
    return trt


def test_fp16_build_pins_normalization_layers_and_keeps_the_timing_cache(onnx_dir, encoder, tmp_path, monkeypatch):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    cache = tmp_path / "cache" / "timing.cache"
    out = tmp_path / "engine"
    manifest = build_engine(onnx_dir, out, max_batch=3, timing_cache=cache, workspace_gb=1.5)

    assert calls["network_flags"] == 1  # explicit batch
    assert calls["parsed"] == str(onnx_dir / "encoder.onnx")
    assert calls["config"].flags == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert calls["profiles"] == [{"features": ([1, 80, 3000], [1, 80, 3000], [3, 80, 3000])}]
    assert calls["pool"] == ("WORKSPACE", int(1.5 * 2**30))
    layers = calls["layers"]
    norms = [layer for layer in layers if layer.type == "NORMALIZATION"]
    assert len(norms) == len(fp32_node_names(encoder)) > 0
    for layer in layers:
        pinned = layer.type == "NORMALIZATION"
        assert (layer.precision == "float32") is pinned, layer.name
        assert layer.output_types == ({0: "float32"} if pinned else {}), layer.name
    assert all(isinstance(layer, FakeNormalizationLayer) and layer.compute_precision == "float32" for layer in norms)
    assert not any(isinstance(layer, FakeNormalizationLayer) for layer in layers if layer.type != "NORMALIZATION")
    assert manifest["fp32_layers"] == [layer.name for layer in norms]

    assert (out / "encoder.engine").read_bytes() == b"SERIALIZED"
    assert json.loads((out / "tensorrt_engine.json").read_text()) == manifest
    assert manifest["tensorrt_version"] == "10.0-fake" and manifest["max_batch"] == 3
    assert calls["cache_in"] == b"" and cache.read_bytes() == b"+timed"
    build_engine(onnx_dir, out, max_batch=3, timing_cache=cache)  # a rebuild starts from the saved cache
    assert calls["cache_in"] == b"+timed" and cache.read_bytes() == b"+timed+timed"


def test_fp32_build_sets_no_precision(onnx_dir, tmp_path, monkeypatch):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    manifest = build_engine(onnx_dir, tmp_path / "engine", max_batch=1, fp16=False)
    assert calls["config"].flags == [] and "pool" not in calls
    assert all(layer.precision is None for layer in calls["layers"])
    assert manifest["precision"] == "fp32" and manifest["fp32_layers"] == []


def test_parse_and_build_failures_leave_no_output(onnx_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt({}, parse_ok=False))
    with pytest.raises(RuntimeError, match="unsupported op Foo"):
        build_engine(onnx_dir, tmp_path / "a")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt({}, engine=None))
    with pytest.raises(RuntimeError, match="failed to build"):
        build_engine(onnx_dir, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary directories left either


def test_missing_tensorrt_says_how_to_install_it(onnx_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(RuntimeError, match="pypi.nvidia.com") as err:
        build_engine(onnx_dir, tmp_path / "engine")
    assert "JetPack" in str(err.value)
    assert main(["export", "tensorrt", "--onnx", str(onnx_dir), "--out", str(tmp_path / "engine")]) == 1
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (tmp_path / "engine").exists()
    # bad input is reported as such (exit 2) before TensorRT is needed
    assert main(["export", "tensorrt", "--onnx", str(tmp_path), "--out", str(tmp_path / "engine")]) == 2
    assert "desta-edge export onnx" in capsys.readouterr().err
    assert main(["export", "tensorrt", "--onnx", str(onnx_dir), "--out", str(tmp_path / "e"), "--max-batch", "0"]) == 2
