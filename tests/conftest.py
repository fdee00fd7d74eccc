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

LLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<ph>"]
WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
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


def byte_tokenizer(specials: list[str], chat_template: str | None = None):
    """A byte-level BPE tokenizer with no merges: every byte is a token, plus `specials`."""
    return load_benchmark("shapes").padded_byte_tokenizer(specials, len(specials) + 256, chat_template)


def tiny_llm():
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = byte_tokenizer(LLM_SPECIALS, CHATML)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    tok.eos_token = "<|im_end|>"
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=eos, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    return model, tok


def tiny_whisper():
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(1)
    tok = byte_tokenizer(WHISPER_SPECIALS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    cfg = WhisperConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=4, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=160,
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=False, max_length=160,
    )
    return model, tok


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
