"""Ship a trained adapter: fp16 weights in the official layout plus a MODEL_CARD.md built from the run.

    run dir (train)  ──► config.json + model.safetensors (fp16), loss.png
    train.json, metrics.jsonl, datagen sidecar + JSONL, corpus.json, eval.json ──► MODEL_CARD.md

Design choices:
- Every number in the card is read from the files the pipeline wrote (corpus manifest, datagen
  settings and records, the trainer's train.json and metrics.jsonl, eval.json), so the card cannot
  drift from the run it describes; free text (observations, limitations) comes from a notes file.
- Weights are stored in fp16 (half the size; the runtime casts to the backbones' dtype on load) and
  checked against the trained fp32 weights after writing.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch

from desta_edge.runtime.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_weights, save_weights
from desta_edge.runtime.config import DestaConfig

from .corpus import MANIFEST
from .datagen import LABEL_SENTENCES, rejected_path, settings_path
from .dataset import jsonl_paths
from .evaluate import markdown_table
from .trainer import METRICS_NAME, PLOT_NAME, RUN_NAME

CARD_NAME = "MODEL_CARD.md"
EVAL_NAME = "eval.json"
LOSS_WINDOW = 20  # steps averaged for the first / last loss in the card


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def corpus_command(options: dict[str, Any]) -> str:
    """The `desta-edge corpus` command that made a corpus, from its manifest's options."""
    cmd = (f"desta-edge corpus --size {options['size']} --seed {options['seed']}"
           # a corpus made before rooms and channels existed has none
           f" --room-fraction {options.get('room_fraction', 0):g} --reverb-fraction {options.get('reverb_fraction', 0):g}"
           f" --channel-fraction {options.get('channel_fraction', 0):g}")
    for name in ("short_fraction", "short_low_female_fraction", "low_female_fraction"):  # off by default: named only when used
        if options.get(name):
            cmd += f" --{name.replace('_', '-')} {options[name]:g}"
    return cmd


def _eval_corpus(result: dict[str, Any], corpus_dir: Path) -> str:
    """Which corpus the evaluation read, when it is not the one the adapter was trained on."""
    eval_dir = result.get("options", {}).get("corpus_dir")
    if eval_dir is None or Path(eval_dir).resolve() == corpus_dir.resolve():
        return "of the corpus above"
    try:
        return f"of the corpus `{corpus_command(json.loads((Path(eval_dir) / MANIFEST).read_text())['options'])}`"
    except (OSError, ValueError, KeyError):
        return f"of another corpus ({Path(eval_dir).name})"


def datagen_command(settings: dict[str, Any]) -> str:
    """The `desta-edge datagen` flags that made a JSONL, from its settings sidecar."""
    parts = ["desta-edge datagen", f"--seed {settings.get('seed', '?')}",
             f"--max-new-tokens {settings.get('max_new_tokens', '?')}"]
    if settings.get("limit") is not None:
        parts.append(f"--limit {settings['limit']}")
    if settings.get("splits"):
        parts.append(f"--splits {','.join(settings['splits'])}")
    if settings.get("prompts_per_clip", 1) != 1:
        parts.append(f"--prompts-per-clip {settings['prompts_per_clip']}")
    if settings.get("categories"):
        parts.append(f"--categories {','.join(settings['categories'])}")
    if settings.get("retries"):
        parts.append(f"--retries {settings['retries']}")
    if settings.get("candidates", 1) != 1:
        parts.append(f"--candidates {settings['candidates']}")
    if settings.get("answers", "backbone") != "backbone":
        parts.append(f"--answers {settings['answers']}")
    if settings.get("filter_labels") is False:
        parts.append("--no-filter")
    if settings.get("constrain_labels") is False:
        parts.append("--no-constrain")
    return " ".join(parts)


