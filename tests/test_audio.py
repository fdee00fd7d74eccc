"""Audio loading and validation: formats, rates, channels, and every kind of bad input."""

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from desta_edge.runtime.audio import (
    N_SAMPLES, SAMPLE_RATE, AudioError, LogMel, has_speech, load_audio, prepare_audio,
)


def dominant_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_is_resampled_to_16k(wav_file, rate):
    clip = load_audio(wav_file(tone(1.0, rate=rate, freq=1000.0), rate))
    assert clip.samples.dtype == np.float32
    assert abs(len(clip.samples) - SAMPLE_RATE) <= 2
    assert abs(dominant_hz(clip.samples) - 1000.0) < 5


def test_stereo_is_downmixed_and_other_formats_read(wav_file, tmp_path):
    left, right = tone(0.5, freq=300.0), tone(0.5, freq=300.0) * 0.0
    clip = load_audio(wav_file(np.stack([left, right], axis=1), 16000, name="stereo.wav"))
    np.testing.assert_allclose(clip.samples, left / 2, atol=1e-4)
    flac = tmp_path / "clip.flac"
    sf.write(str(flac), tone(0.5), 16000)
    assert len(load_audio(flac).samples) == 8000
    ogg = tmp_path / "clip.ogg"
    sf.write(str(ogg), tone(0.5, rate=22050), 22050, format="OGG", subtype="VORBIS")
    assert abs(len(load_audio(ogg).samples) - 8000) < 400


def test_int16_and_uint8_arrays_are_scaled(wav_file):
    pcm = (tone(0.1) * 32767).astype(np.int16)
    np.testing.assert_allclose(prepare_audio(pcm, 16000).samples, tone(0.1), atol=1e-4)
    u8 = np.array([0, 128, 255], dtype=np.uint8)
    np.testing.assert_allclose(prepare_audio(u8, 16000).samples, [-1.0, 0.0, 127 / 128], atol=1e-6)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="audio file not found: .*nope.wav"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)


def test_corrupt_and_non_audio_files(tmp_path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is not audio")
    with pytest.raises(AudioError, match="cannot decode audio file .*corrupt.wav"):
        load_audio(bad)
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not audio")
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(text)


def test_empty_audio(wav_file):
    with pytest.raises(AudioError, match="empty"):
        load_audio(wav_file(np.zeros(0, dtype=np.float32), 16000))


def test_nan_and_inf_samples_are_rejected(wav_file):
    x = tone(0.5)
    x[1600] = np.nan
    with pytest.raises(AudioError, match=r"1 non-finite \(NaN/Inf\) samples, first at 0.100 s"):
        load_audio(wav_file(x, 16000, subtype="FLOAT"))
    y = tone(0.5)
    y[5:7] = np.inf
    with pytest.raises(AudioError, match="2 non-finite"):
        prepare_audio(y, 16000)


def test_too_long_is_an_error_unless_truncation_is_asked_for(wav_file, caplog):
    path = wav_file(tone(31.0, rate=8000), 8000)
    with pytest.raises(AudioError, match=r"31.000 s long \(496000 samples at 16 kHz\); the model.s window is 30 s"):
        load_audio(path)
    clip = load_audio(path, allow_truncate=True)
    assert len(clip.samples) == N_SAMPLES
    assert "truncated" in caplog.text


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("MP3", None)])
def test_a_file_cut_short_is_an_error(tmp_path, fmt, subtype):
    """libsndfile reads a WAV or MP3 that lost its end (an interrupted write or download) without
    a word; its header still announces the whole length, so the loss is an error here."""
    whole = tmp_path / f"whole.{fmt.lower()}"
    sf.write(str(whole), tone(2.0), 16000, format=fmt, subtype=subtype)
    assert len(load_audio(whole).samples) == pytest.approx(32000, abs=1200)  # MP3: encoder delay and padding
    raw = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(b"")
    with pytest.raises(AudioError, match=f"{cut}: the file is empty"):
        load_audio(cut)
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(AudioError, match=f"{cut}: the file is cut short: its header announces"):
        load_audio(cut)
    if fmt == "WAV":  # the sizes a writer to a pipe leaves open pass, and the audio is all there
        pos = raw.index(b"data") + 4
        open_ended = tmp_path / "open.wav"
        for size in (0xFFFFFFFF, 0x7FFFFFFC):
            open_ended.write_bytes(raw[:pos] + size.to_bytes(4, "little") + raw[pos + 4 :])
            np.testing.assert_array_equal(load_audio(open_ended).samples, load_audio(whole).samples)


