"""The wind step: drawn from wind files only, at its own rate and SNR, absent without wind, and old plans unchanged."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from datasets.config import ConfigError, load_config
from degradations import ChainConfig, plan, render, sample_rng

SR = 48000
CFG = ChainConfig()
WIND_IDS = {"wind_a", "wind_b"}


def _with(cfg: ChainConfig, section: str, **update) -> ChainConfig:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=update)})


def _ops(steps: list[dict]) -> list[str]:
    return [s["op"] for s in steps]


def test_wind_draws_only_wind_files(wind_banks):
    ctx = wind_banks.catalog()
    # a typed non-wind file too: the filter is on the type, not on "has a type"
    ctx = {
        **ctx,
        "noise": [*ctx["noise"], {"id": "hum", "frames": SR, "sample_rate": SR, "noise_type": "hum"}],
    }
    op = CFG.operator("wind")
    drawn = {op.sample(sample_rng(0, f"w{i}", "wind"), ctx)["noise_id"] for i in range(200)}
    assert drawn == WIND_IDS
    always = _with(CFG, "wind", probability=1.0)
    for i in range(50):
        steps = plan(f"p{i}", 1, always, ctx)
        wind = [s for s in steps if s["op"] == "wind"]
        assert len(wind) == 1 and wind[0]["params"]["noise_id"] in WIND_IDS
        lo, hi = CFG.wind.snr_db
        assert lo <= wind[0]["params"]["snr_db"] <= hi


def test_wind_probability_is_respected(wind_banks):
    ctx = wind_banks.catalog()
    n = 8000
    plans = [_ops(plan(f"u{i}", 3, CFG, ctx)) for i in range(n)]
    rate = np.mean(["wind" in ops for ops in plans])
    p = CFG.wind.probability
    assert abs(rate - p) < 4.5 * math.sqrt(p * (1 - p) / n), rate  # binomial, 4.5 sigma
    # wind sits right after the noise step when both run, and wherever the noise step would go otherwise
    for ops in plans:
        if "wind" in ops and "noise" in ops:
            assert ops.index("wind") == ops.index("noise") + 1
    never, always = _with(CFG, "wind", probability=0.0), _with(CFG, "wind", probability=1.0)
    for i in range(100):
        assert "wind" not in _ops(plan(f"q{i}", 0, never, ctx))
        assert "wind" in _ops(plan(f"q{i}", 0, always, ctx))


def test_wind_snr_is_achieved(wind_banks, speech_long):
    op = CFG.operator("wind")
    ctx = wind_banks.catalog()
    exact = 0
    for i in range(12):
        params = op.sample(sample_rng(5, f"s{i}", "wind"), ctx)
        report = op.process(speech_long, SR, params, wind_banks).report
        assert report["wind_id"] == params["noise_id"] and report["wind_type"] == "wind"
        assert report["wind_snr_db"] == params["snr_db"] and report["wind_sample_rate"] == SR
        if report["wind_peak_limited"]:  # the peak cap only lowers the wind
            assert report["wind_achieved_snr_db"] > params["snr_db"]
        else:
            assert report["wind_achieved_snr_db"] == pytest.approx(params["snr_db"], abs=0.01)
            exact += 1
    assert exact >= 6


def test_no_wind_without_wind_files(memory_banks, file_banks, speech_long):
    always = _with(CFG, "wind", probability=1.0)
    for banks in (memory_banks, file_banks):  # untyped files; typed "stationary" files
        ctx = banks.catalog()
        assert not always.operator("wind").available(ctx)
        for i in range(100):
            assert "wind" not in _ops(plan(f"n{i}", 0, always, ctx))
    report = render(speech_long, SR, plan("n1", 0, always, memory_banks.catalog()), memory_banks).report
    assert "wind" not in report["ops"]
    assert all(report[k] is None for k in report if k.startswith("wind_"))


def test_noise_step_never_draws_wind_when_excluded(wind_banks):
    ctx = wind_banks.catalog()
    noise = CFG.operator("noise")
    assert CFG.noise.exclude_types == ["wind"]
    drawn = {noise.sample(sample_rng(0, f"x{i}", "noise"), ctx)["noise_id"] for i in range(300)}
    assert drawn and not drawn & WIND_IDS
    # without the exclusion the same draws do reach the wind files
    anything = _with(CFG, "noise", exclude_types=[]).operator("noise")
    assert {anything.sample(sample_rng(0, f"x{i}", "noise"), ctx)["noise_id"] for i in range(300)} & WIND_IDS
    only_wind = {**ctx, "noise": [e for e in ctx["noise"] if e["id"] in WIND_IDS]}
    assert not noise.available(only_wind) and CFG.operator("wind").available(only_wind)


def test_noise_and_wind_both_reported(wind_banks, speech_long):
    cfg = _with(CFG, "wind", probability=1.0)
    ctx = wind_banks.catalog()
    seen = set()
    for i in range(40):
        steps = plan(f"b{i}", 2, cfg, ctx)
        if "noise" not in _ops(steps) or len(seen) == 2:
            continue
        params = {s["op"]: s["params"] for s in steps}
        after = params["noise"]["after_extras"]
        if after in seen:
            continue
        seen.add(after)
        assert params["wind"]["after_extras"] == after
        out = render(speech_long, SR, steps, wind_banks)
        assert out.report["ops"] == _ops(steps)
        assert out.report["noise_id"] == params["noise"]["noise_id"] not in WIND_IDS
        assert out.report["wind_id"] == params["wind"]["noise_id"] in WIND_IDS
        assert out.report["snr_db"] == params["noise"]["snr_db"]
        assert out.report["wind_snr_db"] == params["wind"]["snr_db"]
        assert out.report["wind_after_extras"] == after
        json.dumps(out.report, allow_nan=False)
    assert seen == {True, False}


# a plan made before the wind step existed (key "old20", seed 0, the memory banks), with the sha256 of its render
# (target then degraded float32 bytes) and of its report, both from the code before the wind step
OLD_PLAN = json.loads(
    '[{"op": "loudness", "params": {"target_lufs": -20.0}}, {"op": "reverb", "params": {"rir_id": "rir_c", '
    '"early_target": false, "early_ms": 50.0, "max_rir_s": 1.0}}, {"op": "packet_loss", "params": {"packet_ms": '
    '20.0, "loss_rate": 0.06259184437980136, "mean_burst": 2.4533777015855014, "max_burst": 9, "pattern_seed": '
    '2554727682549471398, "burst_model": "gilbert"}}, {"op": "mic", "params": {"high_shelf": {"freq_hz": '
    '11365.08890306387, "gain_db": -1.152962755834741, "q": 0.6230286438996584}, "peaks": [{"freq_hz": '
    '15468.672664004385, "gain_db": 1.678048868663124, "q": 5.0}, {"freq_hz": 21936.625740002914, "gain_db": '
    '-1.5213383295162064, "q": 5.0}, {"freq_hz": 17288.259742533923, "gain_db": -2.16943127783864, "q": 5.0}, '
    '{"freq_hz": 17172.24083253854, "gain_db": 4.110752149936786, "q": 5.0}]}}, {"op": "noise", "params": '
    '{"noise_id": "brown", "snr_db": 5.996953676458798, "offset_fraction": 0.40115428250675067, '
    '"reference_level_db": -26.0, "snr_definition": "auto", "after_extras": true}}, {"op": "peak", "params": '
    '{"max_peak": 0.99}}]'
)
OLD_AUDIO_SHA256 = "a6280e18c053952c122234b7f803a941cc483fa67e51e0d3a845796b1243c196"
OLD_REPORT_SHA256 = "d0027159e2640d0250a691a1a24dbf3f43ab97e4f0efd1d4a66b705d718340e8"


def test_old_plan_renders_byte_identically(memory_banks, wind_banks, speech):
    # the new draw comes after the old ones: the same key plans the same steps on a bank without wind, and the same
    # noise draw on a bank with wind (the noise step leaves the wind files out)
    assert plan("old20", 0, CFG, memory_banks.catalog()) == OLD_PLAN
    with_wind = {s["op"]: s["params"] for s in plan("old20", 0, CFG, wind_banks.catalog())}
    assert with_wind["noise"] == OLD_PLAN[4]["params"]
    out = render(speech, SR, OLD_PLAN, memory_banks)
    assert hashlib.sha256(out.target.tobytes() + out.degraded.tobytes()).hexdigest() == OLD_AUDIO_SHA256
    wind_keys = [k for k in out.report if k.startswith("wind_")]
    assert wind_keys and all(out.report[k] is None for k in wind_keys)  # absent: not applied
    old_report = {k: v for k, v in out.report.items() if k not in wind_keys}
    assert hashlib.sha256(json.dumps(old_report, sort_keys=True).encode()).hexdigest() == OLD_REPORT_SHA256


def test_wind_config_is_validated():
    with pytest.raises(ConfigError, match=r"wind\.snr_db"):
        load_config(ChainConfig, overrides={"wind.snr_db": [15.0, -10.0]})
    with pytest.raises(ConfigError, match=r"wind\.noise_types"):
        load_config(ChainConfig, overrides={"wind.noise_types": []})
    with pytest.raises(ConfigError, match=r"extras\.ops"):
        load_config(ChainConfig, overrides={"extras.ops": ["wind"]})
