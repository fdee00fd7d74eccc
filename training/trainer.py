"""Adapter training: frozen Whisper encoder and LLM, a trainable Q-Former (+ optional LoRA), loss on the response.

    features ──► Whisper encoder (frozen, no grad) ──► 4 taps
             ──► connector (train mode, dropout on) ──► 64 audio embeddings
             ──► splice into the LLM input embeddings (with the transcript's) ──► frozen LLM
             ──► cross-entropy on the response + end-of-turn tokens only

Design choices:
- The encoder is the runtime's own one-pass `WhisperFrontEnd.encode_graph` (so training sees
  exactly the inference taps), run under `torch.no_grad` (not inference mode, whose tensors
  autograd could not save for the connector's backward pass).
- Logits are computed only at positions whose next token carries a label (LLM body, then the
  output projection on those rows): the vocabulary projection of every prompt position would be
  most of the activation memory for nothing. (This skips model-specific logit post-processing
  such as Gemma's soft-capping; Llama, Qwen and SmolLM have none.)
- Optimizer AdamW (reference: lr 1e-4, betas (0.9, 0.98), weight decay 0.01), linear warm-up then
  cosine decay, grad clipping at 1.0, gradient accumulation. On CUDA, `precision="tf32"` (default)
  keeps everything in fp32 with TF32 matmuls; `"bf16"` puts the frozen backbones in bf16 under bf16
  autocast (the connector's master weights stay fp32). On an H100 a bf16 run's loss became NaN
  within 60 steps (batch 32) where the same run in TF32 trained cleanly at 0.2 s/step; the cause
  is not established, so bf16 is opt-in. On the CPU, `"bf16"` keeps every weight in fp32 and runs
  the matmuls under bf16 autocast (oneDNN uses AMX / AVX512-BF16 where the CPU has them): a
  connector step at batch 8 with one-word targets took 3.0 s instead of 4.4 s on a 2-core Intel
  CPU with AMX. A CPU without them emulates bf16 (a step of the shipped recipe took 282 s against
  14 s in fp32 on a 2-core AVX2 AMD EPYC), which is logged as a warning.
- Exact resume: the data order is a pure function of (seed, epoch, world size) through
  `DistributedSampler` (also used with one process), a resumed run skips the micro-batches already
  consumed, and `trainer_state.pt` holds the optimizer, the scheduler, the step and every rank's
  RNG state (dropout). A DataLoader gets its own generator so it never draws from the global RNG.
- Checkpoints: `checkpoints/step-NNNNNNN/` holds the official layout (`config.json` +
  `model.safetensors`, connector only, via `runtime.checkpoint.save_checkpoint`) plus
  `trainer_state.pt`; the last `keep_checkpoints` are kept. The final adapter is also written to
  the output directory itself, so `DestaModel.from_pretrained(out_dir)` loads it.
- LoRA (optional, `lora="all"|"audio"`, runtime/lora.py): r=16 on the LLM's q/k/v, trained with
  the connector. The LLM's own weights stay frozen; the LoRA hooks add their update only inside
  `LoRA.active` (every token for "all", from the first audio position on for "audio"), in
  training exactly as at inference.
- DDP: with `WORLD_SIZE` > 1 in the environment (torchrun, accelerate launch) a process group is
  initialized (gloo on CPU, nccl on CUDA), the trained parts (connector + LoRA) are wrapped in
  DDP, each rank reads its shard, and only rank 0 writes files.
- The metrics log is JSONL (step, epoch, loss, lr, grad_norm, seconds); on resume, lines past the
  resumed step (written after the last checkpoint) are dropped. The loss curve PNG needs matplotlib,
  checked before training starts so a long run does not fail at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from desta_edge.runtime.checkpoint import WEIGHTS_NAME, load_adapter, read_weights, save_checkpoint
from desta_edge.runtime.prompt import splice
from desta_edge.runtime.torch_backend import cpu_has_native_bf16

from .dataset import IGNORE_INDEX, AQADataset, Collator, TrainBatch

logger = logging.getLogger(__name__)

# the reference recipe (DESIGN.md §1)
DEFAULT_LR = 1e-4
DEFAULT_BETAS = (0.9, 0.98)
DEFAULT_WEIGHT_DECAY = 0.01
DEFAULT_MAX_GRAD_NORM = 1.0
REFERENCE_WARMUP_STEPS = 5000  # the reference's warm-up; capped at WARMUP_FRACTION of a short run
WARMUP_FRACTION = 0.05  # default warm-up share of the total steps when --warmup is not given

STATE_NAME = "trainer_state.pt"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"
RUN_NAME = "train.json"  # the run's options and totals, for the model card
CHECKPOINTS_DIR = "checkpoints"
STEP_DIR_FORMAT = "step-{:07d}"
PRECISIONS = ("tf32", "bf16")  # see TrainOptions.precision
# settings a resumed run must share with the run it continues (they fix the data order and schedule)
RESUME_SETTINGS = ("batch_size", "grad_accum", "seed", "world_size", "total_steps", "warmup_steps")


@dataclass(frozen=True)
class TrainOptions:
    data: Path | tuple[Path, ...]  # DeSTA-AQA5M-schema JSONL (datagen's, or the official files); several are read in order
    out_dir: Path  # checkpoints, metrics.jsonl, loss.png and the final adapter
    data_root: Path | None = None  # resolves relative audio paths (default: each JSONL's directory)
    model: str = "tiny"  # preset (fresh connector) or checkpoint directory (continues its connector)
    steps: int | None = None  # optimizer steps; exactly one of steps / epochs
    epochs: int | None = None  # passes over the data (per rank shard)
    batch_size: int = 4  # records per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = DEFAULT_LR  # peak learning rate
    betas: tuple[float, float] = DEFAULT_BETAS  # AdamW betas
    weight_decay: float = DEFAULT_WEIGHT_DECAY  # AdamW weight decay
    warmup_steps: int | None = None  # linear warm-up; None = min(5000, 5% of the steps)
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM  # gradient clipping (total L2 norm)
    precision: str = "tf32"  # "tf32": fp32 (TF32 matmuls on CUDA); "bf16": bf16 autocast (+ bf16 backbones on CUDA)
    save_every: int = 500  # checkpoint every N optimizer steps (and at the end)
    keep_checkpoints: int = 2  # step checkpoints kept on disk (older ones are removed)
    seed: int = 0  # seeds data order and dropout (rank r uses seed + r for dropout)
    resume: bool = False  # continue from the newest checkpoint in out_dir
    device: str | None = None  # torch device (default: cuda if available, else cpu)
    num_workers: int = 0  # DataLoader worker processes (audio loading + log-mel)
    limit: int | None = None  # use only the first N records
    lora: str | None = None  # add a fresh LoRA with this scope ("all" or "audio") and train it too
    encoder_padding_s: float | None = None  # also train on the shorter encoder window (clip + this much silence) ...
    short_window_share: float = 0.5  # ... in this share of the batches (the rest: the full 30 s window)
    loss_plot: bool = True  # write loss.png (needs matplotlib)
    progress: bool = False  # show a progress bar (rank 0)


@dataclass
class TrainResult:
    out_dir: Path  # holds the final adapter (official layout)
    steps: int  # optimizer steps done in total
    final_loss: float | None  # loss of the last step (None if no step ran in this call)
    metrics: Path  # the JSONL log
    plot: Path | None  # the loss curve, if written
    seconds: float  # wall time of this call
    seconds_per_step: float | None  # mean over this call's steps


# ---------------------------------------------------------------------- the training forward


def encode_taps(model, features: torch.Tensor) -> list[torch.Tensor]:
    """Frozen encoder -> the tapped layer outputs as ordinary (non-inference) tensors."""
    front = model.backend.perception.whisper
    enc_dtype = next(front.parameters()).dtype
    with torch.no_grad():
        out = front.encode_graph(features.to(model.device, enc_dtype))
    return out.taps  # n_taps x [N, T, d_enc]


class TrainedParts(nn.Module):
    """What training updates: the connector and the model's LoRA (if any), one module for DDP.

    Calling it runs the connector; the LoRA acts inside the LLM through its hooks.
    """

    def __init__(self, connector: nn.Module, lora: nn.Module | None) -> None:
        super().__init__()
        self.connector, self.lora = connector, lora

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        return self.connector(taps)


def training_loss(model, connector: nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the labelled tokens of `batch`, and how many there are.

    `connector` is the model's connector, its `TrainedParts` or their DDP wrapper (called, so
    DDP syncs gradients).
    """
    llm = model.backend.llm_model
    taps = encode_taps(model, batch.features)
    n_audio = batch.splices[0].n_audio if batch.splices else 0
    audio = connector(taps) if n_audio else None  # [N, prompt_size, d_llm]
    embed = llm.get_input_embeddings()
    with torch.no_grad():
        embeds = embed(batch.input_ids)  # [B, L, d_llm]
        text = [embed(t) for t in batch.transcript_ids]
    embeds = splice(embeds, batch.splices, audio, text)
    lora = model.lora
    start = None if lora is None else lora.starts(batch.attention_mask, batch.splices)
    with lora.active(start) if lora is not None else nullcontext():
        hidden = llm.base_model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False).last_hidden_state
    targets = batch.labels[:, 1:]  # position t predicts token t + 1
    keep = targets != IGNORE_INDEX
    logits = llm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # [n_labelled, V]
    return F.cross_entropy(logits, targets[keep]), int(keep.sum())


