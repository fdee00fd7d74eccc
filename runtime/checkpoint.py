"""Adapter checkpoints in the official DeSTA2.5-Audio layout, both ways.

A checkpoint directory holds `config.json` (the official fields, see `DestaConfig`) and
`model.safetensors` with only the trained weights: the connector, named `perception.connector.*`,
and with `use_lora` the LLM's LoRA, named as the reference's peft model saves it
(`llm_model.model.layers.{i}.self_attn.{q,k,v}_proj.lora_{A,B}.default.weight`). Loading is
strict: a missing, unexpected or mis-shaped tensor is an error that names it (the reference
loads with `strict=False`, so a wrong file silently leaves random weights).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .config import DestaConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CONNECTOR_PREFIX = "perception.connector."


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it is loaded into."""


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def connector_state(connector: nn.Module) -> dict[str, torch.Tensor]:
    """The connector's weights under their official names."""
    return {CONNECTOR_PREFIX + k: v for k, v in connector.state_dict().items()}


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise CheckpointError(f"cannot read {path}: {e}") from e


def adapter_state(connector: nn.Module, lora=None) -> dict[str, torch.Tensor]:
    """Every trained weight under its official name: the connector, plus the LoRA if any."""
    return {**connector_state(connector), **(lora.state() if lora is not None else {})}


def load_adapter(connector: nn.Module, weights: dict[str, torch.Tensor], source: str = "checkpoint",
                 lora=None) -> None:
    """Strictly load official-layout weights into `connector` (and `lora`); errors name each bad key."""
    expected = adapter_state(connector, lora)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    problems = []
    if missing:
        what = "connector" if lora is None else "adapter"
        problems.append(f"missing {what} keys: {', '.join(missing)}")
    if unexpected:
        lora_keys = any(".lora_" in k for k in unexpected)
        hint = " (LoRA weights: the config must say use_lora)" if lora is None and lora_keys else ""
        problems.append(f"unexpected keys{hint}: {', '.join(unexpected)}")
    for k in sorted(set(expected) & set(weights)):
        if tuple(expected[k].shape) != tuple(weights[k].shape):
            problems.append(f"{k}: expected shape {tuple(expected[k].shape)}, found {tuple(weights[k].shape)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    device = next(connector.parameters()).device
    dtype = next(connector.parameters()).dtype
    state = {k[len(CONNECTOR_PREFIX) :]: v.to(device=device, dtype=dtype)
             for k, v in weights.items() if k.startswith(CONNECTOR_PREFIX)}
    connector.load_state_dict(state, strict=True)
    if lora is not None:
        lora.load(weights)


def save_checkpoint(
    out_dir: str | os.PathLike,
    config: DestaConfig,
    connector: nn.Module,
    *,
    lora=None,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write `config.json` + `model.safetensors` (the connector, and the LoRA if given) atomically."""
    if (lora is not None) != config.use_lora:
        given = "given" if lora is not None else "missing"
        raise ValueError(f"config.use_lora={config.use_lora} but LoRA weights {given}")
    return save_weights(out_dir, config, adapter_state(connector, lora), dtype=dtype, extra_files=extra_files)


def save_weights(
    out_dir: str | os.PathLike,
    config: DestaConfig,
    weights: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write official-layout weights (names already prefixed) + `config.json` atomically."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in weights.items()}
    _atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    _atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(text))
    for name, content in (extra_files or {}).items():
        _atomic_write(out / name, lambda p, c=content: Path(p).write_text(c))
    return out


def _atomic_write(dest: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