def _targets_line(settings: dict[str, Any], kept: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> str:
    """What wrote the training targets, in the card's words: self-generated, or label answers + self-generated."""
    command = f"`{datagen_command(settings)}`, backbone `{settings.get('model', '?')}`"
    aside = f"{len(rejected)} answers set aside because they did not name the clip's label or contradicted one"
    if settings.get("answers", "backbone") != "label":
        return f"- Self-generated targets ({command}): {len(kept)} records kept, {aside}."
    labelled = sum(r.get("category") in LABEL_SENTENCES for r in kept)
    return (f"- Targets ({command}): {labelled} attribute questions answered with the clip's label in a fixed "
            f"sentence (\"The speaker is female.\"), **not self-generated: a deviation from the DeSTA method**; "
            f"{len(kept) - labelled} records answered by the backbone itself; {aside}.")


def ship_adapter(run_dir: Path, eval_dir: Path, data: Path | Sequence[Path], corpus_dir: Path, out_dir: Path,
                 notes: str = "") -> Path:
    """Write out_dir/{config.json, model.safetensors (fp16), loss.png, eval.json, MODEL_CARD.md}.

    `data`: the datagen JSONL the run trained on, or several in the order `train` read them."""
    run_dir, eval_dir, out_dir = Path(run_dir), Path(eval_dir), Path(out_dir)
    data_files = jsonl_paths(data)
    for need in (run_dir / CONFIG_NAME, run_dir / WEIGHTS_NAME, run_dir / RUN_NAME, eval_dir / EVAL_NAME,
                 Path(corpus_dir) / MANIFEST, *data_files):
        if not need.is_file():
            raise FileNotFoundError(f"{need} not found: ship needs a finished train run, its eval, the corpus and the data")
    config = DestaConfig.from_json(run_dir / CONFIG_NAME)
    weights = read_weights(run_dir / WEIGHTS_NAME)
    save_weights(out_dir, config, weights, dtype=torch.float16)
    shipped = read_weights(out_dir / WEIGHTS_NAME)
    bad = [k for k in weights if not torch.allclose(shipped[k].float(), weights[k].float(), rtol=1e-3, atol=1e-3)]
    if set(shipped) != set(weights) or bad:
        raise RuntimeError(f"fp16 copy differs from the trained weights: {bad[:3]}")
    if (run_dir / PLOT_NAME).is_file():
        shutil.copyfile(run_dir / PLOT_NAME, out_dir / PLOT_NAME)
    shutil.copyfile(eval_dir / EVAL_NAME, out_dir / EVAL_NAME)
    card = model_card(config, run_dir, eval_dir, data_files, Path(corpus_dir), out_dir, notes)
    (out_dir / CARD_NAME).write_text(card)
    return out_dir


def model_card(config: DestaConfig, run_dir: Path, eval_dir: Path, data_files: Sequence[Path], corpus_dir: Path,
               out_dir: Path, notes: str) -> str:
    corpus = json.loads((corpus_dir / MANIFEST).read_text())
    targets, kept, rejected = [], [], []
    for data_file in data_files:
        settings = json.loads(settings_path(data_file).read_text()) if settings_path(data_file).exists() else {}
        file_kept, file_rejected = _read_jsonl(data_file), _read_jsonl(rejected_path(data_file))
        targets.append(_targets_line(settings, file_kept, file_rejected))
        kept += file_kept
        rejected += file_rejected
    if len(data_files) > 1:
        targets.append(f"- Training read these {len(data_files)} files in this order: {len(kept)} records.")
    run = json.loads((run_dir / RUN_NAME).read_text())
    losses = [r["loss"] for r in _read_jsonl(run_dir / METRICS_NAME)]
    result = json.loads((eval_dir / EVAL_NAME).read_text())
    para = result["paralinguistic"]
    size_mb = (out_dir / WEIGHTS_NAME).stat().st_size / 1e6
    opts, counts = run["options"], corpus["counts"]
    cats = Counter(r.get("category", "?") for r in kept)
    cats_rej = Counter(r.get("category", "?") for r in rejected)
    first, last = _mean(losses[:LOSS_WINDOW]), _mean(losses[-LOSS_WINDOW:])
    gain = None
    if para.get("average_model") is not None and para.get("average_transcript_only") is not None:
        gain = 100 * (para["average_model"] - para["average_transcript_only"])
    corpus_opts = corpus["options"]
    extra_opts = f" --lora {opts['lora']}" if opts.get("lora") else ""
    if opts.get("precision", "tf32") != "tf32":
        extra_opts += f" --precision {opts['precision']}"
    norm = (" The Q-Former reads each tapped layer through a LayerNorm without weights (`connector_input_norm`)."
            if config.connector_input_norm else "")
    if config.use_lora:
        reach = ("on every token" if config.lora_scope == "all" else
                 "from a conversation's first audio position on, so text-only conversations get the backbone's answers")
        trained = (f"The connector and a LoRA (r=16, q/k/v of every LLM layer, active {reach}) are trained; "
                   f"the backbones' own weights are frozen and unchanged.")
    else:
        trained = "Only the connector is trained; both backbones are frozen and unchanged."
    lines = [
        f"# {out_dir.name}: the tiny preset's audio adapter",
        "",
        f"A DeSTA2.5-Audio connector (Q-Former, {config.qformer_num_hidden_layers} layers, {config.prompt_size} queries per "
        f"tapped Whisper layer) between `{config.encoder_model_id}` and `{config.llm_model_id}`.{norm} {trained} "
        f"{run['trained_parameters']:,} parameters, stored in "
        f"fp16 ({size_mb:.1f} MB), official checkpoint layout (`config.json` + `model.safetensors`).",
        "",
        "## Data recipe",
        "",
        f"- Corpus (`{corpus_command(corpus_opts)}`): "
        f"{sum(counts['split'].values())} clips, splits {counts['split']}; {counts['kind'].get('speech', 0)} speech, "
        f"{counts['kind'].get('sound', 0)} non-speech. Synthesizers: {counts['synthesizer']}.",
        f"- Voices: {len(corpus['voices']['train'])} in train, {len(corpus['voices']['validation'])} in validation, "
        f"{len(corpus['voices']['test'])} in test, no voice in two splits; sentences are split by text.",
        f"- Labels measured from the audio: gender {counts['gender']}, pitch {counts['pitch']}, speed {counts['speed']}, "
        f"volume {counts['volume']}, noise {counts['noise']}.",
        *targets,
        "- Kept records per category: " + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())) + ".",
        "- Set aside per category: " + (", ".join(f"{k} {v}" for k, v in sorted(cats_rej.items())) or "none") + ".",
        "",
        "## Training",
        "",
        f"- `desta-edge train --model {opts.get('model', 'tiny')} --steps {run['steps']} --batch-size {opts['batch_size']} --grad-accum {opts['grad_accum']} "
        f"--lr {opts['lr']} --seed {opts['seed']}{extra_opts}`: {run['records']} records, "
        f"warm-up {run['warmup_steps']} steps then "
        f"cosine, AdamW, grad clipping {opts['max_grad_norm']}, on `{run['device']}` ({run['world_size']} process(es)).",
        f"- Loss on the response tokens: {first:.3f} (mean of the first {LOSS_WINDOW} steps) → {last:.3f} (last {LOSS_WINDOW})."
        if first is not None and last is not None else "- No loss recorded.",
        "" if run.get("seconds_per_step_this_call") is None else
        f"- {run['seconds_per_step_this_call']:.2f} s per step.",
        "",
        f"![loss curve]({PLOT_NAME})",
        "",
        "## Evaluation",
        "",
        f"`desta-edge eval --model {out_dir.name} --split {result['split']}` on {result['clips']} held-out clips "
        f"{_eval_corpus(result, corpus_dir)} (voices and sentences never seen in training); the transcript-only column is the same backbones with "
        f"`audio_features=False`, and the description-in-text column asks the LLM with the clip's seed description "
        f"as text instead of audio.",
        "",
        markdown_table(result).rstrip(),
        "",
    ]
    if gain is not None:
        lines += [f"Average paralinguistic accuracy: {gain:+.1f} points over the transcript-only ablation.", ""]
    if notes.strip():
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines) + "\n"
