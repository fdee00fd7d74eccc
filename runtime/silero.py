"""Silero VAD, a small neural speech detector: whether a clip holds speech (no transcript is made for one
that does not, as in the reference), and, in `listen`'s endpointer, whether a frame is speech.

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

Over a never-ending stream that state drifts, and the network can stop hearing speech altogether
(it did after 46 s of a noisy stream here; silero-vad issue #725 reports the same). So the state
runs in two copies, each restarted every STATE_PERIOD_CHUNKS chunks, half a period apart, and the
copy that has run longer answers: it has always heard 4-8 s of the stream, never more.
"""

from __future__ import annotations

import functools
import importlib.util
from collections import deque
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
CHUNK = 512  # samples per decision at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk in front of each
REFLECT = 64  # samples reflected at the end before the STFT
N_FFT = 256  # STFT window
HOP = 128  # STFT hop
N_BINS = N_FFT // 2 + 1  # STFT bins
N_FRAMES = 4  # STFT frames per chunk: (CONTEXT + CHUNK + REFLECT - N_FFT) / HOP + 1
HIDDEN = 128  # LSTM width
THRESHOLD = 0.5  # a chunk is speech from this probability on (Silero's own default) ...
RELEASE = 0.15  # ... and stays speech until the probability falls this far under it
# The threshold of the model's speech check and of `listen`'s endpointer: one value, so that an
# utterance the endpointer hears is not called silent by the check (README, "Endpointing in noise")
SPEECH_THRESHOLD = 0.4
# Silero misses quiet, reverberant speech (a talker across the room at -50 dBFS) that it hears once
# the level is raised, while raised noise and sounds stay non-speech (README, "Quiet, far talkers").
# With a gain, Silero hears each chunk twice, as it came and raised by up to that many dB toward a
# peak of GAIN_TARGET (-20 dBFS), judged on the loudest chunk of the last GAIN_WINDOW_CHUNKS (10 s):
# audio that was as loud recently is not raised, and nothing is lowered. A chunk's probability is
# the higher of the two, so the gain only ever adds speech: heard raised alone, a quiet clip's
# near-silent lead-in can dull the network's state for the speech that follows.
GAIN_TARGET = 0.1
GAIN_WINDOW_CHUNKS = 312
# The gain of the model's speech check and of `listen`'s endpointer (0 turns it off). On by default
# since the raised view only adds to the plain one; opt-in before, when it replaced it.
SPEECH_GAIN_DB = 30.0
STATE_PERIOD_CHUNKS = 250  # 8 s: each copy of the LSTM state restarts this often (module docstring)
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
    import torch

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


