"""Stage timings at the real models' shapes, with random weights.

    python benchmarks/shapes.py [--shapes default,full] [--device cuda] [--dtype bfloat16]
                                [--runs 5] [--transcript-tokens 16] [--answer-tokens 32]
                                [--out benchmarks/results] [--json]

What a machine takes for each stage of one spoken query when the weights cannot come along:
the GPU machines this project is lent cannot reach the hub, and the bundled weights are larger
than what can be carried there. The work per token does not depend on the weights' values, so
a model of the same shapes with random weights costs the same per stage, given the same number
of tokens. The number of tokens is therefore fixed here (random weights answer nonsense, and
would stop at a random point), and the table shows the stage costs, not answers.

Shape sets: `default` is the embedded default (Whisper tiny.en + SmolLM2-135M-Instruct, 64
audio queries, 2 Q-Former layers); `full` the official model (Whisper large-v3 +
Llama-3.1-8B, 64 queries, 6 Q-Former layers); `test` a toy size for the test suite. Each set is
built as a `DestaModel` and run through the same code as the real models: one encoder pass
shared by the connector and the transcript decoder, the prefix cache, greedy decoding.

Per run, on a 4 s clip: the encoder (+ connector) and LLM prefill and first token via
`DestaModel.generate` with the transcript supplied (`timings_ms`), then the Whisper decoder
alone for --transcript-tokens steps. "After the audio" adds them up: what follows the end of
the clip before the first answer token, without the endpoint wait (benchmarks/latency.py
measures that with real models). The tokenizers are byte-level (one token per character), so
the prompt's length in positions is reported. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_results  # noqa: E402

from desta_edge.runtime.audio import SAMPLE_RATE, encoder_frames  # noqa: E402
from desta_edge.runtime.config import DestaConfig  # noqa: E402
from desta_edge.runtime.generation import clock  # noqa: E402
from desta_edge.runtime.model import DestaModel  # noqa: E402

LLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<ph>"]
WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = "<|AUDIO|>\nWhat did they say, and how?"
CLIP_S = 4.0


@dataclass(frozen=True)
class Shapes:
    description: str
    # Whisper
    d_enc: int
    enc_layers: int
    dec_layers: int
    enc_heads: int
    enc_ffn: int
    n_mels: int
    whisper_vocab: int
    # LLM (Llama family)
    d_llm: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_ffn: int
    llm_vocab: int
    tied_embeddings: bool
    # connector
    prompt_size: int
    qformer_layers: int


SHAPES = {
    "test": Shapes("toy sizes for the test suite", 32, 4, 2, 4, 64, 80, 300, 32, 2, 4, 2, 64, 300, True, 4, 1),
    "default": Shapes("Whisper tiny.en + SmolLM2-135M-Instruct (the embedded default)",
                      384, 4, 4, 6, 1536, 80, 51864, 576, 30, 9, 3, 1536, 49152, True, 64, 2),
    "full": Shapes("Whisper large-v3 + Llama-3.1-8B (the official DeSTA2.5-Audio)",
                   1280, 32, 32, 20, 5120, 128, 51866, 4096, 32, 32, 8, 14336, 128256, False, 64, 6),
}


def padded_byte_tokenizer(specials: list[str], vocab_size: int, chat_template: str | None = None):
    """A byte-level tokenizer (one token per byte, no merges) whose vocabulary is filled up to
    `vocab_size` with placeholder tokens, so every id a random model emits decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size {vocab_size} < {len(vocab)} (specials + bytes)")
    vocab.update({f"<t{i}>": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0], pad_token=specials[0])
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    fast.chat_template = chat_template
    return fast


