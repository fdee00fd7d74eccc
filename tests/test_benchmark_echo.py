"""benchmarks/echo.py: the simulated app's loudspeaker, the user's track and the scoring."""

import numpy as np
import pytest

from conftest import load_benchmark

bench = load_benchmark("echo")


def test_the_app_plays_each_answer_after_its_event_and_reports_start_and_stop():
    rng = np.random.default_rng(0)
    said = []
    app = bench.App(lambda text, i: said.append(text) or 0.3 * np.ones(1000, np.float32), -30.0, rng)
    app.on_event({"type": "token", "utterance": 0, "text": "The"})
    app.on_event({"type": "answer", "utterance": 0, "text": " "})  # nothing to say
    assert not app.playing
    app.on_event({"type": "answer", "utterance": 0, "text": "The capital of France is Paris."})
    assert app.playing
    sound, refs, reports, pos = [], [], [], 0
    while app.playing or pos < 8000:
        echo, ref, changes = app.play(pos, 320)
        sound.append(echo)
        refs.append(ref)
        reports += [(pos, c) for c in changes]
        pos += 320
    sound, refs = np.concatenate(sound), np.concatenate(refs)
    start, delay = int(bench.PLAY_LATENCY_S * 16000), int(bench.ECHO_DELAY_S * 16000)
    end = start + 1000 + delay
    assert said == ["The capital of France is Paris."] and app.spans == [(start / 16000, end / 16000)]
    assert np.allclose(refs[start : start + 1000], 0.3) and not refs[start + 1000 :].any()
    assert not sound[: start + delay].any() and sound[start + delay : end].any() and not sound[end:].any()
    assert reports == [(start // 320 * 320, True), ((end - 1) // 320 * 320, False)]


def test_user_track_lays_questions_out_gap_apart():
    q = [np.ones(8000, np.float32), np.ones(4000, np.float32)]
    x, truth = bench.user_track(q, gap_s=2.0)
    assert truth == [(0.5, 1.0), (2.5, 2.75)] and len(x) == 8000 + 2 * 32000 and x.sum() == 12000
    with pytest.raises(ValueError, match="longer than --gap-s"):
        bench.user_track([np.ones(40000, np.float32)], gap_s=2.0)


def test_score_tells_questions_from_echoes():
    truth = [(0.5, 2.0), (10.5, 12.0), (20.0, 21.5)]
    echoes = [(4.0, 7.0), (14.0, 16.0), (19.0, 23.0)]
    ev = []
    for u, (a, b) in enumerate([(0.5, 2.0), (4.1, 6.9), (10.4, 12.0), (14.1, 15.0), (20.0, 21.5)]):
        ev += [{"type": "speech_start", "utterance": u, "audio_s": a},
               {"type": "speech_end", "utterance": u, "speech_end_s": b}]
    ev += [{"type": "answer", "utterance": 0, "transcript": "q one"},
           {"type": "answer", "utterance": 1, "transcript": "e1"},
           {"type": "discarded", "utterance": 2, "reason": "echo", "transcript": "q two"},
           {"type": "discarded", "utterance": 3, "reason": "echo", "transcript": "e2"},
           {"type": "answer", "utterance": 4, "transcript": "What time is it?"}]
    s = bench.score(ev, truth, echoes, ["Q one.", "q two", "What time is it now?"])
    assert (s["answered"], s["not_heard"], s["dropped_as_echo"]) == (2, 0, 1)
    assert s["unanswered_questions"] == [{"question": 1, "asked_over_playback": False}]
    assert (s["echo_utterances"], s["echo_answered"], s["echo_dropped"], s["mixed_utterances"]) == (2, 1, 1, 1)
    assert s["heard_in_echoes"] == [{"transcript": "e1", "outcome": "answered"},
                                    {"transcript": "e2", "outcome": "echo"}]
    # one word missed of the 9 asked; the question over the playback lost one of its 5
    assert s["wer"] == pytest.approx(1 / 9, abs=1e-3) and s["asked_over_playback"] == 1
    assert s["wer_over_playback"] == 0.2
    assert s["heard_over_playback"] == [{"question": "What time is it now?", "transcript": "What time is it?"}]
