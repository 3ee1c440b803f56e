"""The real and the simulated backend drive the same loop and policies to the same decisions.

With a fake cost model (round figures, not this machine's), one executor, all requests arriving
at once and ground-truth routing, event order cannot depend on timing, so the sequence of
policy decisions (assign, arrange, load, evict, batch) must be identical between backends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coserve_jax.api import ArmRunner, load_model, make_trace
from coserve_jax.config import compose, parse_config
from coserve_jax.cost.model import SCHEMA, CostModel


def fake_cost(archs: list[str]) -> CostModel:
    arch = {"k_s": 0.001, "b_s": 0.002, "max_batch": 4, "activation_bytes": {"1": 5_000, "4": 20_000}}
    fit = {"a_s": 0.01, "b_s_per_byte": 1e-9}
    return CostModel({"schema": SCHEMA, "kinds": {"cpu": {"archs": {a: dict(arch) for a in archs},
                                                          "loads": {"disk": fit, "host": fit}}},
                      "host_cache_loads": {"disk": fit}})


@pytest.mark.parametrize("arm", ["samba", "coserve", "coserve_plus"])
def test_same_decisions_real_and_sim(arm):
    decisions = {}
    for backend in ("sim", "real"):
        cfg = parse_config(compose([
            "model=pcb_tiny", f"backend={backend}", "backend.routing=trace", f"arms=[{arm}]",
            "workload.num_requests=60", "workload.interval_ms=0", "hardware.device_budget=40%",
            "hardware.executors.cpu=1", "arm_catalog.coserve_plus.prefetcher=null",
        ]))
        model = load_model(cfg, progress=False)
        cost = fake_cost(sorted(model.zoo.archs))
        runner = ArmRunner(cfg, model, cost)
        reqs = make_trace(cfg, model.graph)
        runner.warm_up(cfg.arms)
        engine = runner.new_engine(cfg.arms[0], reqs)
        engine.record_decisions = True
        try:
            summary = engine.run(reqs, runner.images(reqs))
        finally:
            engine.backend.close()
        assert summary["requests"]["completed"] == 60
        decisions[backend] = engine.decisions
    assert len(decisions["sim"]) > 60
    assert decisions["real"] == decisions["sim"]


def test_validate_sim_tabulates_saved_runs(tmp_path, script):
    """scripts/validate_sim.py --from-runs: real switches are the median over the real runs."""
    vs = script("validate_sim")

    def arm(rps, sw, reps=None):
        a = {"throughput_rps": rps, "switches": {"count": sw}}
        if reps:
            a["repeats"] = {"throughput_rps": [r for r, _ in reps], "switches": [s for _, s in reps]}
        return a

    runs = tmp_path / "runs"
    for side, arms in {"real": {"coserve": arm(100.0, 70, [(90.0, 80), (100.0, 70), (110.0, 84)])},
                       "sim": {"coserve": arm(110.0, 88)}}.items():
        (runs / "seed3" / side).mkdir(parents=True)
        (runs / "seed3" / side / "results.json").write_text(json.dumps({"arms": arms}))
    assert vs.main(["--from-runs", "--runs", str(runs), "--seeds", "3", "--arms", "coserve",
                    "--out", str(tmp_path / "out")]) == 0
    (row,) = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert row["real_switches"] == 80 and row["real_switches_of_median_run"] == 70
    assert row["switch_error"] == pytest.approx(0.10) and row["rps_error"] == pytest.approx(0.10)
    assert (tmp_path / "out" / "validation.png").is_file()
    assert "| 3 | coserve | 100.0 (90–110, 3 runs) |" in (tmp_path / "out" / "validation.md").read_text()


def test_validate_sim_takes_the_median_over_blocks(tmp_path, script):
    """--blocks: real figures pool every block's runs; simulated ones are the median over the
    blocks' profiles."""
    vs = script("validate_sim")
    blocks = [({"throughput_rps": 100.0, "switches": {"count": 60},
                "repeats": {"throughput_rps": [100.0, 130.0], "switches": [60, 50]}},
               {"throughput_rps": 90.0, "switches": {"count": 70}}),
              ({"throughput_rps": 80.0, "switches": {"count": 90}}, {"throughput_rps": 120.0, "switches": {"count": 64}}),
              ({"throughput_rps": 125.0, "switches": {"count": 40}}, {"throughput_rps": 132.0, "switches": {"count": 55}})]
    runs = tmp_path / "runs"
    for b, (real, sim) in enumerate(blocks):
        for side, arm in (("real", real), ("sim", sim)):
            (runs / "seed0" / f"{side}{b}").mkdir(parents=True)
            (runs / "seed0" / f"{side}{b}" / "results.json").write_text(json.dumps({"arms": {"coserve": arm}}))
    assert vs.main(["--from-runs", "--runs", str(runs), "--arms", "coserve", "--out", str(tmp_path / "out")]) == 0
    (row,) = json.loads((tmp_path / "out" / "validation.json").read_text())
    # Real runs 80, 100, 125, 130: the median run is 100 (60 switches); switches median of 90, 60, 40, 50.
    assert row["real_runs"] == 4 and row["real_rps"] == 100.0 and row["real_switches_of_median_run"] == 60
    assert row["real_switches"] == 55 and (row["real_rps_min"], row["real_rps_max"]) == (80.0, 130.0)
    assert row["profiles"] == 3 and row["sim_rps"] == 120.0 and row["sim_switches"] == 64
    assert row["rps_error"] == pytest.approx(0.20)
    # Paired: 90 vs 115 (block 0's runs), 120 vs 80, 132 vs 125: the median block is +5.6%
    assert row["rps_error_per_block"] == pytest.approx([90 / 115 - 1, 0.5, 132 / 125 - 1])
    assert row["rps_error_paired"] == pytest.approx(132 / 125 - 1)
    assert "sim, median over profiles" in (tmp_path / "out" / "validation.md").read_text()


def test_validate_sim_rejects_more_blocks_than_runs(tmp_path, script):
    vs = script("validate_sim")
    with pytest.raises(SystemExit):
        vs.main(["--blocks", "4", "--repeats", "3", "--out", str(tmp_path / "out")])


def test_validate_sim_runs_three_real_runs_per_block_by_default(tmp_path, script, monkeypatch):
    """--blocks 6 without --repeats: 6 real runs of 3 repeats each, every one after a fresh profile,
    and each block's profile pinned for its simulation."""
    import coserve_jax.api

    vs = script("validate_sim")
    calls = []

    def fake_run(overrides, run_dir):
        calls.append((list(overrides), Path(run_dir)))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        arm = {"throughput_rps": 100.0, "switches": {"count": 50}}
        (Path(run_dir) / "results.json").write_text(json.dumps({"arms": {"coserve": arm}}))

    monkeypatch.setattr(coserve_jax.api, "run_experiment", fake_run)
    assert vs.main(["--fresh-profile", "--blocks", "6", "--arms", "coserve", "--runs", str(tmp_path / "runs"),
                    "--out", str(tmp_path / "out")]) == 0
    real = [o for o, _ in calls if "backend=real" in o]
    sim = [(o, d) for o, d in calls if "backend=sim" in o]
    assert len(real) == len(sim) == 6
    assert all("repeats=3" in o and "profiler.refresh=true" in o for o in real)
    for b, (o, d) in enumerate(sim):
        assert d.name == f"sim{b}"
        assert f"hardware.profile={(d.parent / f'real{b}' / 'profile.json').resolve()}" in o
    (row,) = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert row["profiles"] == 6
