"""Small builders shared by tests: hand-made CoE graphs and sim engines (no JAX)."""

from __future__ import annotations

from coserve_jax.coe.graph import CoEGraph, ComponentType
from coserve_jax.coe.synthetic import synthetic_cost
from coserve_jax.engine.loop import EngineLoop
from coserve_jax.engine.sim import SimBackend
from coserve_jax.engine.state import ExecutorState
from coserve_jax.policies.eviction import LRU
from coserve_jax.store.pool import Pool
from coserve_jax.types import ExpertInfo, Request, Role

MB = 1_000_000


def graph_of(mix: dict[str, float], detectors: dict[str, str] | None = None,
             sizes: dict[str, int] | None = None, p_damaged: float = 0.0) -> CoEGraph:
    """Types t -> classifier f"cls_{t}"; detectors maps type -> detector id."""
    detectors = detectors or {}
    sizes = sizes or {}
    experts = [ExpertInfo(f"cls_{t}", Role.PRELIMINARY, "cls", sizes.get(f"cls_{t}", 4 * MB), (32, 32, 3))
               for t in mix]
    for d in sorted(set(detectors.values())):
        experts.append(ExpertInfo(d, Role.SUBSEQUENT, "det", sizes.get(d, 8 * MB), (32, 32, 3)))
    comps = [ComponentType(t, f"cls_{t}", detectors.get(t), m, p_damaged) for t, m in mix.items()]
    return CoEGraph(experts, comps)


def sim_engine(graph: CoEGraph, scheduler, eviction, *, pool_bytes: list[int], initialiser=None,
               prefetcher=None, max_batch: int = 16, cost=None, routing: str = "trace") -> EngineLoop:
    backend = SimBackend(1)
    cost = cost or synthetic_cost(max_batch=max_batch)
    archs = {e.arch for e in graph.experts.values()}
    executors = [ExecutorState(i, "cpu", 0, Pool(f"ex{i}:cpu", "cpu", b), {a: max_batch for a in archs},
                               backend.now) for i, b in enumerate(pool_bytes)]
    eng = EngineLoop(graph=graph, cost=cost, executors=executors, host_cache=None, scheduler=scheduler,
                 eviction=eviction, host_eviction=LRU(), initialiser=initialiser, prefetcher=prefetcher,
                 backend=backend, routing=routing, check_invariants=True)
    eng.record_decisions = True
    return eng


def requests_of(types: list[str], graph: CoEGraph, interval_s: float = 0.0) -> list[Request]:
    return [Request(i, t, i * interval_s, graph.truth_route(t, "ok"), "ok") for i, t in enumerate(types)]


def make_resident(pool: Pool, *experts_sizes: tuple[str, int]) -> None:
    for e, size in experts_sizes:
        pool.begin_load(e, size)
        pool.finish_load(e)
