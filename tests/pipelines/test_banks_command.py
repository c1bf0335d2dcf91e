"""``hires banks``: the generated banks hold what the flags ask for."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main


@pytest.mark.parametrize("minutes", ["0.5", "1.3"])
def test_noise_bank_holds_the_minutes_asked_for(tmp_path, capsys, minutes):
    from datasets.banks import NOISE_TYPES
    from datasets.manifest import read_manifest

    out = tmp_path / "noise"
    assert main(["-q", "banks", "noise", "--out", str(out), "--minutes", minutes]) == 0
    assert json.loads(capsys.readouterr().out)["minutes"] == float(minutes)
    df = read_manifest(out / "manifest.parquet", kind="noise")
    assert df.duration_s.sum() == pytest.approx(float(minutes) * 60, abs=0.01)
    assert df.noise_type.nunique() == len(NOISE_TYPES)  # every type, shorter clips
