"""The chain: plan determinism and distribution, JSON round trip, render reproducibility, config."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets.config import ConfigError, load_config
from degradations import ChainConfig, plan, render, report_keys
from degradations.levels import integrated_loudness, peak

REPO = Path(__file__).resolve().parents[2]
CFG = ChainConfig()


def test_default_config_equals_shipped_yaml():
    assert load_config(ChainConfig, REPO / "configs/synth/default.yaml", section="chain") == ChainConfig()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"extras.count_probabilities": [0.5, 0.6]}, "extras.count_probabilities"),
        ({"extras.ops": ["bandwidth", "warp"]}, "extras.ops"),
        ({"extras.ops": ["noise"]}, "extras.ops"),
        ({"reverb.probability": 1.5}, "reverb.probability"),
        ({"noise.snr_db": [20, -5]}, "noise.snr_db"),
        ({"clipping.quantile": [0.5, 1.5]}, "clipping.quantile"),
        ({"bandwidth.families": ["fir"]}, "bandwidth.families"),
        ({"noise.snr": [0, 1]}, "noise.snr"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(ChainConfig, overrides=overrides)


def test_plan_is_deterministic_and_order_independent(memory_banks):
    ctx = memory_banks.catalog()
    keys = [f"utt{i}_{j:04d}" for i in range(20) for j in range(3)]
    forward = {k: plan(k, 7, CFG, ctx) for k in keys}
    backward = {k: plan(k, 7, CFG, ctx) for k in reversed(keys)}
    assert forward == backward
    assert plan(keys[0], 8, CFG, ctx) != forward[keys[0]]
    # plans that draw anything are all different (a near-clean sample is only loudness and peak)
    drawn = [p for p in forward.values() if len(p) > 2]
    assert len({json.dumps(p, sort_keys=True) for p in drawn}) == len(drawn) > len(keys) // 2


def test_plan_json_round_trip_is_lossless(memory_banks):
    ctx = memory_banks.catalog()
    for i in range(50):
        steps = plan(f"u{i}", 3, CFG, ctx)
        assert json.loads(json.dumps(steps)) == steps


def test_plan_structure_follows_the_recipe(memory_banks):
    ctx = memory_banks.catalog()
    n = 2000
    plans = [[s["op"] for s in plan(f"s{i}", 11, CFG, ctx)] for i in range(n)]
    fixed = ("loudness", "gain", "reverb", "noise", "peak")
    for ops in plans:
        assert ops[0] == "loudness" and ops[-1] == "peak"
        extras = [o for o in ops if o not in fixed]
        assert len(set(extras)) == len(extras) and set(extras) <= set(CFG.extras.ops)
    for op, p in (("reverb", 0.5), ("noise", CFG.noise.probability), ("gain", CFG.gain.probability)):
        assert np.mean([op in ops for ops in plans]) == pytest.approx(p, abs=0.04), op
    with_noise = [
        ops for ops in plans if "noise" in ops and len(ops) > 3 + ("gain" in ops) + ("reverb" in ops)
    ]
    after = np.mean([ops[-2] == "noise" for ops in with_noise])
    assert after == pytest.approx(CFG.noise.after_extras_probability, abs=0.05)
    counts = Counter(len([o for o in ops if o not in fixed]) for ops in plans)
    for k, p in enumerate(CFG.extras.count_probabilities):
        assert counts[k] / n == pytest.approx(p, abs=0.035), (k, counts)
    orders = Counter(tuple(o for o in ops if o in ("codec", "clipping")) for ops in plans)
    assert orders[("codec", "clipping")] > 10 and orders[("clipping", "codec")] > 10  # random order


def test_probability_semantics_are_pinned(memory_banks):
    ctx = memory_banks.catalog()
    never = CFG.model_copy(update={"reverb": CFG.reverb.model_copy(update={"probability": 0.0})})
    always = CFG.model_copy(update={"reverb": CFG.reverb.model_copy(update={"probability": 1.0})})
    for i in range(200):
        assert "reverb" not in [s["op"] for s in plan(f"p{i}", 0, never, ctx)]
        assert "reverb" in [s["op"] for s in plan(f"p{i}", 0, always, ctx)]


def test_changing_one_operator_does_not_move_another(memory_banks):
    ctx = memory_banks.catalog()
    other = CFG.model_copy(update={"reverb": CFG.reverb.model_copy(update={"max_rir_s": 0.5})})
    for i in range(30):
        a = {s["op"]: s["params"] for s in plan(f"q{i}", 0, CFG, ctx)}
        b = {s["op"]: s["params"] for s in plan(f"q{i}", 0, other, ctx)}
        assert a.get("noise") == b.get("noise")
        assert a.keys() == b.keys()


def test_missing_banks_skip_their_steps():
    for i in range(50):
        ops = [s["op"] for s in plan(f"m{i}", 0, CFG, {"sample_rate": 48000, "noise": [], "rir": []})]
        assert "reverb" not in ops and "noise" not in ops


def test_render_default_chain(speech_long, memory_banks, sr):
    ctx = memory_banks.catalog()
    for i in range(10):
        steps = plan(f"r{i}", 0, CFG, ctx)
        out = render(speech_long, sr, steps, memory_banks)
        assert out.target.shape == out.degraded.shape == speech_long.shape
        assert out.target.dtype == out.degraded.dtype == np.float32
        assert max(peak(out.target), peak(out.degraded)) <= 0.99
        assert set(report_keys()) <= set(out.report) and out.report["ops"] == [s["op"] for s in steps]
        json.dumps(out.report, allow_nan=False)
        gain_db = out.report["input_gain_db"] or 0.0
        expected_lufs = -20.0 + gain_db + 20 * np.log10(out.report["peak_scale"])
        assert integrated_loudness(out.target, sr) == pytest.approx(expected_lufs, abs=0.05)
        if out.report["snr_db"] is not None:
            assert out.report["achieved_snr_db"] == pytest.approx(out.report["snr_db"], abs=0.5)


def test_render_from_json_gives_identical_bytes(speech_long, memory_banks, sr):
    steps = plan("j_0001", 5, CFG, memory_banks.catalog())
    a = render(speech_long, sr, steps, memory_banks)
    b = render(speech_long, sr, json.loads(json.dumps(steps)), memory_banks)
    assert a.degraded.tobytes() == b.degraded.tobytes() and a.target.tobytes() == b.target.tobytes()


def test_render_rejects_bad_input(memory_banks, sr):
    with pytest.raises(ValueError, match="NaN or Inf"):
        render(np.array([0.0, np.nan], np.float32), sr, [], memory_banks)
    with pytest.raises(ValueError, match="'op' and 'params'"):
        render(np.zeros(10, np.float32), sr, [{"name": "peak"}], memory_banks)
    with pytest.raises(KeyError, match="unknown degradation 'warp'"):
        render(np.zeros(10, np.float32), sr, [{"op": "warp", "params": {}}], memory_banks)


RENDER_SCRIPT = """
import hashlib, json, sys
import numpy as np
from degradations import Banks, ChainConfig, plan, render
from degradations.synthetic import speech_like
banks = Banks.from_manifests(sys.argv[1], sys.argv[2], sr=48000)
clean = speech_like(5.12, 48000, seed=11)
digest = hashlib.sha256()
for i in range(int(sys.argv[3])):
    # every codec and every operator family, each on its own
    steps = plan(f"proc_{i:04d}", 1, ChainConfig(), banks.catalog())
    out = render(clean, 48000, steps, banks)
    digest.update(out.target.tobytes()); digest.update(out.degraded.tobytes())
    digest.update(json.dumps(out.report, sort_keys=True).encode())