def test_bad_shapes_rates_and_dtypes():
    with pytest.raises(AudioError, match="expected samples shaped"):
        prepare_audio(np.zeros((2, 2, 2)), 16000)
    with pytest.raises(AudioError, match="invalid sample rate"):
        prepare_audio(tone(0.1), 0)
    # a rate no speech recording has is a wrong header or argument, refused rather than resampled
    for rate in (1000, 4000, 768_000):
        with pytest.raises(AudioError, match=f"<array>: unsupported sample rate {rate} Hz: expected 8000 to 384000"):
            prepare_audio(np.zeros(rate // 10, np.float32), rate)
    assert len(prepare_audio(np.zeros(8000, np.float32), 8000).samples) == 16000
    with pytest.raises(AudioError, match="must be numeric"):
        prepare_audio(np.array(["a", "b"]), 16000)


def test_speech_detection_uses_silero_offline(tmp_path):
    """Silero VAD from the package's weights, as the reference decides whether to transcribe: silence,
    noise, beeps and a chord are not speech (webrtcvad took the noises, the beeps and the chord for
    speech, and Whisper wrote "you"); speech is, also when quiet."""
    from conftest import speak

    from desta_edge.training.acoustics import colored_noise

    rng = np.random.default_rng(0)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    beeps = (0.3 * np.sin(2 * np.pi * 1000 * t) * ((t % 0.5) < 0.2)).astype(np.float32)
    chord = (0.1 * sum(np.sin(2 * np.pi * f * t) for f in (262, 330, 392))).astype(np.float32)
    for x in (np.zeros(SAMPLE_RATE, np.float32), (0.001 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32),
              (0.1 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32), beeps, chord,
              (0.1 * colored_noise(2 * SAMPLE_RATE, "pink", rng, SAMPLE_RATE)).astype(np.float32)):
        assert not has_speech(x)
    clip = load_audio(speak("Turn on the kitchen lights please.", tmp_path / "s.wav"))
    assert has_speech(clip.samples) and has_speech(0.01 * clip.samples)


def test_log_mel_matches_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    x = (0.1 * np.random.default_rng(1).standard_normal(SAMPLE_RATE * 3)).astype(np.float32)
    want = WhisperFeatureExtractor(feature_size=80)(x, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    got = LogMel(80)([x]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert got.shape == (1, 80, 3000)


def test_a_shorter_window_is_exactly_the_start_of_the_full_one():
    from desta_edge.runtime.audio import N_FRAMES, encoder_frames

    rng = np.random.default_rng(3)
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 40000)]
    n = encoder_frames(max(map(len, clips)), 3.0)
    assert n == 600  # 2.5 s + 3 s, rounded up to whole seconds
    full = LogMel(80)(clips).numpy()
    short = LogMel(80)(clips, n).numpy()
    assert short.shape == (2, 80, 600)
    np.testing.assert_allclose(short, full[..., :600], atol=1e-5)
    assert encoder_frames(16000, None) == N_FRAMES and encoder_frames(29 * 16000, 5.0) == N_FRAMES
    with pytest.raises(ValueError, match="padding must be > 0"):
        encoder_frames(16000, 0.0)
    with pytest.raises(ValueError, match="even number"):
        LogMel(80)(clips, 601)
    with pytest.raises(AudioError, match="window of 200 frames holds"):
        LogMel(80)(clips, 200)


def test_decode_audio_reads_the_bytes_of_a_file_like_load_audio(wav_file):
    import desta_edge

    path = wav_file(tone(0.5, rate=22050), 22050)
    np.testing.assert_array_equal(desta_edge.decode_audio(path.read_bytes(), source="upload").samples,
                                  load_audio(path).samples)
    with pytest.raises(AudioError, match="upload: the file is empty"):
        desta_edge.decode_audio(b"", source="upload")
