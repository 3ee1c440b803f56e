"""The plan job (executor sweep + decay window) on the simulator, coserve_best reading its plan,
and heterogeneous GPU + CPU executors on the paper's NUMA profile."""

from __future__ import annotations

import json

import pytest
import yaml

from coserve_jax.api import run_experiment
from coserve_jax.config import ConfigError, compose
from coserve_jax.engine.sim import SimBackend
from coserve_jax.jobs import run_job
from coserve_jax.config import PlannerConfig as PlannerSettings
from coserve_jax.jobs.plan import plan_output_path

PAPER_SIM = ["model=pcb_paper_a", "hardware=numa_3080ti", "backend=sim", "workload.interval_ms=4"]


@pytest.fixture(scope="module")
def plan_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    out = root / "run"
    cfg = compose(["+experiment=plan", *PAPER_SIM, "planner.sample_requests=300",
                   "planner.candidates=[2G+1C,3G+1C,4G+1C]", f"planner.output={root}/plans/best.yaml"])
    results = run_job(cfg, out)
    return root, out, results


def test_plan_job_writes_plan_tables_plots_and_results(plan_run):
    root, out, results = plan_run
    for name in ("plan.yaml", "results.json", "executor_sweep.png", "decay_window.png", "executor_sweep.md",
                 "executor_sweep.csv", "decay_window.md", "decay_window.csv", "decay_window.json"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk) >= {"plan", "decay_window", "executor_sweep"}
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan["executors"] == search_executors(results["executor_sweep"]["chosen"])
    assert 0 < plan["expert_fraction"] < 1 and plan["n_experts"] >= 1
    assert plan["provenance"]["sample_requests"] == 300
    assert (root / "plans" / "best.yaml").read_text() == (out / "plan.yaml").read_text()
    # the pick is within 5% of the best configuration the planner measured
    assert results["plan"]["pick_vs_best"] >= 0.95
    dw = results["decay_window"]
    assert dw["final_window"][0] <= dw["chosen"] <= dw["final_window"][1]
    assert [c["name"] for c in results["executor_sweep"]["candidates"]] == ["2G+1C", "3G+1C", "4G+1C"]


def search_executors(name):
    from coserve_jax.config import parse_executors

    return parse_executors(name)


def test_coserve_best_reads_the_plan(plan_run, tmp_path):
    root, out, _ = plan_run
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    res = run_experiment([*PAPER_SIM, "arms=[coserve_casual,coserve_best]", "workload.num_requests=200",
                          f"planner.output={root}/plans/best.yaml"], tmp_path / "cmp", progress=False)
    best = res["arms"]["coserve_best"]
    kinds = {}
    for ex in best["executors"]:
        kinds[ex["kind"]] = kinds.get(ex["kind"], 0) + 1
    assert kinds == plan["executors"]
    assert best["requests"]["completed"] == 200


def test_coserve_best_without_a_plan_says_run_plan_first(tmp_path):
    with pytest.raises(ConfigError, match="plan"):
        run_experiment([*PAPER_SIM, "arms=[coserve_best]", "workload.num_requests=20",
                        f"planner.output={tmp_path}/missing.yaml"], tmp_path / "x", progress=False)


def test_planner_settings_are_validated_with_field_names():
    with pytest.raises(ConfigError, match="planner.w0"):
        PlannerSettings.from_mapping({"w0": 0})
    with pytest.raises(ConfigError, match="planner.candidates"):
        PlannerSettings.from_mapping({"candidates": ["3X"]})
    with pytest.raises(ConfigError, match="planner: unknown key"):
        PlannerSettings.from_mapping({"w_0": 15})
    with pytest.raises(ConfigError, match="planner.arm"):
        run_job(compose(["+experiment=plan", *PAPER_SIM, "planner.arm=coserve_plus"]), "/tmp/never")
    assert plan_output_path("~/p.yaml").is_absolute()
    assert plan_output_path(None) is None


def test_default_plan_output_is_absolute_and_per_model_hardware_backend(monkeypatch):
    monkeypatch.delenv("COSERVE_JAX_CACHE", raising=False)
    cfg = compose(PAPER_SIM)
    assert cfg.planner.output.startswith("/")
    assert cfg.planner.output.endswith("plans/pcb_paper_a-numa_3080ti-sim.yaml")
    assert cfg.arm_catalog.coserve_best.plan == cfg.planner.output


