"""Corpus scan on a generated tree of good and bad files: nothing crashes, every file is accounted for."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datasets.config import ConfigError, load_config
from datasets.manifest import read_manifest
from datasets.scan import ScanConfig, detect_layout, scan, scan_to_manifest

SR = 48000


def tone(seconds: float = 0.5, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return x if channels == 1 else np.stack([x, 0.5 * x], axis=1)


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    """A folder with good files and one of each kind of bad file; maps file name -> expected reject reason."""
    root = tmp_path / "corpus"
    spk = root / "alice"
    spk.mkdir(parents=True)
    expected: dict[str, str | None] = {}

    sf.write(spk / "good.flac", tone(), SR, subtype="PCM_24")
    expected["good.flac"] = None
    sf.write(spk / "stereo.wav", tone(channels=2), SR, subtype="PCM_16")
    expected["stereo.wav"] = None
    sf.write(spk / "float32.wav", tone(), SR, subtype="FLOAT")
    expected["float32.wav"] = None
    sf.write(spk / "pcm24.wav", tone(sr=44100), 44100, subtype="PCM_24")
    expected["pcm24.wav"] = None

    (spk / "corrupt_header.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + os.urandom(200))
    expected["corrupt_header.wav"] = "not decodable"
    sf.write(spk / "full.flac", np.random.default_rng(0).uniform(-0.5, 0.5, SR * 2).astype(np.float32), SR)
    data = (spk / "full.flac").read_bytes()
    (spk / "truncated.flac").write_bytes(data[: len(data) // 3])
    (spk / "full.flac").unlink()
    expected["truncated.flac"] = "truncated"
    (spk / "empty.wav").write_bytes(b"")
    expected["empty.wav"] = "zero-length"
    nan = tone()
    nan[1000:1010] = np.nan
    sf.write(spk / "nan.wav", nan, SR, subtype="FLOAT")
    expected["nan.wav"] = "NaN or Inf"
    inf = tone()
    inf[5] = np.inf
    sf.write(spk / "inf.wav", inf, SR, subtype="FLOAT")
    expected["inf.wav"] = "NaN or Inf"
    sf.write(spk / "silent.flac", np.zeros(SR, dtype=np.float32), SR)
    expected["silent.flac"] = "all-silent"
    sf.write(spk / "lowrate.wav", tone(sr=16000), 16000)
    expected["lowrate.wav"] = "below the minimum"
    (spk / "notes.mp3").write_text("these are meeting notes, not audio\n" * 20)
    expected["notes.mp3"] = "not decodable"
    sf.write(spk / "locked.flac", tone(), SR)
    os.chmod(spk / "locked.flac", 0)
    expected["locked.flac"] = "unreadable permissions"
    os.symlink(spk / "loop.wav", spk / "loop.wav")
    expected["loop.wav"] = "symlink loop"
    os.symlink(root, spk / "cycle")  # a directory cycle must not hang the walk
    (spk / "readme.txt").write_text("not an audio extension: ignored, not seen")
    return root, expected


def test_every_file_is_accepted_or_rejected_with_its_reason(tree, tmp_path):
    root, expected = tree
    out = tmp_path / "m" / "manifest.parquet"
    result = scan_to_manifest([root], out, progress=False)

    assert result.seen == len(expected) == len(result.rows) + len(result.rejects)
    assert result.ignored == 1
    by_name = {Path(r["path"]).name: r["reason"] for r in result.rejects}
    for name, reason in expected.items():
        if reason is None:
            assert name not in by_name, f"{name} rejected: {by_name.get(name)}"
        else:
            assert name in by_name, f"{name} should be rejected ({reason})"
            assert reason in by_name[name], f"{name}: {by_name[name]!r} lacks {reason!r}"

    lines = [json.loads(line) for line in (out.parent / "rejects.jsonl").read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in lines) == sorted(by_name)
    df = read_manifest(out, kind="speech")
    assert sorted(Path(p).name for p in df.path) == sorted(n for n, r in expected.items() if r is None)


def test_accepted_files_are_described_as_documented(tree, tmp_path):
    root, _ = tree
    df = read_manifest(
        scan_to_manifest([root], tmp_path / "m.parquet", progress=False) and tmp_path / "m.parquet"
    )
    rows = {Path(p).name: r for p, r in zip(df.path, df.to_dict("records"), strict=True)}
    assert rows["stereo.wav"]["channels"] == 2
    assert rows["pcm24.wav"]["sample_rate"] == 44100
    assert rows["good.flac"]["frames"] == SR // 2
    assert rows["good.flac"]["duration_s"] == pytest.approx(0.5)
    assert set(df.speaker) == {"alice"}
    assert set(df.corpus) == {"corpus"}
    assert all(
        set(i) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") for i in df.id
    )
    assert df.id.is_unique and list(df.id) == sorted(df.id)


def test_stereo_is_downmixed_and_24bit_float_read_normalised(tree):
    from datasets.audio import read_audio

    root, _ = tree
    x, sr = read_audio(root / "alice" / "stereo.wav")
    assert x.ndim == 1 and sr == SR
    np.testing.assert_allclose(x, 0.75 * tone(), atol=1e-4)
    y, _ = read_audio(root / "alice" / "pcm24.wav", sr=SR)
    assert y.dtype == np.float32 and len(y) == SR // 2


def test_scan_is_deterministic(tree, tmp_path):
    root, _ = tree
    a = scan_to_manifest([root], tmp_path / "a" / "m.parquet", progress=False)
    b = scan_to_manifest([root], tmp_path / "b" / "m.parquet", progress=False)
    assert a.rows == b.rows
    assert (tmp_path / "a" / "m.parquet").read_bytes() == (tmp_path / "b" / "m.parquet").read_bytes()


def test_header_mode_skips_sample_checks(tree):
    root, _ = tree
    result = scan([root], cfg=ScanConfig(verify="header"), progress=False)
    names = {Path(r["path"]).name for r in result.rows}
    assert "silent.flac" in names  # only full verification decodes samples
    assert result.seen == len(result.rows) + len(result.rejects)


@pytest.mark.parametrize(
    ("rel", "root", "expected"),
    [
        ("wav48_silence_trimmed/p225/p225_001_mic1.flac", "VCTK-Corpus-0.92", ("vctk", "p225")),
        ("p001/emo_adoration_freeform.wav", "EARS", ("ears", "p001")),
        ("audio/92_clean/9022/doctor_01_f000001.flac", "hi_fi_tts_v0", ("hifitts", "92")),
        ("bob/take1.wav", "my_studio", ("my_studio", "bob")),
    ],
)
def test_known_layouts(rel, root, expected):
    assert detect_layout(rel, root) == expected


def test_vctk_layout_end_to_end(tmp_path):
    root = tmp_path / "VCTK-Corpus-0.92"
    for spk in ("p225", "p226"):
        d = root / "wav48_silence_trimmed" / spk
        d.mkdir(parents=True)
        for i in (1, 2):
            sf.write(d / f"{spk}_{i:03d}_mic1.flac", tone(), SR)
    df = read_manifest(
        scan_to_manifest([root], tmp_path / "v.parquet", progress=False) and tmp_path / "v.parquet"
    )
    assert set(df.corpus) == {"vctk"} and sorted(set(df.speaker)) == ["p225", "p226"]
    for spk in ("p225", "p226"):
        assert df[df.speaker == spk].split.nunique() == 1  # a speaker never straddles splits


def test_config_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("scan:\n  verify: sometimes\n  min_sample_rate: {speech: -1}\n  bogus: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(ScanConfig, bad, section="scan")
    msg = str(e.value)
    assert (
        str(bad) in msg
        and "verify" in msg
        and "min_sample_rate.speech" in msg
        and "bogus: unknown key" in msg
    )
    ratios = tmp_path / "r.yaml"
    ratios.write_text("scan:\n  split_ratios: [0.5, 0.2, 0.2]\n")
    with pytest.raises(ConfigError, match="split_ratios"):
        load_config(ScanConfig, ratios, section="scan")


def test_shipped_config_equals_model_defaults():
    from datasets.config import CONFIG_ROOT

    assert load_config(ScanConfig, CONFIG_ROOT / "corpus.yaml", section="scan") == ScanConfig()
