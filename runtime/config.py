"""The DeSTA2.5-Audio configuration: the official `config.json` fields, and nothing that does I/O.

The official checkpoint (`DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B`) stores `llm_model_id`,
`encoder_model_id`, `connector_mode`, `qformer_num_hidden_layers`, `prompt_size`, `use_lora`,
`audio_locator` and `placeholder_token` (plus transformers bookkeeping we ignore). Unlike the
reference, building a config never downloads the backbones' configs: the sizes the connector
needs (encoder width/heads/layers, LLM hidden size) are passed in when the model is built.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CONNECTOR_MODES = ("qformer_1",)
LORA_SCOPES = ("all", "audio")

# Tapped encoder layers (0-based raw layer outputs) used by the reference for its encoders.
OFFICIAL_TAPS: dict[str, tuple[int, ...]] = {
    "openai/whisper-tiny": (0, 1, 2, 3),
    "openai/whisper-tiny.en": (0, 1, 2, 3),
    "openai/whisper-small": (2, 5, 8, 11),
    "openai/whisper-medium": (5, 11, 17, 23),
    "openai/whisper-large-v3": (7, 15, 23, 31),
}
N_TAPS = 4


def tapped_layers(encoder_model_id: str, num_layers: int, n_taps: int = N_TAPS) -> tuple[int, ...]:
    """The encoder layers the connector reads: the official list, else `n_taps` evenly spaced
    layers ending at the last one (e.g. 4 of 32 -> 7, 15, 23, 31)."""
    official = OFFICIAL_TAPS.get(encoder_model_id)
    if official is not None and max(official) < num_layers:
        return official
    if num_layers < n_taps:
        raise ValueError(f"encoder has {num_layers} layers; the connector taps {n_taps}")
    return tuple((i + 1) * num_layers // n_taps - 1 for i in range(n_taps))


@dataclass(frozen=True)
class DestaConfig:
    """The model's identity: which backbones, and the connector's shape."""

    llm_model_id: str = "DeSTA-ntu/Llama-3.1-8B-Instruct"  # hub id or local dir of the LLM
    encoder_model_id: str = "openai/whisper-large-v3"  # hub id or local dir of Whisper
    connector_mode: str = "qformer_1"  # only Q-Former connectors exist in DeSTA2.5
    qformer_num_hidden_layers: int = 2  # DeSTA2.5-Audio itself uses 6
    prompt_size: int = 64  # learned queries per tapped layer = audio embeddings per clip
    use_lora: bool = False  # LoRA r=16 on the LLM's q/k/v projections (runtime/lora.py)
    # Where LoRA applies (desta-edge's field; written only with use_lora): "all" tokens, as the
    # reference, or "audio": only from a conversation's first audio position on.
    lora_scope: str = "all"
    # desta-edge's field, written only when on: the Q-Former reads each tapped layer through a
    # LayerNorm without weights (so the official key layout is unchanged). Off = the reference's
    # math, for official checkpoints; on for the adapters desta-edge trains (see runtime/connector.py).
    connector_input_norm: bool = False
    audio_locator: str = "<|AUDIO|>"  # marks where each clip goes in a message
    placeholder_token: str = "<|reserved_special_token_87|>"  # one token of the LLM vocab
    # Optional: the 0-based encoder layers to tap; None = the official/even-spacing rule.
    # Official checkpoints do not store it; the rule gives their layers.
    target_layer_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.connector_mode not in CONNECTOR_MODES:
            raise ValueError(
                f"connector_mode {self.connector_mode!r} is not supported; expected one of "
                f"{CONNECTOR_MODES}"
            )
        if self.lora_scope not in LORA_SCOPES:
            raise ValueError(f"lora_scope must be one of {LORA_SCOPES}, got {self.lora_scope!r}")
        if self.prompt_size < 1 or self.qformer_num_hidden_layers < 1:
            raise ValueError("prompt_size and qformer_num_hidden_layers must be >= 1")
        if self.target_layer_ids is not None:
            object.__setattr__(self, "target_layer_ids", tuple(int(i) for i in self.target_layer_ids))

    def taps(self, num_encoder_layers: int) -> tuple[int, ...]:
        if self.target_layer_ids is not None:
            if max(self.target_layer_ids) >= num_encoder_layers:
                raise ValueError(
                    f"target_layer_ids {self.target_layer_ids} exceed the encoder's "
                    f"{num_encoder_layers} layers"
                )
            return self.target_layer_ids
        return tapped_layers(self.encoder_model_id, num_encoder_layers)

    @classmethod
    def from_dict(cls, data: dict) -> "DestaConfig":
        """Take the known fields of an official or desta-edge config.json; ignore the rest."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "DestaConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """The official fields (+ `model_type` as the reference writes it)."""
        data = asdict(self)
        if data["target_layer_ids"] is None:
            del data["target_layer_ids"]
        else:
            data["target_layer_ids"] = list(data["target_layer_ids"])
        if not data["use_lora"]:
            del data["lora_scope"]
        if not data["connector_input_norm"]:
            del data["connector_input_norm"]
        return {"model_type": "desta25", **data}