print(digest.hexdigest())
"""


def test_render_in_two_processes_gives_identical_bytes(bank_files):
    cmd = [sys.executable, "-c", RENDER_SCRIPT, str(bank_files["noise"]), str(bank_files["rir"]), "24"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    env_threads = {**env, "OMP_NUM_THREADS": "2"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=REPO)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env_threads, check=True, cwd=REPO)
    assert first.stdout.strip() and first.stdout == second.stdout


FAST_OPS = ["bandwidth", "clipping", "packet_loss", "eq"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=24),
)
def test_planned_parameters_stay_in_configured_ranges(memory_banks, seed, key):
    steps = plan(key, seed, CFG, memory_banks.catalog())
    p = {s["op"]: s["params"] for s in steps}
    if "noise" in p:
        assert CFG.noise.snr_db[0] <= p["noise"]["snr_db"] <= CFG.noise.snr_db[1]
        assert 0.0 <= p["noise"]["offset_fraction"] < 1.0
    if "clipping" in p:
        assert CFG.clipping.quantile[0] <= p["clipping"]["quantile"] <= CFG.clipping.quantile[1]
    if "bandwidth" in p and p["bandwidth"]["mode"] == "lowpass":
        assert CFG.bandwidth.cutoff_hz[0] <= p["bandwidth"]["cutoff_hz"] <= CFG.bandwidth.cutoff_hz[1]
    if "bandwidth" in p and p["bandwidth"]["mode"] == "imaging":
        assert (
            CFG.bandwidth.imaging_rate_hz[0] <= p["bandwidth"]["rate_hz"] <= CFG.bandwidth.imaging_rate_hz[1]
        )
    if "bandwidth" in p and p["bandwidth"]["mode"] == "resample":
        assert p["bandwidth"]["rate_hz"] in CFG.bandwidth.rates_hz
        if p["bandwidth"]["family"] != "poly":
            assert CFG.bandwidth.order[0] <= p["bandwidth"]["order"] <= CFG.bandwidth.order[1]
    if "packet_loss" in p:
        assert CFG.packet_loss.loss_rate[0] <= p["packet_loss"]["loss_rate"] <= CFG.packet_loss.loss_rate[1]
    if "codec" in p:
        choice = {c.name: c for c in CFG.codec.codecs}[p["codec"]["codec"]]
        if choice.qualities:
            assert p["codec"]["quality"] in choice.qualities
        else:
            assert p["codec"]["bitrate_kbps"] in choice.bitrates_kbps
    if "eq" in p and p["eq"]["highpass"]:
        assert CFG.eq.highpass_hz[0] <= p["eq"]["highpass"]["freq_hz"] <= CFG.eq.highpass_hz[1]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    length=st.sampled_from([0, 1, 2, 7, 480, 959, 961, 4800, 20000]),
    scale=st.sampled_from([0.0, 1e-6, 0.1, 1.0, 30.0]),
)
def test_render_survives_edge_inputs(memory_banks, sr, seed, length, scale):
    rng = np.random.default_rng(seed)
    clean = (rng.standard_normal(length) * scale).astype(np.float32)
    cfg = CFG.model_copy(
        update={
            "extras": CFG.extras.model_copy(
                update={"count_probabilities": [0, 0, 0, 0.5, 0.5], "ops": [*FAST_OPS, "codec"]}
            )
        }
    )
    steps = plan(f"edge{seed}", seed, cfg, memory_banks.catalog())
    out = render(clean, sr, steps, memory_banks)
    assert out.target.shape == out.degraded.shape == (length,)
    assert np.isfinite(out.target).all() and np.isfinite(out.degraded).all()
    assert max(peak(out.target), peak(out.degraded)) <= 0.99
    json.dumps(out.report, allow_nan=False)