def random_whisper(s: Shapes, tok, max_positions: int = 448):
    """A WhisperForConditionalGeneration of shapes `s` with random weights, for tokenizer `tok`
    (built in the current default device and dtype)."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    ids = {t: tok.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    cfg = WhisperConfig(
        vocab_size=s.whisper_vocab, d_model=s.d_enc, encoder_layers=s.enc_layers, decoder_layers=s.dec_layers,
        encoder_attention_heads=s.enc_heads, decoder_attention_heads=s.enc_heads, encoder_ffn_dim=s.enc_ffn,
        decoder_ffn_dim=s.enc_ffn, num_mel_bins=s.n_mels, max_source_positions=1500,
        max_target_positions=max_positions, decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=False,
        max_length=max_positions,
    )
    return model


def random_llm(s: Shapes, tok, max_positions: int = 4096):
    """A LlamaForCausalLM of shapes `s` with random weights, for tokenizer `tok` (ChatML, ends a
    turn with <|im_end|>; built in the current default device and dtype)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = LlamaConfig(
        vocab_size=s.llm_vocab, hidden_size=s.d_llm, intermediate_size=s.llm_ffn, num_hidden_layers=s.llm_layers,
        num_attention_heads=s.llm_heads, num_key_value_heads=s.llm_kv_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=s.tied_embeddings, eos_token_id=eos, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    return model


def random_model(s: Shapes, device: torch.device, dtype: torch.dtype, seed: int = 0) -> DestaModel:
    """A DestaModel of shapes `s` with random weights, built on `device` in `dtype`."""
    torch.manual_seed(seed)
    wtok = padded_byte_tokenizer(WHISPER_SPECIALS, s.whisper_vocab)
    ltok = padded_byte_tokenizer(LLM_SPECIALS, s.llm_vocab, CHATML)
    ltok.eos_token = "<|im_end|>"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in place: no fp32 copy of 8 B parameters on the way
    try:
        with torch.device(device):
            whisper = random_whisper(s, wtok)
            llm = random_llm(s, ltok)
    finally:
        torch.set_default_dtype(default)
    config = DestaConfig(llm_model_id="random-llm", encoder_model_id="random-whisper", prompt_size=s.prompt_size,
                         qformer_num_hidden_layers=s.qformer_layers, placeholder_token="<ph>",
                         connector_input_norm=True)
    model = DestaModel.from_components(config, whisper, wtok, llm, ltok, name=f"random weights, {s.description}")
    return model.to(device, dtype)


def clip(seconds: float = CLIP_S, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonics with a little noise, which webrtcvad calls speech (its content does not
    matter here: the weights are random)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 900), start=1))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)  # syllables at 4 Hz
    return (0.3 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def measure(model: DestaModel, runs: int, transcript_tokens: int, answer_tokens: int, warmup: int = 2) -> dict:
    """Median stage timings over `runs` (after `warmup` untimed runs) on one clip."""
    samples = clip()
    transcript = ("the quick brown fox jumps over the lazy dog " * 8)[:transcript_tokens]  # one token per byte
    conv = [{"role": "user", "content": PROMPT, "audios": [{"audio": (samples, SAMPLE_RATE), "text": transcript}]}]
    whisper = model.backend.perception.whisper
    frames = encoder_frames(len(samples), None)
    rows = []
    for i in range(warmup + runs):
        out = model.generate(conv, max_new_tokens=answer_tokens)
        t = out.timings_ms
        feats = model.features([samples], frames)
        final = model.backend.encode(feats, with_connector=False).final
        t0 = clock(model.device)
        ids = whisper.transcribe_ids(final, max_new_tokens=transcript_tokens, stop_loops=False)
        asr_ms = (clock(model.device) - t0) * 1000
        answered = len(out.generated_ids[0])
        decode_s = (t["total"] - t["first_token"]) / 1000
        if i >= warmup:
            rows.append({
                "encoder": t["encoder"], "asr": asr_ms, "asr_tokens": len(ids[0]), "prefill": t["prefill"],
                "first_token": t["first_token"], "after_audio": asr_ms + t["first_token"],
                "answer_tokens": answered,
                "decode_tok_s": (answered - 1) / decode_s if answered > 1 and decode_s > 0 else None,
            })
    median = {k: _median([r[k] for r in rows]) for k in rows[0]}
    median["prompt_positions"] = _prompt_positions(model, transcript)
    return median


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def _prompt_positions(model: DestaModel, transcript: str) -> int:
    text = model.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                               add_generation_prompt=True)
    # the audio locator becomes <start_audio> + prompt_size + transcript placeholders + <end_audio>
    return (len(model.tokenizer.encode(text, add_special_tokens=False)) - len(model.config.audio_locator)
            + len("<start_audio><end_audio>") + model.config.prompt_size + len(transcript))


