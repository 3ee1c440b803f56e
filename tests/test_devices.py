"""Executors on every device: spread, per-device budgets and pools, what the policies see (no JAX).

The real engine over several XLA host devices is tests/test_devices_real.py.
"""

from __future__ import annotations

import pytest

from coserve_jax.coe.synthetic import synthetic_cost, synthetic_graph
from coserve_jax.config import BudgetError, ConfigError, compose, parse_config
from coserve_jax.engine.build import build_engine, plan_executors
from coserve_jax.engine.sim import SimBackend
from coserve_jax.policies.scheduling import LatencyAware
from coserve_jax.types import Task
from coserve_jax.workload.trace import generate_trace
from tests.helpers import make_resident

GRAPH = synthetic_graph()  # 12 classifiers of 4 MB, 3 detectors of 8 MB: 72 MB


def cfg_of(*overrides: str):
    return parse_config(compose(["backend=sim", "workload.num_requests=200", *overrides]))


def arm(cfg, name: str):
    return next(a for a in cfg.arms if a.name == name)


def test_cpu_executors_spread_over_host_devices_each_with_its_own_budget():
    cfg = cfg_of("hardware.cpu_devices=4", "hardware.executors={cpu:4}", "hardware.device_budget=30%")
    plans = plan_executors(cfg, arm(cfg, "coserve"), GRAPH, synthetic_cost())
    assert [p.device_index for p in plans] == [0, 1, 2, 3]
    assert {p.budget_bytes for p in plans} == {int(0.3 * GRAPH.total_bytes)}  # per device, not split
    # Two executors per device split that device's budget.
    cfg2 = cfg_of("hardware.cpu_devices=2", "hardware.executors={cpu:4}", "hardware.device_budget=60%")
    plans2 = plan_executors(cfg2, arm(cfg2, "coserve"), GRAPH, synthetic_cost())
    assert [p.device_index for p in plans2] == [0, 1, 0, 1]
    assert {p.budget_bytes for p in plans2} == {int(0.6 * GRAPH.total_bytes) // 2}


def test_the_default_cpu_hardware_is_one_device_as_before():
    """hardware=cpu: one host device holding device_budget, split by its two executors."""
    cfg = cfg_of("hardware.device_budget=40%")
    plans = plan_executors(cfg, arm(cfg, "coserve"), GRAPH, synthetic_cost())
    assert [p.device_index for p in plans] == [0, 0]
    assert {p.budget_bytes for p in plans} == {int(0.4 * GRAPH.total_bytes) // 2}


def test_shared_pools_are_one_per_device():
    cfg = cfg_of("arms=[coserve_plus]", "hardware.cpu_devices=2", "hardware.executors={cpu:4}",
                 "hardware.device_budget=40%")
    eng = build_engine(cfg, cfg.arms[0], GRAPH, synthetic_cost(), SimBackend(2), "trace")
    pools = {ex.executor_id: ex.pool for ex in eng.executors}
    assert pools[0] is pools[2] and pools[1] is pools[3] and pools[0] is not pools[1]
    assert [(p.pool_id, p.device_index) for p in eng.pools()] == [("dev0:cpu", 0), ("dev1:cpu", 1)]
    assert all(p.budget_bytes == int(0.4 * GRAPH.total_bytes) // 2 * 2 for p in eng.pools())
    s = eng.run(generate_trace(GRAPH, cfg.workload))
    assert s["requests"]["completed"] == 200
    layout = {p["id"]: p for p in s["pools"]}
    assert layout["dev0:cpu"]["device"] == "cpu:0" and layout["dev0:cpu"]["executors"] == [0, 2]
    assert layout["dev1:cpu"]["device"] == "cpu:1" and layout["dev1:cpu"]["executors"] == [1, 3]


def test_per_device_budgets_override_the_default():
    total = GRAPH.total_bytes
    for value in ("{0:40%,1:60%}", "[40%,60%]"):
        cfg = cfg_of("hardware.cpu_devices=3", "hardware.executors={cpu:3}", "hardware.device_budget=30%",
                     f"hardware.device_budgets={value}")
        plans = plan_executors(cfg, arm(cfg, "coserve"), GRAPH, synthetic_cost())
        assert [(p.device_index, p.budget_bytes) for p in plans] == [
            (0, int(0.4 * total)), (1, int(0.6 * total)), (2, int(0.3 * total))]
        assert [p.budget_field for p in plans] == [
            "hardware.device_budgets.0", "hardware.device_budgets.1", "hardware.device_budget"]


def test_a_device_budget_too_small_names_its_device():
    cfg = cfg_of("hardware.cpu_devices=2", "hardware.executors={cpu:2}", "hardware.device_budget=40%",
                 "hardware.device_budgets={1:5%}")
    with pytest.raises(BudgetError, match=r"hardware\.device_budgets\.1: each cpu executor on device 1 gets"):
        plan_executors(cfg, arm(cfg, "coserve"), GRAPH, synthetic_cost())
    cfg = cfg_of("arms=[coserve_plus]", "hardware.cpu_devices=2", "hardware.executors={cpu:2}",
                 "hardware.device_budget=40%", "hardware.device_budgets={1:5%}")
    with pytest.raises(BudgetError, match=r"hardware\.device_budgets\.1: the cpu pool shared by 1 executor\(s\) on device 1"):
        plan_executors(cfg, cfg.arms[0], GRAPH, synthetic_cost())


@pytest.mark.parametrize("override, field", [
    ("hardware.device_budgets={2:40%}", "hardware.device_budgets.2"),  # no such device in use
    ("hardware.device_budgets={0:lots}", "hardware.device_budgets.0"),
    ("hardware.device_budgets={x:40%}", "hardware.device_budgets.x"),
    ("hardware.device_budgets=40%", "hardware.device_budgets"),
    ("hardware.gpu_devices=[0,0]", "hardware.gpu_devices"),
    ("hardware.gpu_devices=[-1]", r"hardware.gpu_devices\[0\]"),
])
def test_bad_device_settings_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        cfg = cfg_of("hardware.cpu_devices=2", override)
        plan_executors(cfg, arm(cfg, "coserve"), GRAPH, synthetic_cost())


def test_gpu_executors_spread_over_the_listed_gpus():
    cost = synthetic_cost(kinds=("gpu", "cpu"))
    cfg = cfg_of("hardware=gpu", "hardware.executors={gpu:3,cpu:1}", "hardware.gpu_devices=[0,1]",
                 "hardware.device_budget=40%", "hardware.device_budgets={1:50%}", "hardware.cpu_pool_budget=20%")
    plans = plan_executors(cfg, arm(cfg, "coserve"), GRAPH, cost)
    total = GRAPH.total_bytes
    assert [(p.kind, p.device_index, p.budget_bytes) for p in plans] == [
        ("gpu", 0, int(0.4 * total) // 2), ("gpu", 1, int(0.5 * total)), ("gpu", 0, int(0.4 * total) // 2),
        ("cpu", 0, int(0.2 * total))]  # the CPU helper: hardware.cpu_pool_budget
    # The simulator, without gpu_devices: one GPU, as the paper's machines.
    cfg1 = cfg_of("hardware=gpu", "hardware.executors.cpu=0", "hardware.device_budget=60%")
    assert {p.device_index for p in plan_executors(cfg1, arm(cfg1, "coserve"), GRAPH, cost)} == {0}


def test_assigning_prefers_the_device_that_holds_the_expert():
    """With one pool per device, an executor sees its device's pool: the task goes where its expert is."""
    cfg = cfg_of("arms=[coserve_plus]", "hardware.cpu_devices=2", "hardware.executors={cpu:4}",
                 "hardware.device_budget=60%")
    eng = build_engine(cfg, cfg.arms[0], GRAPH, synthetic_cost(), SimBackend(2), "trace")
    dev1 = eng.executors[1].pool
    assert dev1.device_index == 1 and eng.executors[3].pool is dev1
    make_resident(dev1, ("cls_005", GRAPH.experts["cls_005"].param_bytes))
    eid = LatencyAware().assign(eng, Task(0, "cls_005", 0, 0.0))
    assert eng.executors[eid].device_index == 1
    # ... and with the expert on device 0 instead, device 0.
    dev0 = eng.executors[0].pool
    make_resident(dev0, ("cls_007", GRAPH.experts["cls_007"].param_bytes))
    assert eng.executors[LatencyAware().assign(eng, Task(1, "cls_007", 0, 0.0))].device_index == 0
