"""ONNX Runtime backend: the whole model from an export directory, no PyTorch backbones needed.

An export directory (`desta-edge export onnx`) is self-contained:

    onnx_export.json      manifest: format, graph signatures, cache shapes, end-of-answer ids, parity
    config.json           the DeSTA config (prompt size, audio locator, placeholder token, ...)
    encoder.onnx          log-mel [B, mels, 3000] -> Whisper cross-attention k/v [L, B, H, T, Dh]
                          (+ audio embeddings [B, Q, d_llm] when the model has an adapter)
    decoder.onnx          Whisper decoder step with explicit self-attention k/v
    llm.onnx              LLM step on input embeddings with explicit k/v
    llm_embeddings.safetensors, llm/ (tokenizer), whisper/ (tokenizer + generation config)
    ort_cache/            written at first load: optimized graphs (and TensorRT engines)

The orchestration (prompt assembly, splicing, greedy/sampled decoding loops, the prefix cache)
is shared with the PyTorch backend; only the step functions differ.

Execution providers (`OrtOptions.provider`):
- `cpu`: all graph optimizations, one intra-op thread per usable core. The optimized graphs are
  written once to `ort_cache/`, weights in a file of their own; later sessions load them with
  optimizations off and the weights memory-mapped (the tiny preset's three sessions: 2.3 s ->
  1.4 s on the 2-core CPU). The CUDA provider gets the same cache.
- `cuda`: CUDA EP. The Whisper decoder and LLM step loops run through IOBinding (`OrtRunner`):
  the key/value caches stay on the GPU between steps and only the logits come back to the host.
- `tensorrt`: TensorRT EP (CUDA EP for what TensorRT does not take) with fp16, engine and
  timing caches in `ort_cache/trt/`, and explicit optimization profiles built from the graphs'
  dynamic axes (`trt_profile_shapes`).
The CUDA and TensorRT paths are written to ONNX Runtime's documented API and NOT YET RUN ON
HARDWARE; the IOBinding runner is tested on the CPU provider, the TensorRT options as data.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .audio import N_FRAMES
from .backends import EncodedAudio
from .generation import PrefixCache, SamplingOptions, StepTimes, eos_ids_of, last_logits, stream_with_prefix
from .whisper import MAX_TRANSCRIPT_TOKENS, WhisperDecoding

logger = logging.getLogger(__name__)

MANIFEST = "onnx_export.json"
FORMAT_VERSION = 2
ENCODER_FILE, DECODER_FILE, LLM_FILE = "encoder.onnx", "decoder.onnx", "llm.onnx"
EMBEDDINGS_FILE = "llm_embeddings.safetensors"
LLM_TOKENIZER_DIR, WHISPER_DIR = "llm", "whisper"
ORT_CACHE_DIR = "ort_cache"
# 2 (2026-11-29): the connector's shared weights quantized too, the convolutions left in fp32
QUANTIZER_REVISION = 2
WHISPER_MAX_PROMPT = 4  # forced decoder start tokens: sot, language, task, notimestamps


def is_onnx_export(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike) -> dict:
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: ONNX export format {manifest.get('format_version')}, this desta-edge reads "
            f"{FORMAT_VERSION}; export again with `desta-edge export onnx`"
        )
    return manifest


def stale_quantization(path: str | os.PathLike, manifest: dict) -> str | None:
    """Why an encoder quantized by an older desta-edge is worth exporting again, or None."""
    if "encoder" not in (manifest.get("quantized_graphs") or []) or \
            manifest.get("quantizer_revision", 1) >= QUANTIZER_REVISION:
        return None
    return (f"{path}: its encoder was quantized by an older desta-edge, which left the connector's shared "
            f"weights in fp32 (and for int8 made the convolutions slower); export it again with `desta-edge "
            f"export onnx` for a faster encoder (int8: 1.5x on a 2-core AVX-512 CPU)")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError('the onnx backend needs ONNX Runtime: pip install "desta-edge[onnx]"') from e
    return onnxruntime


# ---------------------------------------------------------------------- execution providers


class OrtProvider(str, enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"

    @property
    def ep_name(self) -> str:
        return {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                "tensorrt": "TensorrtExecutionProvider"}[self.value]

    @classmethod
    def parse(cls, name: "str | OrtProvider") -> "OrtProvider":
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown ONNX Runtime provider {name!r}; choose one of {known}") from None


@dataclass(frozen=True)
class ShapeLimits:
    """The shape ranges TensorRT builds its optimization profiles for.

    One profile per graph, tuned (`opt`) for the step that dominates: a one-token decode step
    at `opt_context` cached positions. Inputs outside [min, max] fail at run time, so `max_*`
    bound what the model accepts under TensorRT.
    """

    max_batch: int = 4  # clips (encoder, ASR) and conversations (LLM) per call
    max_context: int = 2048  # LLM positions: prompt + answer
    opt_context: int = 256  # LLM cached positions the decode step is tuned for
    max_transcript: int = MAX_TRANSCRIPT_TOKENS  # Whisper tokens generated per clip


@dataclass(frozen=True)
class OrtOptions:
    """How the ONNX backend uses ONNX Runtime (`DestaModel.from_pretrained(..., ort_options=...)`)."""

    provider: OrtProvider | str | None = None  # None: cuda when the device is CUDA and ORT has it, else cpu
    threads: int | None = None  # CPU intra-op threads (default: usable cores)
    io_binding: bool | None = None  # None: on for cuda/tensorrt (k/v stay on the device), off for cpu
    cache_dir: str | os.PathLike | None = None  # optimized graphs + TensorRT caches; None: EXPORT/ort_cache
    optimized_cache: bool = True  # write the optimized graphs once, load them later
    trt_fp16: bool = True  # TensorRT: allow fp16 kernels
    limits: ShapeLimits = field(default_factory=ShapeLimits)


def resolve_provider(requested: OrtProvider | str | None, device: torch.device, available: list[str]) -> OrtProvider:
    """The provider to use: the one asked for (it must be present), else CUDA on a CUDA device.

    An explicit request that this onnxruntime cannot serve is an error; an implicit CUDA device
    without the CUDA provider falls back to the CPU with a warning (as `--device cuda` always did).
    """
    if requested is not None:
        provider = OrtProvider.parse(requested)
        if provider.ep_name not in available:
            raise RuntimeError(
                f"ONNX Runtime provider {provider.value!r} ({provider.ep_name}) is not in this onnxruntime "
                f"(it has {', '.join(available)}); install onnxruntime-gpu"
                + (" and TensorRT" if provider is OrtProvider.TENSORRT else "")
            )
        return provider
    if device.type == "cuda":
        if OrtProvider.CUDA.ep_name in available:
            return OrtProvider.CUDA
        logger.warning("CUDA requested but this onnxruntime has no CUDA provider (pip install onnxruntime-gpu): using CPU")
    return OrtProvider.CPU


def axis_ranges(graph: str, limits: ShapeLimits) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each named dynamic axis of an exported graph (names from export/onnx.py).

    b: batch; s: new positions this step; p: cached positions; t = p + s (the LLM's attention mask);
    frames: log-mel frames; enc_t: encoder positions (frames / 2).
    Cached positions start at 0: the first step of each loop runs on an empty cache.
    """
    b = (1, 1, limits.max_batch)
    full = (N_FRAMES, N_FRAMES, N_FRAMES)  # TensorRT runs the full 30 s window only
    if graph == "encoder":
        return {"b": b, "frames": full}
    if graph == "decoder":
        max_p = WHISPER_MAX_PROMPT + limits.max_transcript
        return {"b": b, "s": (1, 1, WHISPER_MAX_PROMPT), "p": (0, min(32, max_p), max_p),
                "enc_t": tuple(n // 2 for n in full)}
    if graph == "llm":
        n, opt = limits.max_context, min(limits.opt_context, limits.max_context - 1)
        return {"b": b, "s": (1, 1, n), "p": (0, opt, n), "t": (1, opt + 1, n)}
    raise ValueError(f"unknown graph {graph!r}")


def trt_profile_shapes(signature: dict[str, list[int | str]], ranges: dict[str, tuple[int, int, int]]) -> dict[str, str]:
    """TensorRT EP's explicit optimization profile: min/opt/max shapes of every dynamic input.

    signature: input name -> dims (ints are fixed, strings name a dynamic axis). The EP wants
    all dynamic inputs in the form "name:AxBxC,name2:...", the same three times.
    """
    for axis, (lo, opt, hi) in ranges.items():
        if not 0 <= lo <= opt <= hi:
            raise ValueError(f"axis {axis!r}: need 0 <= min <= opt <= max, got {(lo, opt, hi)}")
    out: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for name, dims in signature.items():
        if all(isinstance(d, int) for d in dims):
            continue  # a static input needs no profile
        missing = [d for d in dims if isinstance(d, str) and d not in ranges]
        if missing:
            raise ValueError(f"input {name!r} has dynamic axes {missing} with no range")
        for i, key in enumerate(("min", "opt", "max")):
            shape = [d if isinstance(d, int) else ranges[d][i] for d in dims]
            out[key].append(f"{name}:{'x'.join(str(x) for x in shape)}")
    return {f"trt_profile_{k}_shapes": ",".join(v) for k, v in out.items()}


def graph_signature(path: Path) -> dict[str, list[int | str]]:
    """Input name -> dims of an ONNX graph (dim_param names for dynamic axes), without its weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    sig: dict[str, list[int | str]] = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        sig[inp.name] = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in dims]
    return sig


def tensorrt_options(graph: str, signature: dict[str, list[int | str]], cache_dir: Path, *, device_id: int = 0,
                     fp16: bool = True, limits: ShapeLimits = ShapeLimits()) -> dict[str, object]:
    """TensorRT EP provider options for one graph. NOT YET RUN ON HARDWARE.

    Engines and the timing cache persist in `cache_dir/trt` (the first build takes minutes);
    the explicit profile must be passed on every load, or a cached engine is rebuilt.
    """
    trt_dir = str(Path(cache_dir) / "trt")
    return {
        "device_id": device_id,
        "trt_fp16_enable": fp16,
        "trt_layer_norm_fp32_fallback": fp16,  # fp16 LayerNorm overflows on Whisper's residual stream
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": trt_dir,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": trt_dir,
        **trt_profile_shapes(signature, axis_ranges(graph, limits)),
    }


def execution_providers(provider: OrtProvider, *, device_id: int = 0, trt: dict[str, object] | None = None) -> list:
    """The `providers=` list for `InferenceSession`: the chosen EP first, then its fallbacks."""
    cpu = OrtProvider.CPU.ep_name
    if provider is OrtProvider.CPU:
        return [cpu]
    cuda = (OrtProvider.CUDA.ep_name, {"device_id": device_id})
    if provider is OrtProvider.CUDA:
        return [cuda, cpu]
    if trt is None:
        raise ValueError("the TensorRT provider needs its options (tensorrt_options)")
    return [(OrtProvider.TENSORRT.ep_name, trt), cuda, cpu]


# ---------------------------------------------------------------------- sessions


def _hardware_key() -> str:
    """What an ORT_ENABLE_ALL graph depends on: the CPU's instruction set (layout transforms)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}:{hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def optimized_graph_dir(graph: Path, cache_dir: Path, ep_name: str, ort_version: str) -> Path:
    """The cache entry for `graph`: a directory whose name changes when anything it depends on does.

    Keyed by onnxruntime version, execution provider, CPU, and the graph file's size and mtime
    (hashing a 500 MB graph at every load would cost what the cache saves). It holds
    `graph.onnx` (the optimized graph) and `graph.data` (its weights, memory-mapped on load).
    """
    st = graph.stat()
    key = json.dumps([ort_version, ep_name, _hardware_key(), graph.name, st.st_size, st.st_mtime_ns])
    short = ep_name.removesuffix("ExecutionProvider").lower()
    return cache_dir / f"{graph.stem}.{short}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"


CACHED_GRAPH, CACHED_WEIGHTS = "graph.onnx", "graph.data"


def default_cache_dir(export_dir: Path) -> Path:
    """EXPORT/ort_cache, or a per-export directory in the user cache when the export is read-only."""
    if os.access(export_dir, os.W_OK):
        return export_dir / ORT_CACHE_DIR
    from .bundled import cache_root

    digest = hashlib.sha256(str(export_dir.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "ort" / digest


def open_session(path: Path, device: torch.device, threads: int | None = None, *, providers: list | None = None,
                 cache_dir: Path | None = None, spin: bool = True):
    """An inference session: all graph optimizations, one intra-op thread per usable core.

    providers: an `execution_providers` list (default: CPU, or CUDA on a CUDA device if present).
    cache_dir: for the CPU and CUDA providers, write the optimized graph there once, with its
    weights in a separate file, and later load that copy with optimizations off; the weights are
    then memory-mapped instead of parsed. TensorRT compiles its own engines: never cached here.
    spin: idle intra-op threads busy-wait for the next run (ONNX Runtime's default). They keep
    a core busy after the run ends, which slows whatever runs next on a small CPU.
    """
    ort = _onnxruntime()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def options(optimize: bool):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        opts.intra_op_num_threads = threads or cores
        opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    if providers is None:
        provider = resolve_provider(None, device, ort.get_available_providers())
        providers = execution_providers(provider, device_id=device.index or 0)
    first = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if cache_dir is None or first == OrtProvider.TENSORRT.ep_name:
        return ort.InferenceSession(str(path), options(True), providers=providers)
    entry = optimized_graph_dir(Path(path), Path(cache_dir), first, ort.__version__)
    if (entry / CACHED_GRAPH).is_file():
        try:  # optimizations were applied when the entry was written
            return ort.InferenceSession(str(entry / CACHED_GRAPH), options(False), providers=providers)
        except Exception as e:  # a damaged cache entry must not stop the model from loading
            logger.warning("ignoring unreadable optimized graph %s (%s)", entry, e)
            shutil.rmtree(entry, ignore_errors=True)
    return _session_writing_cache(ort, Path(path), options, providers, entry)


def _session_writing_cache(ort, path: Path, options, providers: list, entry: Path):
    """Create the session while ONNX Runtime writes the optimized graph into a private directory,
    then publish that directory under the entry's name in one rename (a concurrent loader sees
    a complete entry or none; if another process published first, its entry is kept).
    options(optimize) -> fresh SessionOptions."""
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        opts = options(True)
        opts.optimized_model_filepath = str(tmp / CACHED_GRAPH)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", CACHED_WEIGHTS)
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        opts.log_severity_level = 3  # ORT warns the graph is hardware-specific: the cache key says which hardware
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # read-only directory, full disk: run uncached
        shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("could not cache the optimized %s (%s); loading it without the cache", path.name, e)
        return ort.InferenceSession(str(path), options(True), providers=providers)
    try:
        os.replace(tmp, entry)
    except OSError:  # another process published this entry first
        shutil.rmtree(tmp, ignore_errors=True)  # our session keeps its mapping of the weights
    prefix = entry.name.rsplit(".", 1)[0] + "."  # "<graph>.<provider>."
    for stale in entry.parent.glob(prefix + "*"):
        if stale != entry:
            shutil.rmtree(stale, ignore_errors=True)  # entries for an older graph, onnxruntime or CPU
    return session


class OrtRunner:
    """Runs one session step after step, either plainly or through IOBinding.

    Plain (`bind=False`): `session.run` on host numpy arrays; outputs come back as numpy.
    Bound (`bind=True`): inputs that are `OrtValue`s are bound where they are (no copy), numpy
    inputs are copied in once; outputs named in `host` are bound to the CPU and returned as numpy,
    every other output stays on `device` as an `OrtValue` that the next step binds as an input.
    That keeps the key/value caches on the GPU between decode steps. The class is device-agnostic,
    so bound mode is tested on the CPU against plain runs.
    """

    def __init__(self, session, *, bind: bool = False, device: str = "cpu", device_id: int = 0) -> None:
        self.session = session
        self.bind = bind
        self.device, self.device_id = device, device_id
        self.output_names = [o.name for o in session.get_outputs()]

    def put(self, array: np.ndarray):
        """An input reused across steps (e.g. cross-attention k/v): on the device once when bound."""
        if not self.bind:
            return array
        ort = _onnxruntime()
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def run(self, feeds: dict[str, object], host: tuple[str, ...] = ()) -> dict[str, object]:
        if not self.bind:
            return dict(zip(self.output_names, self.session.run(None, feeds)))
        binding = self.session.io_binding()
        alive = []  # numpy inputs must outlive the run: ORT may read them in place
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                value = np.ascontiguousarray(value)
                alive.append(value)
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            if name in host:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return {n: (v.numpy() if n in host else v) for n, v in zip(self.output_names, outs)}


@dataclass(frozen=True)
class OrtKV:
    """An explicit key/value cache: (k, v) as numpy arrays or device `OrtValue`s, [L, B, H, P, Dh].

    Immutable: every step returns new tensors and never writes into its inputs, so the prefix
    cache can hand out the same object instead of deep-copying it.
    """

    k: object
    v: object

    def __deepcopy__(self, memo) -> "OrtKV":
        return self

    def __getitem__(self, i: int):
        return (self.k, self.v)[i]

    @property
    def length(self) -> int:
        shape = self.k.shape() if callable(self.k.shape) else self.k.shape
        return int(shape[3])


class _OrtLLM:
    """Callable like a transformers causal LM (the subset `generate_stream` uses), on llm.onnx."""

    def __init__(self, runner: OrtRunner, embeddings: torch.Tensor, cache_shape: dict) -> None:
        self.runner = runner
        self.embeddings = embeddings  # [vocab, d]
        self.layers, self.kv_heads, self.head_dim = cache_shape["layers"], cache_shape["kv_heads"], cache_shape["head_dim"]

    def __call__(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                 past_key_values=None, use_cache=True):
        if inputs_embeds is None:
            inputs_embeds = self.embeddings[input_ids]
        b, s = inputs_embeds.shape[:2]
        if past_key_values is None:
            empty = np.zeros((self.layers, b, self.kv_heads, 0, self.head_dim), dtype=np.float32)
            past_key_values = OrtKV(empty, empty)
        p = past_key_values.length
        if attention_mask is None:
            attention_mask = torch.ones(b, p + s, dtype=torch.long)
        if position_ids is None:
            position_ids = torch.arange(p, p + s).repeat(b, 1)
        out = self.runner.run({
            "inputs_embeds": inputs_embeds.float().numpy(),
            "attention_mask": attention_mask.long().numpy(),
            "position_ids": position_ids.long().numpy(),
            "past_k": past_key_values.k,
            "past_v": past_key_values.v,
        }, host=("logits",))
        return SimpleNamespace(logits=torch.from_numpy(out["logits"])[:, None], past_key_values=OrtKV(out["k"], out["v"]))


# ---------------------------------------------------------------------- the backend


class OnnxBackend:
    """Every stage in ONNX Runtime; same inputs and outputs as `TorchBackend`."""

    connector = None  # the trained weights live inside encoder.onnx

    def __init__(self, export_dir: str | os.PathLike, manifest: dict, device: torch.device, whisper_tokenizer,
                 options: OrtOptions | None = None) -> None:
        from safetensors.torch import load_file
        from transformers import GenerationConfig

        ort = _onnxruntime()
        d = Path(export_dir)
        opts = options or OrtOptions()
        self.manifest = manifest
        if stale := stale_quantization(d, manifest):
            logger.warning(stale)
        self.device = torch.device("cpu")  # tensors handed to and from ONNX Runtime live on the host
        self.dtype = torch.float32
        self.n_mels = manifest["n_mels"]
        self.provider = resolve_provider(opts.provider, device, ort.get_available_providers())
        device_id = device.index or 0
        cache_dir = Path(opts.cache_dir) if opts.cache_dir is not None else default_cache_dir(d)

        def session(graph: str, file: str, spin: bool = True):
            trt = None
            if self.provider is OrtProvider.TENSORRT:
                signature = (manifest.get("signatures") or {}).get(graph) or graph_signature(d / file)
                trt = tensorrt_options(graph, signature, cache_dir, device_id=device_id, fp16=opts.trt_fp16,
                                       limits=opts.limits)
                (cache_dir / "trt").mkdir(parents=True, exist_ok=True)
            providers = execution_providers(self.provider, device_id=device_id, trt=trt)
            return open_session(d / file, device, opts.threads, providers=providers,
                                cache_dir=cache_dir if opts.optimized_cache else None, spin=spin)

        bind = opts.io_binding if opts.io_binding is not None else self.provider is not OrtProvider.CPU
        on = "cpu" if self.provider is OrtProvider.CPU else "cuda"
        # No spinning threads in the encoder and the Whisper decoder: they would take the cores
        # from the next stage (ASR, then the prefill) and from the Python work between decoder
        # steps. The LLM keeps them for its own decode loop. See "Backends and export".
        self.encoder = session("encoder", ENCODER_FILE, spin=False)
        self.decoder = OrtRunner(session("decoder", DECODER_FILE, spin=False), bind=bind, device=on, device_id=device_id)
        self._enc_outputs = [o.name for o in self.encoder.get_outputs()]
        frames = next(i for i in self.encoder.get_inputs() if i.name == "features").shape[2]
        # a reason the encoder cannot read a shorter window (DestaModel.set_encoder_padding), or None
        self.full_window_only: str | None = (
            "this export's encoder has a fixed frame count; re-export it with desta-edge export onnx"
            if isinstance(frames, int) else
            "the TensorRT provider's optimization profile covers the full window only"
            if self.provider is OrtProvider.TENSORRT else None)
        embeddings = load_file(str(d / EMBEDDINGS_FILE))["weight"]
        llm = OrtRunner(session("llm", LLM_FILE), bind=bind, device=on, device_id=device_id)
        self.llm = _OrtLLM(llm, embeddings, manifest["llm_cache"])
        self.decoding = WhisperDecoding(GenerationConfig.from_pretrained(d / WHISPER_DIR), whisper_tokenizer)
        self._dec_cache = manifest["decoder_cache"]
        self._prefix = PrefixCache()

    @property
    def providers(self) -> list[str]:
        """The execution providers the sessions actually got, in priority order."""
        return list(self.llm.runner.session.get_providers())

    @property
    def io_binding(self) -> bool:
        return self.llm.runner.bind

    def to(self, device=None, dtype=None) -> "OnnxBackend":
        if (device is not None and torch.device(device).type != "cpu") or dtype not in (None, torch.float32):
            raise ValueError("the onnx backend picks its execution provider at load time; pass device= to from_pretrained")
        return self

    def eos_ids(self, tokenizer) -> set[int]:
        return eos_ids_of(SimpleNamespace(eos_token_id=self.manifest["eos_token_ids"]), tokenizer)

    def encode(self, features: torch.Tensor, *, with_connector: bool) -> EncodedAudio:
        # features [B, n_mels, 3000] -> cross k/v [L, B, H, T, Dh] (+ audio embeddings [B, Q, d_llm])
        out = dict(zip(self._enc_outputs, self.encoder.run(None, {"features": features.float().cpu().numpy()})))
        embeds = None
        if with_connector:
            if "audio_embeds" not in out:
                raise RuntimeError("this export has no connector (transcript-only)")
            embeds = torch.from_numpy(out["audio_embeds"])
        return EncodedAudio(final=(out["cross_k"], out["cross_v"]), audio_embeds=embeds)

    def transcribe(self, encoded: EncodedAudio, rows: list[int], max_new_tokens: int) -> list[str]:
        # the cross-attention k/v go to the device once per call, not once per step
        cross_k, cross_v = (self.decoder.put(np.ascontiguousarray(t[:, rows])) for t in encoded.final)
        c = self._dec_cache

        def step(tokens: torch.Tensor, state: OrtKV | None):
            if state is None:
                empty = np.zeros((c["layers"], len(rows), c["heads"], 0, c["head_dim"]), dtype=np.float32)
                state = OrtKV(empty, empty)
            out = self.decoder.run({
                "input_ids": tokens.long().numpy(), "cross_k": cross_k, "cross_v": cross_v,
                "past_k": state.k, "past_v": state.v,
            }, host=("logits",))
            return torch.from_numpy(out["logits"]), OrtKV(out["k"], out["v"])

        return self.decoding.decode(self.decoding.greedy(step, len(rows), max_new_tokens))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.embeddings[ids.cpu()]

    def llm_logits(self, input_ids: torch.Tensor, prefix_len: int, cache: PrefixCache) -> torch.Tensor:
        """The LLM's next-token logits [V] after `input_ids` [1, L]."""
        return last_logits(self.llm, cache, input_ids, prefix_len)

    def stream_tokens(self, *, attention_mask, input_ids, inputs_embeds, eos_ids: set[int], opts: SamplingOptions,
                      times: StepTimes, cancelled=None, prefix_ids=None):
        return stream_with_prefix(self.llm, self._prefix, attention_mask=attention_mask, input_ids=input_ids,
                                  inputs_embeds=inputs_embeds, eos_ids=eos_ids, opts=opts, times=times,
                                  cancelled=cancelled, prefix_ids=prefix_ids)

    def reset(self) -> None:
        self._prefix.reset()
