"""TensorRT-LLM engine for the LLM, with room for the audio embeddings of `max_batch` clips.

NOT YET RUN ON HARDWARE: written to TensorRT-LLM's documented model/engine API (1.2.x):
`LLaMAForCausalLM.from_hugging_face` (or `.quantize` + `.from_checkpoint`), `BuildConfig`,
`tensorrt_llm.build`, `Engine.save`; tested up to the library boundary with a recording
stand-in for the `tensorrt_llm` package.

    desta-edge export trtllm --model tiny --out EXPORT/trtllm [--max-batch 1] [--quantize fp8|int4_awq]

writes into --out:

    trtllm_export.json   manifest: DeSTA config, vocab size, prompt size, limits, quantization, end ids
    engine/              `Engine.save` output (config.json + rank0.engine), what `ModelRunner.from_dir` loads
    llm/                 the LLM tokenizer (chat template included)

The audio embeddings reach the engine through its prompt-embedding table (the multimodal /
p-tuning input): `max_prompt_embedding_table_size = prompt_size * max_batch`, one clip's 64
rows per conversation (`runtime/prompt_table.py` builds the ids and the table per batch).
Only Llama-architecture LLMs (Llama 3.x, SmolLM2) are handled: `LLaMAForCausalLM`.

Quantization: `fp8` (weights, activations and KV cache in FP8; Hopper/Ada, e.g. H100) and
`int4_awq` (W4A16 AWQ; the usual choice on Jetson Orin). Both calibrate with TensorRT-LLM's
ModelOpt flow on `--calib-dataset` (a Hugging Face dataset name, `cnn_dailymail` by default,
or a local copy: offline machines need the local copy).

Newer TensorRT-LLM and Jetson:
- Since 1.0 the default `tensorrt_llm.LLM` runs on the PyTorch backend: it loads a Hugging Face
  checkpoint directly, with no engine build; engines (`trtllm-build`, `ModelRunner`) are the
  "legacy" TensorRT backend, still shipped in 1.2. On that backend this module's build step
  goes away and the audio embeddings go in through the LLM API's multimodal-embedding inputs
  instead of a prompt table; the id/table layout of `runtime/prompt_table.py` stays the model.
- Jetson: TensorRT-LLM for Jetson comes from its JetPack branch (v0.12.0-jetson, JetPack 6.1,
  Orin), older than this API in places (build through `trtllm-build`); NVIDIA's newer route for
  Jetson is TensorRT Edge-LLM (C++ runtime, ONNX -> engines, its own multimodal embedding
  input). Build engines on the device they will run on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from types import SimpleNamespace

from desta_edge.runtime.trtllm_backend import (
    TENSORRT_LLM_HINT, TRTLLM_ENGINE_DIR, TRTLLM_FORMAT_VERSION, TRTLLM_MANIFEST, TRTLLM_TOKENIZER_DIR,
)

from .staging import staged_dir

logger = logging.getLogger(__name__)

QUANTIZATIONS: dict[str, dict[str, str] | None] = {
    "none": None,
    "fp8": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"},  # Hopper / Ada
    "int4_awq": {"quant_algo": "W4A16_AWQ"},  # Jetson Orin, small GPUs
}
DTYPES = ("float16", "bfloat16")


def tensorrt_llm_api() -> SimpleNamespace:
    """The TensorRT-LLM names this module uses, or a RuntimeError that says how to install it."""
    try:
        import tensorrt_llm
        from tensorrt_llm.builder import BuildConfig, build
        from tensorrt_llm.models import LLaMAForCausalLM
        from tensorrt_llm.models.modeling_utils import QuantConfig
        from tensorrt_llm.quantization import QuantAlgo
    except ImportError as e:
        raise RuntimeError(TENSORRT_LLM_HINT) from e
    return SimpleNamespace(version=str(getattr(tensorrt_llm, "__version__", "unknown")), BuildConfig=BuildConfig,
                           build=build, LLaMAForCausalLM=LLaMAForCausalLM, QuantConfig=QuantConfig, QuantAlgo=QuantAlgo)


# ---------------------------------------------------------------------- pure pieces


def build_settings(*, prompt_size: int, max_batch: int, max_input_len: int, max_output_len: int) -> dict[str, int]:
    """`BuildConfig` keyword arguments. The prompt-embedding table holds one clip per conversation."""
    if max_batch < 1 or max_output_len < 1:
        raise ValueError(f"--max-batch ({max_batch}) and --max-output-len ({max_output_len}) must be >= 1")
    if max_input_len <= prompt_size:
        raise ValueError(f"--max-input-len ({max_input_len}) must exceed the {prompt_size} audio positions of a clip")
    return {
        "max_batch_size": max_batch,
        "max_input_len": max_input_len,
        "max_seq_len": max_input_len + max_output_len,
        "max_prompt_embedding_table_size": prompt_size * max_batch,
    }


def quant_plan(quantize: str) -> dict[str, str] | None:
    """`QuantConfig` fields (as `QuantAlgo` member names) for a --quantize choice; None = no quantization."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    return QUANTIZATIONS[quantize]


