"""Shared fixtures: tiny random backbones built in-process (fast tests) and synthesized speech."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from desta_edge.runtime.config import DestaConfig
from desta_edge.runtime.model import DestaModel

PROMPT_SIZE = 4
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module. benchmarks/ is not a package: import the script by path,
    registered in sys.modules (as dataclasses need), once per session."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


shapes = load_benchmark("shapes")  # the random backbones and byte-level tokenizers live there
LLM_SPECIALS, WHISPER_SPECIALS, CHATML = shapes.LLM_SPECIALS, shapes.WHISPER_SPECIALS, shapes.CHATML


def byte_tokenizer(specials: list[str], chat_template: str | None = None):
    """A byte-level BPE tokenizer with no merges: every byte is a token, plus `specials`."""
    return shapes.padded_byte_tokenizer(specials, len(specials) + 256, chat_template)


def tiny_shapes():
    """The test suite's backbones: a few layers 32 wide, vocabularies of specials + 256 bytes."""
    return shapes.Shapes("the test suite's tiny backbones", d_enc=32, enc_layers=4, dec_layers=2, enc_heads=4,
                         enc_ffn=64, n_mels=80, whisper_vocab=len(WHISPER_SPECIALS) + 256, d_llm=32, llm_layers=2,
                         llm_heads=4, llm_kv_heads=2, llm_ffn=64, llm_vocab=len(LLM_SPECIALS) + 256,
                         tied_embeddings=False, prompt_size=PROMPT_SIZE, qformer_layers=2)


def tiny_llm():
    torch.manual_seed(0)
    tok = byte_tokenizer(LLM_SPECIALS, CHATML)
    tok.eos_token = "<|im_end|>"
    return shapes.random_llm(tiny_shapes(), tok, max_positions=1024), tok


def tiny_whisper():
    torch.manual_seed(1)
    tok = byte_tokenizer(WHISPER_SPECIALS)
    return shapes.random_whisper(tiny_shapes(), tok, max_positions=160), tok


def tiny_config(**kw) -> DestaConfig:
    base = dict(llm_model_id="tiny-llm", encoder_model_id="tiny-whisper", prompt_size=PROMPT_SIZE,
                qformer_num_hidden_layers=2, placeholder_token="<ph>")
    base.update(kw)
    return DestaConfig(**base)


def build_tiny_model(audio_features: bool = True, connector_weights=None) -> DestaModel:
    whisper, wtok = tiny_whisper()
    llm, ltok = tiny_llm()
    torch.manual_seed(2)
    return DestaModel.from_components(
        tiny_config(), whisper, wtok, llm, ltok, connector_weights=connector_weights, audio_features=audio_features
    )


@pytest.fixture(scope="session")
def tiny_model() -> DestaModel:
    return build_tiny_model()


def save_tiny_checkpoint(d: Path) -> Path:
    """A checkpoint directory with the tiny random backbones beside it (loadable by from_pretrained)."""
    from desta_edge.runtime.checkpoint import save_checkpoint

    whisper, wtok = tiny_whisper()
    llm, ltok = tiny_llm()
    whisper.save_pretrained(d / "whisper"); wtok.save_pretrained(d / "whisper")
    llm.save_pretrained(d / "llm"); ltok.save_pretrained(d / "llm")
    save_checkpoint(d, tiny_config(llm_model_id="llm", encoder_model_id="whisper"), build_tiny_model().connector)
    return d


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"))


@pytest.fixture(scope="session")
def tiny_onnx_export(tiny_checkpoint, tmp_path_factory) -> Path:
    """An ONNX export of `tiny_checkpoint` (fp32). Copy it before changing anything in it."""
    pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime (part of the test extra)")
    from desta_edge.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("tiny-onnx") / "export"
    export_onnx(DestaModel.from_pretrained(tiny_checkpoint, device="cpu"), str(tiny_checkpoint), out)
    return out


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def wav_file(tmp_path: Path):
    """Write samples to a WAV and return its path: wav_file(samples, rate, name=...)."""

    def write(samples: np.ndarray, rate: int = 16000, name: str = "clip.wav", subtype: str | None = None) -> Path:
        path = tmp_path / name
        sf.write(str(path), samples, rate, subtype=subtype)
        return path

    return write


ESPEAK = shutil.which("espeak-ng")


def speak(text: str, path: Path, *, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> Path:
    """Synthesize `text` with espeak-ng into a 22.05 kHz WAV (the CI installs espeak-ng)."""
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng (the test setup does this)")
    subprocess.run([ESPEAK, "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(path), text], check=True)
    return path


def said(text: str, path: Path, **kw) -> np.ndarray:
    """`speak`'s speech as 16 kHz float32 samples, cut to where it is audible (|x| > 0.01)."""
    import soxr

    x, sr = sf.read(str(speak(text, path, **kw)), dtype="float32")
    x = soxr.resample(x, sr, 16000).astype(np.float32)
    nz = np.flatnonzero(np.abs(x) > 0.01)
    return x[nz[0] : nz[-1] + 1]
