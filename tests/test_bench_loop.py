"""scripts/bench_loop.py: the steady micro benchmark and the per-part breakdown run and clean up."""

from coserve_jax.engine.loads import LoadSide
from coserve_jax.engine.loop import EngineLoop
from coserve_jax.policies.scheduling import LatencyAware, _Ordering


def test_steady_micro_times_assign(capsys, script):
    assert script("bench_loop").main(["--micro", "--steady", "--rounds", "1"]) == 0
    assert "LatencyAware.assign, queues near 20 tasks:" in capsys.readouterr().out


def test_breakdown_counts_every_part_and_unwraps_them(capsys, script):
    before = (LatencyAware.__dict__["assign"], _Ordering.__dict__["arrange"], EngineLoop.__dict__["_arrive"])
    assert script("bench_loop").main(["+experiment=task_a1", "workload.num_requests=200", "--breakdown",
                                      "--arms", "coserve_plus"]) == 0
    out = capsys.readouterr().out
    assert "### coserve_plus (sim)" in out
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in out.splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| part")}
    assert rows["EngineLoop._arrive"] == "1.00"  # one per request
    assert float(rows["LatencyAware.assign"]) >= 1.0 and float(rows["_Ordering.arrange"]) >= 1.0
    assert before == (LatencyAware.__dict__["assign"], _Ordering.__dict__["arrange"], EngineLoop.__dict__["_arrive"])
    assert "_prefetch" not in EngineLoop.__dict__ and EngineLoop._prefetch is LoadSide._prefetch