# ---------------------------------------------------------------------- schedule and helpers


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier for optimizer step `s` (0-based): linear warm-up, then cosine to `min_ratio`."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@dataclass(frozen=True)
class _Dist:
    rank: int  # this process
    world: int  # processes in the group
    device: torch.device  # where this rank computes
    owns_group: bool  # True if train() initialized the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str | None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:  # plain "cuda": this rank's GPU (set_device needs an index)
        dev = torch.device("cuda", local % torch.cuda.device_count())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return _Dist(rank, world, dev, owns)


def load_training_model(name: str, device: torch.device, precision: str = "tf32", lora: str | None = None):
    """A model with a trainable connector: a preset gets a fresh one, a checkpoint dir keeps its own.

    lora: a scope to train a LoRA in: a checkpoint's own LoRA must have it, else a fresh one is added.
    """
    from desta_edge.runtime.model import DestaModel, _load_llm, _load_whisper
    from desta_edge.runtime.presets import PRESETS, resolve_backbone

    dtype = torch.bfloat16 if device.type == "cuda" and precision == "bf16" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if name in PRESETS:
        config = PRESETS[name].config
        whisper, wtok = _load_whisper(resolve_backbone(config.encoder_model_id), dtype)
        llm, ltok = _load_llm(resolve_backbone(config.llm_model_id), dtype)
        model = DestaModel.from_components(config, whisper, wtok, llm, ltok, audio_features=True, name=name)
    else:
        model = DestaModel.from_pretrained(name, device=device, dtype=dtype, audio_features=True)
    if lora is not None:
        if model.lora is None:
            model.attach_lora(lora)
        elif model.lora.scope != lora:
            raise ValueError(f"{name} has a LoRA of scope {model.lora.scope!r}; cannot train it as {lora!r}")
    return model.to(device, dtype)