def _fresh(views: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A new LSTM state (h, c) for each view."""
    return [(np.zeros(HIDDEN, np.float32), np.zeros(HIDDEN, np.float32))] * views


class _States:
    """The LSTM states of a stream: chunks seen, and two copies of every view's state (module docstring);
    copy 1 is None until it first starts, half a period in."""

    def __init__(self, views: int) -> None:
        self.chunks = 0
        self.copies: list[list[tuple[np.ndarray, np.ndarray]] | None] = [_fresh(views), None]


class SileroVad:
    """Streaming speech detection: `push` audio of any length and read the latest chunk's probability,
    or ask webrtcvad's question of a frame (`is_speech(pcm, sample_rate)`), answered with hysteresis:
    speech from `threshold` on, until the probability falls under `threshold - release`."""

    def __init__(self, threshold: float = THRESHOLD, release: float = RELEASE,
                 weights: dict[str, np.ndarray] | None = None, gain_db: float = 0.0) -> None:
        if not 0 < threshold - release < threshold < 1:
            raise ValueError(f"need 0 < threshold - release < threshold < 1, got {threshold} and {release}")
        if gain_db < 0:
            raise ValueError(f"gain_db must be >= 0 (0: off), got {gain_db}")
        self.threshold, self.release = threshold, release
        self.max_gain = 10 ** (gain_db / 20)
        self.views = 2 if self.max_gain > 1 else 1  # the audio as it came, and raised when there is a gain
        self.w = weights if weights is not None else load_weights()
        self.reset()

    def reset(self) -> None:
        self._tail = np.zeros(CONTEXT, np.float32)  # the previous chunk's last samples
        self._buf = np.zeros(0, np.float32)  # samples not yet in a chunk
        self._states = _States(self.views)
        self.probability = 0.0  # of the latest complete chunk (0 before the first)
        self.speaking = False
        self._peaks: deque[float] = deque(maxlen=GAIN_WINDOW_CHUNKS)  # of the last chunks, for the gain

    def push(self, samples: np.ndarray) -> float:
        """Add 16 kHz mono float samples; returns the speech probability of the latest complete chunk."""
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.float32)])
        while len(self._buf) >= CHUNK:
            chunk, self._buf = self._buf[:CHUNK], self._buf[CHUNK:]
            x = np.concatenate([self._tail, chunk])[None]  # [1, CONTEXT + CHUNK]
            if self.max_gain > 1:  # and raised, as `clip_probabilities` raises it
                self._peaks.append(float(np.abs(chunk).max()))
                x = np.concatenate([x, x * np.float32(self._gain(max(self._peaks)))])
            self.probability = self._advance(self._states, self._lstm_inputs(x))
            self._tail = chunk[-CONTEXT:]
        return self.probability

    def _gain(self, recent_peak: float | np.ndarray) -> float | np.ndarray:
        """The factor a chunk is raised by, given the loudest chunk peak of the window up to it."""
        return np.clip(GAIN_TARGET / np.maximum(recent_peak, 1e-9), 1.0, self.max_gain)

    def clip_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probabilities of a whole clip's complete chunks, from a fresh state ([n_chunks]); the same
        as pushing it chunk by chunk, with the convolutions of all chunks done at once."""
        x = np.asarray(samples, np.float32)
        n = len(x) // CHUNK
        if n == 0:
            return np.zeros(0, np.float32)
        x = np.concatenate([np.zeros(CONTEXT, np.float32), x[: n * CHUNK]])
        starts = np.arange(n)[:, None] * CHUNK + np.arange(CONTEXT + CHUNK)
        views = [x[starts]]  # [n, CONTEXT + CHUNK]
        if self.max_gain > 1:  # raised as `push` raises them: by the loudest chunk peak of the window so far
            peaks = np.pad(np.abs(views[0][:, CONTEXT:]).max(axis=1), (GAIN_WINDOW_CHUNKS - 1, 0))
            recent = np.lib.stride_tricks.sliding_window_view(peaks, GAIN_WINDOW_CHUNKS).max(axis=1)  # [n]
            views.append((self._gain(recent)[:, None] * views[0]).astype(np.float32))
        inputs = np.stack([self._lstm_inputs(chunks) for chunks in views], axis=1)  # [n, views, 512]
        states = _States(self.views)
        # only the recurrent part runs chunk after chunk
        return np.array([self._advance(states, inputs[i]) for i in range(n)], np.float32)

    def is_speech(self, pcm: bytes, sample_rate: int) -> bool:
        """webrtcvad's interface: a frame of 16-bit little-endian mono PCM; every frame must be given,
        in order (the network carries state), and the answer covers the latest complete chunk."""
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"Silero VAD runs here at {SAMPLE_RATE} Hz, got {sample_rate} Hz")
        return self._decide(self.push(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0))

    def clip_speech_ms(self, samples: np.ndarray) -> int:
        """Milliseconds of a whole clip that count as speech (its chunks, judged with the hysteresis)."""
        self.reset()
        chunks = sum(self._decide(p) for p in self.clip_probabilities(samples))
        return chunks * CHUNK * 1000 // SAMPLE_RATE

    def _decide(self, p: float) -> bool:
        self.speaking = p >= (self.threshold - self.release if self.speaking else self.threshold)
        return self.speaking

    def _lstm_inputs(self, x: np.ndarray) -> np.ndarray:
        """Chunks with their context [n, 576] -> the LSTM's input projections [n, 512]: everything that does
        not depend on the previous chunk, so a whole clip's chunks go at once. NumPy: the products are small,
        and running them in PyTorch from the reader thread slowed the model's own PyTorch work in the
        worker thread on a 2-core CPU (README, "Endpointing in noise")."""
        w = self.w
        x = np.concatenate([x, x[:, -2 : -REFLECT - 2 : -1]], axis=1)  # [n, 640]: the end reflected (not the last sample)
        n = len(x)
        frames = x[:, np.arange(N_FRAMES)[:, None] * HOP + np.arange(N_FFT)].reshape(n * N_FRAMES, N_FFT)
        h = np.sqrt((frames @ w["stft_re"]) ** 2 + (frames @ w["stft_im"]) ** 2)  # [n * 4, 129] magnitudes
        h = h.reshape(n, N_FRAMES, N_BINS)
        for i, stride in enumerate(CONVS):  # 3 taps, padding 1: h [n, t, c_in] -> [n, t / stride, c_out]
            padded = np.pad(h, ((0, 0), (1, 1), (0, 0)))
            t = (h.shape[1] - 1) // stride + 1
            cols = np.concatenate([padded[:, k : k + (t - 1) * stride + 1 : stride] for k in range(3)], axis=2)
            out = cols.reshape(n * t, -1) @ w[f"conv{i}"] + w[f"conv{i}_b"]  # cols: [n, t, 3 * c_in], tap-major
            h = np.maximum(out, 0.0).reshape(n, t, -1)
        return h[:, 0] @ w["lstm_ih"] + w["lstm_b"]  # h[:, 0]: [n, 128], one time step left

    def _advance(self, states: _States, inputs: np.ndarray) -> float:
        """One chunk through the recurrent part of every view and copy of the state ([views, 512]
        input projections); the speech probability from the copy that has run longer."""
        n, half = states.chunks, STATE_PERIOD_CHUNKS // 2
        if n % STATE_PERIOD_CHUNKS == 0 and n:
            states.copies[0] = _fresh(self.views)
        if n % STATE_PERIOD_CHUNKS == half:  # copy 1 starts half a period in (before, it would equal copy 0)
            states.copies[1] = _fresh(self.views)
        probs = []  # of each copy that has started: the higher of its views'
        for copy in states.copies:
            if copy is not None:
                per_view = []
                for view, state in enumerate(copy):
                    p, copy[view] = self._step(inputs[view], state)
                    per_view.append(p)
                probs.append(max(per_view))
        states.chunks += 1
        return probs[0] if n < half or n % STATE_PERIOD_CHUNKS >= half else probs[1]

    def _step(self, inputs: np.ndarray, state: tuple[np.ndarray, np.ndarray]):
        """The LSTM cell and the output layer: (its input projection [512], (h, c)) -> (probability, (h, c))."""
        w = self.w
        hx, cx = state
        gates = inputs + hx @ w["lstm_hh"]  # [512]: input, forget, cell, output
        sig = _sigmoid(gates)
        cx = sig[HIDDEN : 2 * HIDDEN] * cx + sig[:HIDDEN] * np.tanh(gates[2 * HIDDEN : 3 * HIDDEN])
        hx = sig[3 * HIDDEN :] * np.tanh(cx)
        return float(_sigmoid(np.maximum(hx, 0.0) @ w["out_w"] + w["out_b"][0])), (hx, cx)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow for large -x
