"""Silero VAD, a small neural speech detector: what the endpointer asks by default whether a frame is speech.

webrtcvad judges a frame by its spectrum's resemblance to voice, so music, a rumble or a crowd
at low SNR keep it "voiced" and requests run together (README, "Endpointing in noise"). Silero
VAD (v6, MIT licence) is a trained network that tells speech from music and noise far better.
The `silero-vad` PyPI package ships its weights; this module reads the 16 kHz network's tensors
from the package's TorchScript file and runs them with our own few lines of NumPy, one chunk at
a time with explicit state. It never imports the package: importing it sets PyTorch's thread
count to 1 for the whole process.

The network, per 512-sample chunk at 16 kHz (32 ms), with the previous chunk's last 64 samples
in front and 64 samples reflected at the end:
    STFT as a convolution (256-sample window, hop 128, 129 bins: magnitudes)
    four 3-tap convolutions with ReLU (129 → 128 → 64 (stride 2) → 64 (stride 2) → 128)
    an LSTM cell (128) whose state carries over to the next chunk
    ReLU, a 1×1 convolution and a sigmoid: the probability that the chunk holds speech.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16_000
CHUNK = 512  # samples per decision at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk in front of each
REFLECT = 64  # samples reflected at the end before the STFT
N_FFT = 256  # STFT window
HOP = 128  # STFT hop
N_BINS = N_FFT // 2 + 1  # STFT bins
N_FRAMES = 4  # STFT frames per chunk: (CONTEXT + CHUNK + REFLECT - N_FFT) / HOP + 1
HIDDEN = 128  # LSTM width
MODEL_FILE = "silero_vad.jit"  # the package's main model (v6); its safetensors file holds other weights
CONVS = (1, 2, 2, 1)  # strides of the four 3-tap convolutions (padding 1)


def model_path() -> Path:
    """The TorchScript model inside the installed `silero-vad` package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is missing: pip install silero-vad "
                           "(or use webrtcvad: EndpointOptions(detector='webrtcvad'), listen --vad webrtcvad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE
    if not path.is_file():
        raise RuntimeError(f"the silero-vad package has no {MODEL_FILE} (at {path}); "
                           "pip install 'silero-vad>=6' ships it")
    return path