def _check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise RuntimeError("the loss-curve PNG needs matplotlib: pip install matplotlib "
                           "(or turn the plot off: --no-plot / loss_plot=False)") from e


def plot_losses(metrics: Path, png: Path) -> Path:
    """Draw loss (and lr) against step from a metrics JSONL into a PNG."""
    _check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (response tokens)")
    lr_ax = ax.twinx()
    lr_ax.plot([r["step"] for r in rows], [r["lr"] for r in rows], lw=0.8, color="tab:gray", label="lr")
    lr_ax.set_ylabel("learning rate")
    ax.set_title("connector training")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _step_dirs(out: Path) -> list[tuple[int, Path]]:
    root = out / CHECKPOINTS_DIR
    found = []
    for d in root.glob("step-*") if root.is_dir() else []:
        if (d / STATE_NAME).is_file() and (d / WEIGHTS_NAME).is_file():
            found.append((int(d.name.split("-")[1]), d))
    return sorted(found)


def _gather_rng(world: int) -> list[dict[str, Any]]:
    state = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    if world == 1:
        return [state]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, state)
    return out


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- the loop


class _MicroBatches:
    """Micro-batches of this rank in a fixed order: epoch e is DistributedSampler(seed).set_epoch(e)."""

    def __init__(self, dataset: AQADataset, collate: Collator, options: TrainOptions, d: _Dist) -> None:
        self.dataset, self.collate, self.options = dataset, collate, options
        self.sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=options.seed, drop_last=False)
        self.per_epoch = math.ceil(self.sampler.num_samples / options.batch_size)

    def from_micro(self, start: int) -> Iterator[tuple[int, TrainBatch]]:
        """(epoch, batch) from global micro-batch index `start` on, forever."""
        epoch, skip = divmod(start, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)[skip * self.options.batch_size :]
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.options.batch_size, sampler=order, collate_fn=self.collate,
                num_workers=self.options.num_workers, generator=torch.Generator().manual_seed(self.options.seed),
            )
            for batch in loader:
                yield epoch, batch
            epoch, skip = epoch + 1, 0


