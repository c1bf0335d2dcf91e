"""Corpus scan on a generated tree of good and bad files: nothing crashes, every file is accounted for."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datasets.config import ConfigError, load_config
from datasets.manifest import manifest_metadata, read_manifest
from datasets.scan import ScanConfig, detect_layout, load_scan_config, scan, scan_to_manifest

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

    lines = [json.loads(line) for line in (out.parent / "manifest.rejects.jsonl").read_text().splitlines()]
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


# ---------------------------------------------------------------------------------------------- VCTK microphones
def vctk_tree(root: Path) -> Path:
    """VCTK 0.92 as shipped: every utterance twice, ``_mic1`` and ``_mic2``, plus a speaker with mic1 only."""
    for spk, utts, mics in (("p225", 3, (1, 2)), ("p226", 2, (1, 2)), ("p315", 1, (1,))):
        d = root / "wav48_silence_trimmed" / spk
        d.mkdir(parents=True)
        for i in range(1, utts + 1):
            for mic in mics:
                sf.write(d / f"{spk}_{i:03d}_mic{mic}.flac", tone(0.2), SR)
    (root / "speaker-info.txt").write_text("ID AGE GENDER\n")
    return root


@pytest.mark.parametrize(("mic", "rows", "skipped"), [(None, 6, 5), ("mic2", 5, 6), ("both", 11, 0)])
def test_vctk_reads_one_microphone_unless_asked(tmp_path, mic, rows, skipped):
    root = vctk_tree(tmp_path / "VCTK-Corpus-0.92")
    cfg = ScanConfig() if mic is None else ScanConfig(vctk_mic=mic)
    out = tmp_path / "vctk.parquet"
    result = scan_to_manifest([root], out, cfg=cfg, progress=False)
    df = read_manifest(out, kind="speech")
    assert len(df) == rows and result.skipped_vctk_mic == skipped == result.summary()["skipped_vctk_mic"]
    assert result.seen == rows  # the other microphone's files are not seen, hence not rejected either
    kept = {Path(p).stem.rsplit("_", 1)[1] for p in df.path}
    assert kept == {"mic1", "mic2"} if mic == "both" else kept == {mic or "mic1"}
    if mic != "both":  # one row per sentence
        assert df.path.map(lambda p: Path(p).stem.rsplit("_", 1)[0]).is_unique
    assert manifest_metadata(out)["scan"]["vctk_mic"] == (mic or "mic1")


def test_vctk_mic_filter_leaves_other_corpora_alone(tmp_path):
    root = tmp_path / "studio" / "bob"
    root.mkdir(parents=True)
    sf.write(root / "take_mic2.wav", tone(0.2), SR)  # not VCTK: a generic corpus keeps every file
    assert len(scan([tmp_path / "studio"], progress=False).rows) == 1


# ---------------------------------------------------------------------------------------------- rejects files
def test_each_manifest_keeps_its_own_rejects(tree, tmp_path):
    root, expected = tree
    other = tmp_path / "other" / "carol"
    other.mkdir(parents=True)
    (other / "broken.wav").write_bytes(b"not audio at all" * 10)
    manifests = tmp_path / "manifests"
    scan_to_manifest([root], manifests / "corpus.parquet", progress=False)
    scan_to_manifest([tmp_path / "other"], manifests / "other.parquet", progress=False)
    first = (manifests / "corpus.rejects.jsonl").read_text().splitlines()
    second = (manifests / "other.rejects.jsonl").read_text().splitlines()
    assert len(first) == sum(r is not None for r in expected.values())
    assert [Path(json.loads(line)["path"]).name for line in second] == ["broken.wav"]
    assert not (manifests / "rejects.jsonl").exists()


# ---------------------------------------------------------------------------------------------- RIRs
def test_rir_scan_measures_rt60_drr_and_c50(tmp_path):
    from datasets.banks import rir_metrics

    rng = np.random.default_rng(0)
    n = SR  # 1 s
    expected = {}
    for rt60 in (0.3, 0.6):
        t = np.arange(n) / SR
        rir = rng.standard_normal(n) * 10 ** (-3 * t / rt60)  # energy falls 60 dB in rt60 seconds
        rir[:100] = 0.0
        rir[100] = 8.0  # the direct path
        rir = (0.9 * rir / np.abs(rir).max()).astype(np.float32)
        path = tmp_path / "rooms" / "hall" / f"rt{rt60}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(
            path, np.stack([rir, 0.5 * rir], axis=1), SR, subtype="FLOAT"
        )  # 2 channels: the first counts
        expected[path.name] = (rt60, rir_metrics(rir, SR))
    out = tmp_path / "rirs.parquet"
    scan_to_manifest([tmp_path / "rooms"], out, kind="rir", progress=False)
    df = read_manifest(out, kind="rir")
    assert len(df) == 2
    for row in df.to_dict("records"):
        rt60, metrics = expected[Path(row["path"]).name]
        assert row["rt60"] == pytest.approx(rt60, rel=0.1)
        for key in ("rt60", "drr", "c50"):
            assert row[key] == pytest.approx(metrics[key], rel=1e-6), key


def test_speech_scan_leaves_rir_columns_out(tree, tmp_path):
    root, _ = tree
    scan_to_manifest([root], tmp_path / "m.parquet", progress=False)
    assert "rt60" not in read_manifest(tmp_path / "m.parquet").columns


# ---------------------------------------------------------------------------------------------- config file
@pytest.mark.parametrize(
    ("text", "problem"),
    [("scna:\n  workers: 2\n", "scna: unknown key"), ("scan: {}\nsplit: [1, 0, 0]\n", "split: unknown key")],
)
def test_unknown_top_level_key_or_misspelled_section_is_an_error(tmp_path, text, problem):
    cfg = tmp_path / "corpus.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=problem) as e:
        load_scan_config(cfg)
    assert str(cfg) in str(e.value)


def test_a_bad_override_names_its_flag_not_the_file(tmp_path):
    from datasets.config import CONFIG_ROOT

    with pytest.raises(ConfigError) as e:
        load_scan_config(CONFIG_ROOT / "corpus.yaml", {"workers": 1000}, {"workers": "--workers 1000"})
    assert str(e.value).startswith("--workers 1000: scan.workers:") and "corpus.yaml" not in str(e.value)
    assert load_scan_config(CONFIG_ROOT / "corpus.yaml", {"vctk_mic": "both"}).vctk_mic == "both"