@functools.lru_cache(maxsize=2)
def load_weights(path: Path | None = None) -> dict[str, np.ndarray]:
    """The 16 kHz network's tensors under our names, as float32 matrices laid out for `x @ W`, read once
    per process and shared (read-only) by every detector."""
    path = path or model_path()
    try:
        state = torch.jit.load(str(path), map_location="cpu")._model.state_dict()
    except Exception as e:  # a damaged file or another model: say which file
        raise RuntimeError(f"cannot read Silero VAD's 16 kHz network from {path}: {e}") from e
    names = {"stft.forward_basis_buffer": "stft", "decoder.decoder.2.weight": "out.weight",
             "decoder.decoder.2.bias": "out.bias"}
    names |= {f"decoder.rnn.{p}": f"lstm.{p}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    names |= {f"encoder.{i}.reparam_conv.{p}": f"conv{i}.{p}" for i in range(len(CONVS)) for p in ("weight", "bias")}
    if set(state) != set(names):
        raise RuntimeError(f"{path} is not Silero VAD v6: missing {sorted(set(names) - set(state))}, "
                           f"unexpected {sorted(set(state) - set(names))}")
    t = {ours: state[theirs].float().numpy() for theirs, ours in names.items()}
    stft = t["stft"][:, 0, :].T  # [256, 258]: window samples -> real bins, then imaginary bins
    w = {"stft_re": stft[:, :N_BINS].copy(), "stft_im": stft[:, N_BINS:].copy(),  # [256, 129] each
         "lstm_ih": t["lstm.weight_ih"].T.copy(), "lstm_hh": t["lstm.weight_hh"].T.copy(),  # [128, 512]
         "lstm_b": t["lstm.bias_ih"] + t["lstm.bias_hh"],  # [512]
         "out_w": t["out.weight"][0, :, 0].copy(), "out_b": t["out.bias"]}  # [128], [1]
    for i in range(len(CONVS)):  # [c_out, c_in, 3] -> [3 * c_in, c_out], rows in (tap, channel) order
        weight = t[f"conv{i}.weight"]
        w[f"conv{i}"] = weight.transpose(2, 1, 0).reshape(-1, weight.shape[0]).copy()
        w[f"conv{i}_b"] = t[f"conv{i}.bias"]
    for a in w.values():
        a.setflags(write=False)
    return w


class SileroVad:
    """Streaming speech detection: `push` audio of any length and read the latest chunk's probability,
    or ask webrtcvad's question of a frame (`is_speech(pcm, sample_rate)`), answered with hysteresis:
    speech from `threshold` on, until the probability falls under `threshold - release`."""

    def __init__(self, threshold: float = 0.5, release: float = 0.15,
                 weights: dict[str, np.ndarray] | None = None) -> None:
        if not 0 < threshold - release < threshold < 1:
            raise ValueError(f"need 0 < threshold - release < threshold < 1, got {threshold} and {release}")
        self.threshold, self.release = threshold, release
        self.w = weights if weights is not None else load_weights()
        self.reset()

    def reset(self) -> None:
        self._tail = np.zeros(CONTEXT, np.float32)  # the previous chunk's last samples
        self._buf = np.zeros(0, np.float32)  # samples not yet in a chunk
        self._state = (np.zeros(HIDDEN, np.float32), np.zeros(HIDDEN, np.float32))  # the LSTM's (h, c)
        self.probability = 0.0  # of the latest complete chunk (0 before the first)
        self.speaking = False

    def push(self, samples: np.ndarray) -> float:
        """Add 16 kHz mono float samples; returns the speech probability of the latest complete chunk."""
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.float32)])
        while len(self._buf) >= CHUNK:
            chunk, self._buf = self._buf[:CHUNK], self._buf[CHUNK:]
            self.probability = self._chunk(np.concatenate([self._tail, chunk]))
            self._tail = chunk[-CONTEXT:]
        return self.probability

    def is_speech(self, pcm: bytes, sample_rate: int) -> bool:
        """webrtcvad's interface: a frame of 16-bit little-endian mono PCM; every frame must be given,
        in order (the network carries state), and the answer covers the latest complete chunk."""
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"Silero VAD runs here at {SAMPLE_RATE} Hz, got {sample_rate} Hz")
        p = self.push(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0)
        self.speaking = p >= (self.threshold - self.release if self.speaking else self.threshold)
        return self.speaking

    def _chunk(self, x: np.ndarray) -> float:
        """One chunk with its context ([576]) -> the speech probability. NumPy: the products are small,
        and running them in PyTorch from the reader thread slowed the model's own PyTorch work in the
        worker thread on a 2-core CPU (README, "Endpointing in noise")."""
        w = self.w
        x = np.concatenate([x, x[-2 : -REFLECT - 2 : -1]])  # [640]: the end reflected (without the last sample)
        frames = x[np.arange(N_FRAMES)[:, None] * HOP + np.arange(N_FFT)]  # [4, 256]
        h = np.sqrt((frames @ w["stft_re"]) ** 2 + (frames @ w["stft_im"]) ** 2)  # [4, 129] magnitudes
        for i, stride in enumerate(CONVS):  # 3 taps, padding 1: h [t, c_in] -> [t / stride, c_out]
            zero = np.zeros((1, h.shape[1]), np.float32)
            padded = np.concatenate([zero, h, zero])
            n = (len(h) - 1) // stride + 1
            cols = np.concatenate([padded[k : k + (n - 1) * stride + 1 : stride] for k in range(3)], axis=1)
            h = np.maximum(cols @ w[f"conv{i}"] + w[f"conv{i}_b"], 0.0)  # cols: [n, 3 * c_in], tap-major
        # h: [1, 128]
        hx, cx = self._state
        gates = h[0] @ w["lstm_ih"] + hx @ w["lstm_hh"] + w["lstm_b"]  # [512]: input, forget, cell, output
        i, f, g, o = np.split(gates, 4)
        cx = _sigmoid(f) * cx + _sigmoid(i) * np.tanh(g)
        hx = _sigmoid(o) * np.tanh(cx)
        self._state = (hx, cx)
        return float(_sigmoid(np.maximum(hx, 0.0) @ w["out_w"] + w["out_b"][0]))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
