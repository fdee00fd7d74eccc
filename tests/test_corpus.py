"""The synthetic corpus: measurements on signals with known answers, labels, splits, a tiny build."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

from desta_edge.training import acoustics, labels
from desta_edge.training.cli import register_cli
from desta_edge.training.corpus import SOUND, SPEECH, CorpusOptions, build_corpus, plan_corpus, read_metadata
from desta_edge.training.descriptions import seed_description
from desta_edge.training.sentences import SHORT, all_sentences, heldout_questions, short_utterances
from desta_edge.training.synth import (FEMALE, LOW_FEMALE_PITCH, MALE, TRAIN, Prosody, Voice, all_voices, sample_prosody,
                                      synthesize)

SR = acoustics.SAMPLE_RATE
ESPEAK_ONLY = {"espeak-ng": True, "flite": False, "festival": False}


def harmonic(f0: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


# ------------------------------------------------------------------ measurements


@pytest.mark.parametrize("f0", [85.0, 150.0, 220.0, 330.0])
def test_median_f0_of_harmonic_signal(f0):
    assert acoustics.median_f0(harmonic(f0)) == pytest.approx(f0, rel=0.01)


def test_median_f0_is_none_for_noise_and_silence():
    rng = np.random.default_rng(0)
    assert acoustics.median_f0(acoustics.colored_noise(SR, "white", rng) * 0.1) is None
    assert acoustics.median_f0(np.zeros(SR, np.float32)) is None


def test_active_rms_ignores_silence_padding():
    t = np.arange(SR) / SR
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    expected = 20 * np.log10(0.5 / np.sqrt(2))  # -9.03 dBFS
    padded = np.concatenate([np.zeros(SR), sine, np.zeros(2 * SR)])
    assert acoustics.active_rms_dbfs(sine) == pytest.approx(expected, abs=0.1)
    assert acoustics.active_rms_dbfs(padded) == pytest.approx(expected, abs=0.3)
    assert acoustics.active_span_s(padded) == pytest.approx(1.0, abs=2 * acoustics.FRAME_S)  # frame granularity
    assert acoustics.active_rms_dbfs(np.zeros(SR)) == acoustics.SILENCE_DBFS


def test_set_level_and_mix_at_snr_are_exact():
    x = acoustics.set_level(harmonic(120.0), -30.0)
    assert acoustics.active_rms_dbfs(x) == pytest.approx(-30.0, abs=0.1)
    noise = acoustics.colored_noise(len(x), "pink", np.random.default_rng(1))
    y = acoustics.mix_at_snr(x, noise, 10.0)
    added = y - x
    snr = 10 * np.log10(10 ** (acoustics.active_rms_dbfs(x) / 10) / np.mean(added.astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.1)


def test_noise_colors_have_the_expected_spectral_tilt():
    rng = np.random.default_rng(2)
    slopes = {}
    for color in ("white", "pink", "brown"):
        y = acoustics.colored_noise(4 * SR, color, rng)
        spec = np.abs(np.fft.rfft(y)) ** 2
        f = np.fft.rfftfreq(len(y), 1 / SR)
        band = (f > 100) & (f < 4000)
        slopes[color] = np.polyfit(np.log10(f[band]), 10 * np.log10(spec[band]), 1)[0]  # dB per decade
    assert slopes["white"] == pytest.approx(0, abs=1.5)
    assert slopes["pink"] == pytest.approx(-10, abs=1.5)
    assert slopes["brown"] == pytest.approx(-20, abs=1.5)


def test_noise_power_is_audible_whatever_the_clip_length():
    # brown noise used to put nearly all its power below 1 Hz: a "0 dB SNR" clip sounded clean,
    # and the longer the clip, the quieter its audible part
    rng = np.random.default_rng(4)
    for color in ("white", "pink", "brown"):
        shares = []
        for seconds in (1, 3, 10):
            y = acoustics.colored_noise(seconds * SR, color, rng)
            power = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
            f = np.fft.rfftfreq(len(y), 1 / SR)
            assert power[f < acoustics.NOISE_LOW_CUT_HZ].sum() < 1e-9 * power.sum(), (color, seconds)
            shares.append(power[f >= 100].sum() / power.sum())
        assert min(shares) > 0.15, (color, shares)  # brown: about 20% above 100 Hz
        assert max(shares) < 1.5 * min(shares), (color, shares)  # before the cut: 8x apart from 3 s to 10 s


def test_sounds_have_requested_length_and_silence_is_silent():
    rng = np.random.default_rng(3)
    for kind in acoustics.SOUND_KINDS:
        y = acoustics.make_sound(kind, 1.5, rng)
        assert len(y) == int(1.5 * SR) and np.isfinite(y).all()
        assert (np.max(np.abs(y)) == 0) == (kind == "silence")
    with pytest.raises(ValueError, match="unknown sound kind"):
        acoustics.make_sound("trumpet", 1.0, rng)


def test_slower_espeak_measures_fewer_words_per_second():
    text = "My brother cooked pasta for dinner yesterday."
    voice = Voice("espeak-ng", "en-us+m1", "Male", TRAIN)
    n_words = len(text.split())
    slow = n_words / acoustics.active_span_s(synthesize(voice, text, Prosody(90, 50)))
    fast = n_words / acoustics.active_span_s(synthesize(voice, text, Prosody(220, 50)))
    assert fast > 1.8 * slow
    assert labels.speed_label(slow) == "Slow" and labels.speed_label(fast) == "Fast"


# ------------------------------------------------------------------ labels


def test_label_bins_and_gender_check():
    assert [labels.pitch_label(f, "Male") for f in (80, 120, 160)] == ["Low", "Normal", "High"]
    assert [labels.pitch_label(f, "Female") for f in (160, 200, 260)] == ["Low", "Normal", "High"]
    assert labels.pitch_label(None, "Male") is None
    assert labels.gender_label("Female", 210.0) == "Female"
    assert labels.gender_label("Female", 110.0) is None  # implausible: no label rather than a wrong one
    assert labels.gender_label("Male", 250.0) is None
    assert labels.volume_label(-40) == "Quiet" and labels.volume_label(-25) == "Normal" and labels.volume_label(-10) == "Loud"
    assert labels.noise_label(None) == "Clean" and labels.noise_label(2.0) == "Very noisy"
    assert labels.noise_label(10.0) == "Noisy" and labels.noise_label(18.0) == "Slightly noisy"
    assert labels.noise_label(29.9) == "Slightly noisy" and labels.noise_label(35.0) == "Clean"  # a room's background
    assert labels.words_per_second(4, 2.0) == 2.0
    assert labels.words_per_second(3, 0.5) is None and labels.words_per_second(4, 0.0) is None  # no rate of a word


def test_room_response_decays_at_its_rt60_with_the_stated_direct_to_reverb_ratio():
    rng = np.random.default_rng(0)
    h = acoustics.room_response(0.5, 6.0, rng)
    assert h[0] == 1.0 and len(h) == int(0.5 * SR) + int(acoustics.ROOM_PREDELAY_S * SR) + 1
    tail = h[1:]
    assert 10 * np.log10(np.sum(tail**2)) == pytest.approx(-6.0, abs=1e-6)
    first, last = tail[: SR // 20], tail[-SR // 20 :]  # 50 ms at each end of a 500 ms tail
    assert 10 * np.log10(np.sum(first**2) / np.sum(last**2)) == pytest.approx(54.0, abs=3.0)
    x = harmonic(150.0)
    y = acoustics.convolve(x, h)
    assert len(y) == len(x) and acoustics.median_f0(y) == pytest.approx(150.0, rel=0.02)
    with pytest.raises(ValueError, match="rt60"):
        acoustics.room_response(0.0, 6.0, rng)


def test_band_limit_passes_the_band_and_rolls_off_outside_it():
    t = np.arange(SR) / SR

    def gain_db(f: float) -> float:
        x = np.sin(2 * np.pi * f * t).astype(np.float32)
        return float(10 * np.log10(np.mean(acoustics.band_limit(x, 300.0, 3400.0) ** 2) / np.mean(x**2)))

    assert abs(gain_db(1000.0)) < 0.1
    assert gain_db(100.0) < -30 and gain_db(7000.0) < -20
    with pytest.raises(ValueError, match="low_hz"):
        acoustics.band_limit(t, 3400.0, 300.0)


def test_room_tone_is_unit_rms_and_not_silent():
    y = acoustics.room_tone(SR, np.random.default_rng(2))
    assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    assert acoustics.frame_db(y).min() > acoustics.SILENCE_DBFS + 60


# ------------------------------------------------------------------ sentences, plans and splits


def test_sentences_are_many_distinct_and_heldout_is_disjoint():
    sents = all_sentences()
    texts = [s.text for s in sents]
    assert len(texts) >= 3000 and len(set(texts)) == len(texts)
    assert {s.kind for s in sents} == {"question", "command", "statement"}
    assert all(s.answer for s in sents if s.kind == "question")
    held = heldout_questions()
    assert len(held) >= 50 and all(h.answer for h in held)
    assert not {h.text for h in held} & set(texts)
    short = short_utterances()
    assert len(short) >= 80 and {s.kind for s in short} == {SHORT}
    assert all(1 <= len(s.text.split()) <= 2 for s in short)
    assert not {s.text for s in short} & (set(texts) | {h.text for h in held})


def test_plan_is_deterministic_and_splits_are_disjoint_by_sentence_and_voice():
    voices = all_voices({"espeak-ng": True, "flite": True, "festival": True})
    opts = CorpusOptions(out_dir="unused", size=3000, seed=7)
    plans = plan_corpus(opts, voices)
    assert plans == plan_corpus(opts, voices)
    assert plans != plan_corpus(CorpusOptions(out_dir="unused", size=3000, seed=8), voices)
    assert {p.split for p in plans} == {"train", "validation", "test"}
    by_split: dict[str, tuple[set, set]] = {}
    for p in plans:
        if p.kind == SPEECH:
            s, v = by_split.setdefault(p.split, (set(), set()))
            s.add(p.sentence.text)
            v.add(p.voice.id)
    splits = list(by_split)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not by_split[a][0] & by_split[b][0], f"sentences shared by {a} and {b}"
            assert not by_split[a][1] & by_split[b][1], f"voices shared by {a} and {b}"
    assert {p.voice.engine for p in plans if p.kind == SPEECH and p.split == TRAIN} == {"espeak-ng", "flite"}
    for engine in ("espeak-ng", "flite"):  # both genders in training for every engine: gender is not the engine
        genders = [p.voice.gender for p in plans if p.kind == SPEECH and p.split == TRAIN and p.voice.engine == engine]
        assert 0.4 < genders.count("Female") / len(genders) < 0.6, engine
    assert len(by_split["train"][0]) > 1500  # thousands of clips use many distinct sentences
    assert any(p.kind == SOUND for p in plans)


def test_room_and_channel_choices_leave_the_rest_of_the_plan_unchanged():
    voices = all_voices({"espeak-ng": True, "flite": True, "festival": True})
    plain = plan_corpus(CorpusOptions(out_dir="unused", size=600, seed=4, room_fraction=0, reverb_fraction=0,
                                      channel_fraction=0), voices)
    full = plan_corpus(CorpusOptions(out_dir="unused", size=600, seed=4, room_fraction=1, reverb_fraction=1,
                                     channel_fraction=1), voices)
    default = plan_corpus(CorpusOptions(out_dir="unused", size=600, seed=4), voices)
    augmented = ("room_snr_db", "reverb", "channel_hz")
    for a, b, c in zip(plain, full, default):
        assert a == dataclasses.replace(b, **{k: None for k in augmented})
        assert a == dataclasses.replace(c, **{k: None for k in augmented})
        assert a.room_snr_db is None and a.reverb is None and a.channel_hz is None
        if b.kind == SPEECH:  # every speech clip gets a room and a channel; room tone only under clean speech
            assert b.reverb is not None and b.channel_hz is not None
            assert (b.room_snr_db is not None) == (b.noise_type is None)
            if b.room_snr_db is not None:
                assert labels.noise_label(b.room_snr_db) == labels.CLEAN
    speech = [c for c in default if c.kind == SPEECH]
    for field, share in (("reverb", 0.3), ("channel_hz", 0.3)):
        assert abs(sum(getattr(c, field) is not None for c in speech) / len(speech) - share) < 0.08, field


def test_short_replies_take_the_place_of_sentences_and_leave_the_rest_of_the_plan_unchanged():
    voices = all_voices({"espeak-ng": True, "flite": True, "festival": True})
    plain = plan_corpus(CorpusOptions(out_dir="unused", size=600, seed=4), voices)
    mixed = plan_corpus(CorpusOptions(out_dir="unused", size=600, seed=4, short_fraction=0.3), voices)
    swapped = [(a, b) for a, b in zip(plain, mixed) if a != b]
    for a, b in swapped:
        assert b.sentence.kind == SHORT and a.sentence.kind != SHORT
        assert a == dataclasses.replace(b, sentence=a.sentence)  # the voice, noise, room ... are the same
    speech = [p for p in mixed if p.kind == SPEECH]
    assert abs(len(swapped) / len(speech) - 0.3) < 0.06
    assert not any(p.sentence.kind == SHORT for p in plain if p.kind == SPEECH)
    by_split: dict[str, set] = {}
    for p in speech:
        by_split.setdefault(p.split, set()).add(p.sentence.text)
    assert not by_split["train"] & (by_split["validation"] | by_split["test"])  # split by text as the rest


def test_low_pitched_women_change_only_the_pitch_of_women_s_short_replies():
    voices = all_voices({"espeak-ng": True, "flite": True, "festival": True})
    short = plan_corpus(CorpusOptions(out_dir="unused", size=800, seed=4, short_fraction=0.3), voices)
    low = plan_corpus(CorpusOptions(out_dir="unused", size=800, seed=4, short_fraction=0.3,
                                    short_low_female_fraction=0.5), voices)
    changed = [(a, b) for a, b in zip(short, low) if a != b]
    women = [p for p in short if p.kind == SPEECH and p.sentence.kind == SHORT and p.voice.gender == FEMALE
             and p.voice.engine in LOW_FEMALE_PITCH]
    assert abs(len(changed) / len(women) - 0.5) < 0.15
    for a, b in changed:
        assert a == dataclasses.replace(b, prosody=a.prosody) and a in women  # only the pitch moved
        lo, hi = LOW_FEMALE_PITCH[b.voice.engine]
        assert lo <= b.prosody.pitch <= hi
    assert {b.voice.engine for _, b in changed} == {"espeak-ng", "flite"}  # flite's slt trains, festival has no pitch
    with pytest.raises(ValueError, match="female espeak-ng or flite voice"):
        sample_prosody(next(v for v in voices if v.gender == MALE), np.random.default_rng(0), low_female=True)


def test_low_pitched_women_s_sentences_change_only_their_pitch_and_leave_short_replies_alone():
    voices = all_voices({"espeak-ng": True, "flite": True, "festival": True})
    options = CorpusOptions(out_dir="unused", size=800, seed=4, short_fraction=0.3, short_low_female_fraction=0.5)
    before = plan_corpus(options, voices)
    after = plan_corpus(dataclasses.replace(options, low_female_fraction=0.4), voices)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    women = [p for p in before if p.kind == SPEECH and p.sentence.kind != SHORT and p.voice.gender == FEMALE
             and p.voice.engine in LOW_FEMALE_PITCH]
    assert abs(len(changed) / len(women) - 0.4) < 0.15
    for a, b in changed:
        assert a == dataclasses.replace(b, prosody=a.prosody) and a in women  # a sentence's pitch, nothing else
        lo, hi = LOW_FEMALE_PITCH[b.voice.engine]
        assert lo <= b.prosody.pitch <= hi
    with pytest.raises(ValueError, match="low_female_fraction"):
        plan_corpus(dataclasses.replace(options, low_female_fraction=1.2), voices)


def test_a_low_pitched_woman_s_short_reply_is_labelled_from_its_measured_pitch(tmp_path):
    build_corpus(CorpusOptions(out_dir=tmp_path, size=12, seed=3, workers=1, sound_fraction=0.0, short_fraction=1.0,
                               short_low_female_fraction=1.0))
    recs = [r for r in read_metadata(tmp_path) if r["voice_gender"] == FEMALE and r["synthesizer"] != "festival"]
    assert recs and all(r["settings"]["prosody"]["pitch"] <= LOW_FEMALE_PITCH[r["synthesizer"]][1] for r in recs)
    for r in recs:  # a measured F0 too low for a woman leaves the clip without a gender label
        assert r["gender"] == (FEMALE if r["f0_hz"] and r["f0_hz"] >= labels.FEMALE_MIN_F0_HZ else None)
    assert any(r["gender"] == FEMALE and r["f0_hz"] < 190 for r in recs)


def test_a_short_reply_gets_every_label_but_a_speaking_speed(tmp_path):
    build_corpus(CorpusOptions(out_dir=tmp_path, size=6, seed=2, workers=1, sound_fraction=0.0, short_fraction=1.0))
    recs = list(read_metadata(tmp_path))
    assert recs and all(r["sentence_type"] == SHORT for r in recs)
    for r in recs:
        assert r["speed"] is None and r["words_per_second"] is None
        assert r["volume"] and r["noise"] and r["f0_hz"] and r["pitch"]
        assert "Speaking speed" not in seed_description(r)


def test_plan_rejects_bad_options():
    with pytest.raises(ValueError, match="size"):
        plan_corpus(CorpusOptions(out_dir="x", size=0), all_voices(ESPEAK_ONLY))
    with pytest.raises(ValueError, match="split_fractions"):
        plan_corpus(CorpusOptions(out_dir="x", size=5, split_fractions=(0.5, 0.2, 0.2)), all_voices(ESPEAK_ONLY))
    with pytest.raises(ValueError, match="short_fraction"):
        plan_corpus(CorpusOptions(out_dir="x", size=5, short_fraction=1.5), all_voices(ESPEAK_ONLY))
    with pytest.raises(ValueError, match="short_low_female_fraction"):
        plan_corpus(CorpusOptions(out_dir="x", size=5, short_low_female_fraction=-0.1), all_voices(ESPEAK_ONLY))


# ------------------------------------------------------------------ a tiny build

EXPECTED_FIELDS = {"id", "audio", "split", "kind", "transcript", "sentence_type", "answer", "synthesizer", "voice",
                   "voice_gender", "gender", "f0_hz", "pitch", "words_per_second", "speed", "rms_dbfs", "volume",
                   "noise", "noise_type", "snr_db", "sound", "duration_s", "settings"}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(CorpusOptions(out_dir=out, size=16, seed=3, workers=1, sound_fraction=0.25))
    return out


def test_build_writes_16k_mono_wavs_with_measured_labels(small_corpus):
    recs = list(read_metadata(small_corpus))
    assert len(recs) == 16 and len({r["id"] for r in recs}) == 16
    for r in recs:
        assert set(r) == EXPECTED_FIELDS
        info = sf.info(str(small_corpus / r["audio"]))
        assert info.samplerate == 16000 and info.channels == 1
        assert info.duration == pytest.approx(r["duration_s"], abs=0.01)
        seed_description(r)  # every record makes a description
        if r["kind"] == SPEECH:
            assert r["transcript"] and r["pitch"] and r["volume"] and r["noise"]
            assert (r["speed"] is not None) == (len(r["transcript"].split()) >= labels.MIN_SPEED_WORDS)
            assert r["volume"] == labels.volume_label(r["rms_dbfs"])
            assert r["pitch"] == labels.pitch_label(r["f0_hz"], r["gender"])
            assert r["noise"] == labels.noise_label(r["snr_db"])
            assert (r["snr_db"] is None) == (r["noise_type"] is None)
        else:
            assert r["transcript"] is None and r["sound"] in acoustics.SOUND_KINDS
    kinds = {r["kind"] for r in recs}
    assert kinds == {SPEECH, SOUND}
    manifest = json.loads((small_corpus / "corpus.json").read_text())
    assert sum(manifest["counts"]["split"].values()) == 16


def test_clean_speech_label_matches_remeasured_audio(small_corpus):
    clean = [r for r in read_metadata(small_corpus) if r["kind"] == SPEECH and r["noise"] == "Clean"]
    assert clean
    for r in clean:
        y, _ = sf.read(str(small_corpus / r["audio"]), dtype="float32")
        assert acoustics.active_rms_dbfs(y) == pytest.approx(r["rms_dbfs"], abs=0.5)
        if r["f0_hz"]:
            assert acoustics.median_f0(y) == pytest.approx(r["f0_hz"], rel=0.05)


def test_rooms_and_channels_keep_every_label_and_leave_no_digital_silence(tmp_path):
    common = dict(size=8, seed=3, workers=1, sound_fraction=0.0, noisy_fraction=0.5)
    build_corpus(CorpusOptions(out_dir=tmp_path / "dry", room_fraction=0, reverb_fraction=0, channel_fraction=0, **common))
    build_corpus(CorpusOptions(out_dir=tmp_path / "room", room_fraction=1, reverb_fraction=1, channel_fraction=1, **common))
    dry, room = list(read_metadata(tmp_path / "dry")), list(read_metadata(tmp_path / "room"))
    assert any(r["noise_type"] == "room" for r in room) and any(r["noise_type"] not in (None, "room") for r in room)
    for a, b in zip(dry, room):
        for key in ("id", "transcript", "gender", "pitch", "speed", "volume", "noise", "duration_s"):
            assert a[key] == b[key], (a["id"], key)
        y, _ = sf.read(str(tmp_path / "room" / b["audio"]), dtype="float32")
        if b["noise_type"] == "room":  # the speech level, re-measured, is the labelled one
            assert acoustics.active_rms_dbfs(y) == pytest.approx(b["rms_dbfs"], abs=0.5)
            assert b["noise"] == labels.CLEAN and 30.0 <= b["snr_db"] <= 50.0
            assert acoustics.frame_db(y).min() > acoustics.SILENCE_DBFS + 30  # the pauses hold the room, not zeros
        assert b["settings"]["channel_hz"] is not None and b["settings"]["reverb_rt60_s_drr_db"] is not None


def test_build_is_deterministic_and_refuses_to_overwrite(small_corpus, tmp_path):
    again = tmp_path / "again"
    build_corpus(CorpusOptions(out_dir=again, size=16, seed=3, workers=2, sound_fraction=0.25))
    assert (again / "metadata.jsonl").read_text() == (small_corpus / "metadata.jsonl").read_text()
    with pytest.raises(ValueError, match="exists"):
        build_corpus(CorpusOptions(out_dir=again, size=16, seed=3))


def test_corpus_cli_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["corpus", "--out", str(tmp_path / "c"), "--size", "3", "--workers", "1", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["clips"] == 3 and (tmp_path / "c" / "metadata.jsonl").exists()
    args = parser.parse_args(["corpus", "--out", str(tmp_path / "c"), "--size", "3", "--json"])
    assert args.func(args) == 2  # exists, no --overwrite
    args = parser.parse_args(["corpus", "--out", str(tmp_path / "e"), "--size", "3", "--room-fraction", "1.5", "--json"])
    assert args.func(args) == 2  # a share above 1 is bad input
    assert "room_fraction" in capsys.readouterr().err
    args = parser.parse_args(["corpus", "--out", str(tmp_path / "d"), "--size", "6", "--workers", "1", "--json",
                              "--room-fraction", "0", "--reverb-fraction", "1", "--channel-fraction", "0"])
    assert args.func(args) == 0
    recs = list(read_metadata(tmp_path / "d"))
    assert all(r["noise_type"] != "room" for r in recs)
    assert all(r["settings"]["channel_hz"] is None for r in recs)
    assert all(r["settings"]["reverb_rt60_s_drr_db"] is not None for r in recs if r["kind"] == SPEECH)