def test_heterogeneous_executors_use_the_cpu_figures(tmp_path, monkeypatch):
    """3G+1C on the paper's NUMA profile: the CPU executor gets batches, priced by CPU figures."""
    seen = []
    original = SimBackend.start_batch

    def spy(self, batch, executor, inputs):
        seen.append((executor.kind, batch))
        return original(self, batch, executor, inputs)

    monkeypatch.setattr(SimBackend, "start_batch", spy)
    from coserve_jax.api import ArmRunner, as_run_config, load_cost_model, load_model, make_trace

    cfg, _ = as_run_config([*PAPER_SIM, "arms=[coserve]", "workload.num_requests=600",
                            "hardware.executors={gpu: 3, cpu: 1}"])
    model = load_model(cfg, progress=False)
    cost = load_cost_model(cfg, model)
    summary, _ = ArmRunner(cfg, model, cost).run_arm(cfg.arms[0], make_trace(cfg, model.graph), None, progress=False)
    assert summary["requests"]["completed"] == 600
    cpu = [b for k, b in seen if k == "cpu"]
    gpu = [b for k, b in seen if k == "gpu"]
    assert cpu and gpu, "the LatencyAware scheduler should give the CPU executor some work"
    cpu_id = next(ex["id"] for ex in summary["executors"] if ex["kind"] == "cpu")
    for b in cpu:
        arch = model.graph.experts[b.expert_id].arch
        assert b.executor_id == cpu_id
        assert b.predicted_s == pytest.approx(cost.batch_latency_s("cpu", arch, len(b.tasks)) + cost.dispatch_s)
        assert b.predicted_s > cost.batch_latency_s("gpu", arch, len(b.tasks))  # the CPU is the slow processor


@pytest.mark.parametrize("overrides, field", [
    (["hardware.cpu_devices=2"], "hardware.cpu_devices"),
    (["hardware.device_budgets={0:30%}"], "hardware.cpu_devices"),
    (["hardware.gpu_devices=[0,1]"], "hardware.cpu_devices"),
])
def test_the_planner_plans_one_device(overrides, field):
    """The planner's memory arithmetic is one device's split (engine/devices.py spreads executors
    over several): several devices are a config error naming the field."""
    from coserve_jax.coe.paper import build_paper_graph
    from coserve_jax.config import parse_config
    from coserve_jax.profiler.layout import kind_shares

    cfg = parse_config(compose([*PAPER_SIM, *overrides]))
    total = build_paper_graph("a").total_bytes
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        kind_shares(cfg, total, {"gpu": 3, "cpu": 1})
    one = parse_config(compose(PAPER_SIM))
    assert kind_shares(one, total, {"gpu": 2, "cpu": 1})["gpu"] == kind_shares(one, total, {"gpu": 1})["gpu"] // 2


def test_planner_repeats_are_validated():
    assert PlannerSettings.from_mapping({"repeats": 5}).repeats == 5
    with pytest.raises(ConfigError, match="planner.repeats"):
        PlannerSettings.from_mapping({"repeats": 0})


def test_sweep_table_marks_fallback_splits_and_infeasible_counts():
    from coserve_jax.report.plan_tables import sweep_table

    sweep = {"candidates": [{"name": "1C", "throughput_rps": 10.0, "expert_fraction": None},
                            {"name": "2C", "throughput_rps": 8.0, "expert_fraction": 0.7, "fallback_fraction": True},
                            {"name": "3C", "throughput_rps": 0.0, "expert_fraction": None, "fallback_fraction": False,
                             "infeasible": True}],
             "chosen": "1C", "best_rps": 10.0, "expert_fraction": None, "repeats": 3}
    t = sweep_table(sweep)
    assert [r[1] for r in t.rows] == ["reserve best batch", "0.700 *", "infeasible"]
    assert t.records[2]["infeasible"] and t.records[1]["fallback_fraction"] and t.records[0]["chosen"]
    assert any("median of 3" in n for n in t.notes) and any(n.startswith("*") for n in t.notes)


@pytest.mark.slow
def test_plan_job_on_the_real_backend_tiny_zoo(tmp_path, monkeypatch):
    """The planner on the real engine: repeats, a plan coserve_best can read, tables and plots."""
    monkeypatch.setenv("COSERVE_JAX_CACHE", str(tmp_path / "cache"))
    cfg = compose(["+experiment=plan", "model=pcb_tiny", "hardware=cpu", "backend=real", "hardware.device_budget=100%",
                   "planner.sample_requests=60", "planner.repeats=2", "planner.candidates=[1C,2C]",
                   "profiler.repeats=2", f"planner.output={tmp_path}/plans/best.yaml"])
    res = run_job(cfg, tmp_path / "run")
    assert res["plan"]["pick_vs_best"] >= 0.95
    ok = [m for m in res["measurements"] if "error" not in m]
    assert ok and all(len(m["samples_rps"]) == 2 for m in ok)
    assert (tmp_path / "plans" / "best.yaml").is_file()
    for name in ("executor_sweep.png", "decay_window.png", "executor_sweep.md", "decay_window.md"):
        assert (tmp_path / "run" / name).is_file(), name