def check_llama(hf_config: dict, source: str) -> None:
    """Only Llama-architecture LLMs map onto `LLaMAForCausalLM`."""
    if hf_config.get("model_type") != "llama":
        raise ValueError(
            f"{source}: model_type {hf_config.get('model_type')!r}; TensorRT-LLM export handles Llama-architecture "
            "LLMs (Llama 3.x, SmolLM2) only"
        )


def trtllm_manifest(*, desta_config: dict, llm_source: str, hf_config: dict, settings: dict[str, int],
                    quantize: str, dtype: str, eos_token_ids: list[int], tensorrt_llm_version: str) -> dict:
    """What a runtime needs to load the engine and feed it DeSTA prompts."""
    prompt_size = int(desta_config["prompt_size"])
    return {
        "format_version": TRTLLM_FORMAT_VERSION,
        "engine_dir": TRTLLM_ENGINE_DIR,
        "tokenizer_dir": TRTLLM_TOKENIZER_DIR,
        "desta_config": desta_config,
        "llm": llm_source,
        "architecture": "llama",
        "vocab_size": int(hf_config["vocab_size"]),  # ids >= this address the prompt table
        "hidden_size": int(hf_config["hidden_size"]),
        "prompt_size": prompt_size,
        "max_batch": settings["max_batch_size"],
        "max_input_len": settings["max_input_len"],
        "max_seq_len": settings["max_seq_len"],
        "max_prompt_embedding_table_size": settings["max_prompt_embedding_table_size"],
        "quantization": quantize,
        "quant_config": quant_plan(quantize),
        "dtype": dtype,
        "eos_token_ids": sorted(eos_token_ids),
        "tensorrt_llm_version": tensorrt_llm_version,
    }


def resolve_llm(name: str, *, progress: bool = True):
    """A preset, DeSTA checkpoint dir or hub id -> (DeSTA config, the LLM's id or local dir)."""
    from desta_edge.runtime.model import _resolve  # the same resolution `DestaModel.from_pretrained` uses
    from desta_edge.runtime.presets import resolve_backbone

    config, _weights, base_dir = _resolve(name)
    return config, resolve_backbone(config.llm_model_id, base_dir=base_dir, progress=progress)


def _hf_config(llm: str) -> dict:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(llm).to_dict()


def _eos_ids(llm: str, tokenizer) -> list[int]:
    from transformers import GenerationConfig

    from desta_edge.runtime.generation import eos_ids_of

    try:
        gen = GenerationConfig.from_pretrained(llm)
    except OSError:  # no generation_config.json: the tokenizer's end id alone
        gen = SimpleNamespace(eos_token_id=None)
    return sorted(eos_ids_of(gen, tokenizer))


# ---------------------------------------------------------------------- the build (needs TensorRT-LLM)


def export_trtllm(name: str, out_dir: str | os.PathLike, *, max_batch: int = 1, max_input_len: int = 1024,
                  max_output_len: int = 512, quantize: str = "none", dtype: str = "float16",
                  calib_dataset: str = "cnn_dailymail", progress: bool = True) -> dict:
    """Convert the DeSTA model's LLM and build its engine into `out_dir` (replaced); returns the manifest."""
    from transformers import AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    plan = quant_plan(quantize)
    config, llm = resolve_llm(name, progress=progress)
    if config.use_lora:
        raise ValueError(f"{name} has a LoRA (use_lora): TensorRT-LLM export of LoRA adapters is not supported yet; "
                         "run it with the torch backend")
    settings = build_settings(prompt_size=config.prompt_size, max_batch=max_batch, max_input_len=max_input_len,
                              max_output_len=max_output_len)
    hf_config = _hf_config(llm)
    check_llama(hf_config, llm)
    api = tensorrt_llm_api()  # after the cheap checks: bad arguments fail without TensorRT-LLM too

    with staged_dir(out_dir) as tmp:
        if plan is None:
            model = api.LLaMAForCausalLM.from_hugging_face(llm, dtype=dtype)
        else:
            quant_config = api.QuantConfig(**{k: getattr(api.QuantAlgo, v) for k, v in plan.items()})
            checkpoint = tmp / "checkpoint"  # the quantized TensorRT-LLM checkpoint; dropped after the build
            logger.info("quantizing %s to %s (calibration on %s)", llm, quantize, calib_dataset)
            api.LLaMAForCausalLM.quantize(llm, str(checkpoint), dtype=dtype, quant_config=quant_config,
                                          calib_dataset=calib_dataset)
            model = api.LLaMAForCausalLM.from_checkpoint(str(checkpoint))
        logger.info("building the TensorRT-LLM engine: %s", settings)
        engine = api.build(model, api.BuildConfig(**settings))
        engine.save(str(tmp / TRTLLM_ENGINE_DIR))
        shutil.rmtree(tmp / "checkpoint", ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(llm)
        tokenizer.save_pretrained(tmp / TRTLLM_TOKENIZER_DIR)
        manifest = trtllm_manifest(desta_config=config.to_dict(), llm_source=llm, hf_config=hf_config,
                                   settings=settings, quantize=quantize, dtype=dtype,
                                   eos_token_ids=_eos_ids(llm, tokenizer), tensorrt_llm_version=api.version)
        (tmp / TRTLLM_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
