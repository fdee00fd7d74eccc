"""The backend seam: what an inference engine must do, and the names users pick engines by.

`DestaModel` owns everything that is not number crunching (audio loading, the speech check,
prompt assembly, timing, streaming text); a backend owns the tensors. Backends are chosen by
`Backend` name: `torch`, `onnx` (an export directory, every stage in ONNX Runtime), or `auto`
(the fastest of these that can run the given source on the given device).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .generation import SamplingOptions, StepTimes


class Backend(str, enum.Enum):
    TORCH = "torch"  # PyTorch eager, CPU or CUDA
    ONNX = "onnx"  # ONNX Runtime for the exported graphs (`desta-edge export onnx`)
    TRTLLM = "trtllm"  # TensorRT-LLM engine (+ TensorRT encoder) in an ONNX export dir; not yet run on hardware
    AUTO = "auto"  # resolved at load time to the fastest backend for the source and device (model.choose_backend)

    @classmethod
    def parse(cls, name: "str | Backend") -> "Backend":
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(b.value for b in cls)
            raise ValueError(f"unknown backend {name!r}; available: {known}") from None


# dtypes the torch backend can run Whisper in, by their command-line names (`--whisper-dtype`)
WHISPER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_backend_arguments(parser) -> None:
    """`--backend`, `--ort-provider`, `--whisper-dtype` and `--encoder-padding-s`, shared by `ask` and
    `listen` (argparse parser)."""
    from .onnx_backend import OrtProvider

    parser.add_argument("--backend", default=Backend.TORCH.value, choices=[b.value for b in Backend],
                        help="torch (default), onnx (--model is then an export directory), trtllm (TensorRT-LLM "
                             "engines in an export; not yet run on hardware), or auto: the fastest that can run "
                             "--model here")
    parser.add_argument("--ort-provider", default=None, choices=[p.value for p in OrtProvider],
                        help="onnx backend: ONNX Runtime execution provider (default: cuda on a GPU, else cpu)")
    parser.add_argument("--whisper-dtype", default=None, choices=list(WHISPER_DTYPES),
                        help="torch backend: run the Whisper encoder and transcript decoder in this dtype "
                             "(bfloat16: about 3x faster encoder on CPUs with AMX, transcripts may differ slightly)")
    parser.add_argument("--encoder-padding-s", type=float, default=None, metavar="S",
                        help="the encoder reads the clip plus S seconds of silence instead of the whole 30 s "
                             "window: about 4x faster for short queries, at an accuracy cost (README, Latency)")


def whisper_dtype(args) -> torch.dtype | None:
    """The torch dtype of `--whisper-dtype`, or None when the flag was not given."""
    return WHISPER_DTYPES[args.whisper_dtype] if args.whisper_dtype else None


@dataclass
class EncodedAudio:
    """One encoder pass over a batch of clips."""

    final: object  # what the backend's transcript decoder needs, batch-first (torch: [B, T, d_enc] states)
    audio_embeds: torch.Tensor | None  # [B, prompt_size, d_llm], None when not requested


@runtime_checkable
class InferenceBackend(Protocol):
    n_mels: int  # mel bins the encoder expects
    device: torch.device

    def encode(self, features: torch.Tensor, *, with_connector: bool) -> EncodedAudio:
        """log-mel [B, n_mels, 3000] -> final encoder states (+ audio embeddings), one pass."""
        ...

    def transcribe(self, encoded: EncodedAudio, rows: list[int], max_new_tokens: int) -> list[str]:
        """Greedy transcripts of the encoded clips at `rows`."""
        ...

    def eos_ids(self, tokenizer) -> set[int]:
        """Token ids that end an answer."""
        ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """LLM input embeddings of token ids: [..., L] -> [..., L, d_llm]."""
        ...

    def stream_tokens(
        self,
        *,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        eos_ids: set[int],
        opts: SamplingOptions,
        times: StepTimes,
        cancelled: Callable[[], bool] | None = None,
        prefix_ids: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Prefill the prompt, then yield next-token ids [B] one step at a time.

        prefix_ids [1, P]: the prompt's first P tokens are a fixed prefix whose key/value cache
        the backend may keep across calls (then only the rest is prefilled).
        """
        ...

    def reset(self) -> None:
        """Drop cached state such as the prefix key/value cache."""
        ...