def train(options: TrainOptions, model=None, *, on_step: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train the connector; `model` (a `DestaModel` with a connector) defaults to `options.model`.

    on_step: called on every rank after each optimizer step (after logging and saving) with
    that step's metrics; tests use it to interrupt a run.
    """
    if (options.steps is None) == (options.epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    for name in ("batch_size", "grad_accum", "save_every", "keep_checkpoints"):
        if getattr(options, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(options, name)}")
    if options.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {options.precision!r}")
    if options.loss_plot:
        _check_plotting()
    t_start = time.perf_counter()
    d = _setup_distributed(options.device)
    if options.precision == "bf16" and d.device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning("this CPU has no native bfloat16 (AVX512-BF16 or AMX): bf16 autocast is emulated and "
                       "much slower than --precision tf32 (20x per step, measured on an AVX2 CPU)")
    try:
        torch.manual_seed(options.seed + d.rank)
        if model is None:
            model = load_training_model(options.model, d.device, options.precision, options.lora)
        else:
            if options.lora is not None and model.lora is None:
                model.attach_lora(options.lora)
            model.to(d.device)
        if model.connector is None:
            raise ValueError(f"{model.name} has no connector to train")
        return _train(options, model, d, on_step, t_start)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _train(options: TrainOptions, model, d: _Dist, on_step, t_start: float) -> TrainResult:
    out = Path(options.out_dir)
    parts = TrainedParts(model.connector, model.lora).float().train()
    params = list(parts.parameters())
    for p in params:
        p.requires_grad_(True)
    dataset = AQADataset(options.data, options.data_root, limit=options.limit)
    batches = _MicroBatches(dataset, Collator(model, encoder_padding_s=options.encoder_padding_s,
                                                 short_window_share=options.short_window_share), options, d)
    total = options.steps if options.steps is not None else math.ceil(options.epochs * batches.per_epoch / options.grad_accum)
    warmup = options.warmup_steps if options.warmup_steps is not None else min(REFERENCE_WARMUP_STEPS, int(WARMUP_FRACTION * total))
    settings = {"batch_size": options.batch_size, "grad_accum": options.grad_accum, "seed": options.seed,
                "world_size": d.world, "total_steps": total, "warmup_steps": warmup}
    optimizer = torch.optim.AdamW(params, lr=options.lr, betas=options.betas, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, options.min_lr_ratio))
    step = 0
    if options.resume:
        step = _resume(out, model, optimizer, scheduler, settings, d)
    wrapped: nn.Module = parts
    if d.world > 1:
        ids = [d.device.index] if d.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(parts, device_ids=ids)
    metrics_path = out / METRICS_NAME
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, step)
        n_lora = sum(p.numel() for p in model.lora.parameters()) if model.lora is not None else 0
        logger.info("training %d adapter parameters (LoRA: %d) for %d steps (from %d; %d records, %d per epoch "
                    "per rank, warm-up %d)", sum(p.numel() for p in params), n_lora, total, step, len(dataset),
                    batches.per_epoch, warmup)
    def autocast():
        bf16 = options.precision == "bf16" and d.device.type in ("cuda", "cpu")
        return torch.autocast(d.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    stream = batches.from_micro(step * options.grad_accum)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not (options.progress and d.main))
    last_loss, step_times = None, []
    while step < total:
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=d.device)
        epoch = 0
        for k in range(options.grad_accum):
            epoch, batch = next(stream)
            sync = k == options.grad_accum - 1 or d.world == 1
            with (nullcontext() if sync else wrapped.no_sync()), autocast():
                loss, _ = training_loss(model, wrapped, batch.to(d.device))
            (loss / options.grad_accum).backward()
            loss_sum += loss.detach() / options.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if d.world > 1:  # the logged loss is the mean over ranks (gloo has no AVG)
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
            loss_sum /= d.world
        seconds = time.perf_counter() - t0
        step_times.append(seconds)
        last_loss = float(loss_sum)
        row = {"step": step, "epoch": epoch, "loss": round(last_loss, 6), "lr": lr,
               "grad_norm": round(float(grad_norm), 6), "seconds": round(seconds, 4)}
        if d.main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        if step % options.save_every == 0 or step == total:
            _save(out, model, optimizer, scheduler, step, settings, options.keep_checkpoints, d)
        if on_step is not None:
            on_step(row)
    bar.close()
    plot = None
    mean = sum(step_times) / len(step_times) if step_times else None
    if d.main:
        save_checkpoint(out, model.config, model.connector, lora=model.lora)
        if options.loss_plot and metrics_path.exists():
            plot = plot_losses(metrics_path, out / PLOT_NAME)
        run = {"options": options_dict(options), "steps": step, "world_size": d.world, "records": len(dataset),
               "trained_parameters": sum(p.numel() for p in params), "warmup_steps": warmup,
               "seconds_per_step_this_call": mean, "device": str(d.device)}
        (out / RUN_NAME).write_text(json.dumps(run, indent=2) + "\n")
        logger.info("trained to step %d; adapter in %s", step, out)
    if d.world > 1:
        dist.barrier()
    parts.eval().to(dtype=model.backend.dtype)  # ready for inference with the backbones' dtype
    return TrainResult(out, step, last_loss, metrics_path, plot, time.perf_counter() - t_start, mean)


def _save(out: Path, model, optimizer, scheduler, step: int, settings: dict[str, Any], keep: int, d: _Dist) -> None:
    rng = _gather_rng(d.world)  # a collective: every rank takes part
    if d.main:
        target = out / CHECKPOINTS_DIR / STEP_DIR_FORMAT.format(step)
        save_checkpoint(target, model.config, model.connector, lora=model.lora)
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng, "settings": settings}
        tmp = target / (STATE_NAME + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, target / STATE_NAME)
        for _, old in _step_dirs(out)[:-keep]:
            shutil.rmtree(old)
        logger.info("checkpoint: %s", target)
    if d.world > 1:
        dist.barrier()


def _resume(out: Path, model, optimizer, scheduler, settings: dict[str, Any], d: _Dist) -> int:
    found = _step_dirs(out)
    if not found:
        logger.warning("resume: no checkpoint in %s; starting from step 0", out / CHECKPOINTS_DIR)
        return 0
    step, path = found[-1]
    state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=False)
    for key in RESUME_SETTINGS:
        if state["settings"].get(key) != settings[key]:
            raise ValueError(f"{path}: cannot resume with {key}={settings[key]!r}; the run was made with "
                             f"{key}={state['settings'].get(key)!r} (it fixes the data order and schedule)")
    load_adapter(model.connector, read_weights(path / WEIGHTS_NAME), source=str(path), lora=model.lora)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng(state["rng"][d.rank])
    logger.info("resumed from %s (step %d)", path, step)
    return int(state["step"])


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only metrics of steps <= `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def options_dict(options: TrainOptions) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return str(v) if isinstance(v, Path) else [plain(x) for x in v] if isinstance(v, tuple) else v
    return {k: plain(v) for k, v in asdict(options).items()}