def peak_memory_gb(device: torch.device) -> float:
    """On CUDA the peak since the last reset (one per shape set); on the CPU the process's max RSS so
    far, which includes the shape sets measured before."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # max RSS (KiB on Linux)


def run(names: list[str], device: torch.device, dtype: torch.dtype, runs: int, transcript_tokens: int,
        answer_tokens: int) -> dict:
    result = {"benchmark": "shapes", "machine": machine(), "device": str(device), "dtype": str(dtype).split(".")[-1],
              "torch": torch.__version__, "runs": runs, "transcript_tokens": transcript_tokens,
              "answer_tokens": answer_tokens, "clip_s": CLIP_S, "shapes": {}}
    for name in names:
        s = SHAPES[name]
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        model = random_model(s, device, dtype)
        build_s = time.perf_counter() - t
        params = sum(p.numel() for p in model.backend.parameters())
        print(f"{name}: built {params / 1e6:.0f} M parameters in {build_s:.1f} s; timing {runs} runs", file=sys.stderr)
        stages = measure(model, runs, transcript_tokens, answer_tokens)
        result["shapes"][name] = {"shapes": asdict(s), "parameters_m": round(params / 1e6, 1),
                                  "peak_memory_gb": peak_memory_gb(device), **stages}
        del model
    return result


def markdown(result: dict) -> str:
    head = (f"Random weights at real shapes on {result['device']} ({result['machine']}), {result['dtype']}, "
            f"torch {result['torch']}; medians of {result['runs']} runs; {result['clip_s']:.0f} s clip, "
            f"{result['transcript_tokens']} transcript tokens, {result['answer_tokens']} answer tokens\n\n")
    cols = ("shapes", "params (M)", "encoder + connector ms", "ASR ms (tokens)", "prefill ms (positions)",
            "first token ms", "after the audio ms", "decode tok/s", "peak GiB")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in result["shapes"].items():
        tps = "-" if r["decode_tok_s"] is None else f"{r['decode_tok_s']:.0f}"
        lines.append(f"| {name} | {r['parameters_m']:.0f} | {r['encoder']:.1f} | {r['asr']:.1f} "
                     f"({r['asr_tokens']:.0f}) | {r['prefill']:.1f} ({r['prompt_positions']}) | "
                     f"{r['first_token']:.1f} | {r['after_audio']:.1f} | {tps} | {r['peak_memory_gb']:.2f} |")
    notes = ("\nfirst token: request start to the first answer token with the transcript supplied (features, "
             "encoder, prefill, one step); after the audio: ASR + first token, the chain that follows the end of "
             "the clip, without the endpoint wait.")
    return head + "\n".join(lines) + notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="default,full", help=f"comma-separated, of: {', '.join(SHAPES)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on the CPU (as the runtime chooses)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--transcript-tokens", type=int, default=16)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        p.error(f"unknown shape set(s) {unknown}; choose from {', '.join(SHAPES)}")
    if args.runs < 1 or args.transcript_tokens < 1 or args.answer_tokens < 2:
        p.error("--runs and --transcript-tokens must be >= 1, --answer-tokens >= 2")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch.cuda.is_available() is False (no GPU or a CPU build of torch)")
    from desta_edge.runtime.model import default_dtype

    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype(device)
    result = run(names, device, dtype, args.runs, args.transcript_tokens, args.answer_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, "shapes", result, markdown(result), as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
