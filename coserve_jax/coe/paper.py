"""Paper-scale PCB CoE graphs (boards A and B of the CoServe paper), for the simulator.

What is fixed by the paper (PAPER.md):
- Board A has 352 component types, board B 342 (Workloads). Each type has its own ResNet101
  classification expert with unique weights (Application and model).
- For some types a detection expert (YOLOv5m or YOLOv5l) runs when the classifier finds no
  damage; several types share one detection expert.
- "Over 300 experts, 13B parameters, 60 GB" (Application and model).
- Usage CDF (Fig. 11): the top 35 experts cover 0.602 of usage (task A).

What we choose, and why:
- 12 detection experts per board, 6 YOLOv5m + 6 YOLOv5l (``NUM_DETECTORS``). With fp32 weights
  (4 bytes per parameter) board A totals 64.35e9 bytes = 59.9 GiB, i.e. the paper's "60 GB"
  read as GiB; board B 62.57e9 bytes = 58.3 GiB. The paper's "13B parameters" cannot hold
  together with one unique ResNet101 per type: 352 x 44.55M is already 15.7B (and 13B fp32
  parameters would be 52 GB, not 60 GB), so we match the bytes and report 16.1B / 15.6B params.
- 30% of the types have a detection check (``DETECTION_SHARE``): the paper says only "some
  types" and gives no share; 30% makes each detector serve ~9 types ("several types share one")
  and a request ~1.29 tasks on average (DESIGN.md: a request is 1-2 tasks). The checked types
  are drawn stratified over popularity (3 in every 10 ranks) so that this average moves little
  between seeds; the hardware profiles' ``tasks_per_request`` assume it.
- p_damaged per type drawn uniformly from [1%, 5%] (``P_DAMAGED_RANGE``): the paper gives no
  rate; damage is rare on a production line (the CoE exists to catch it), and a small rate
  keeps the detection experts' usage close to their types' share of the mix.
- Component mix: Zipf over a seeded random ranking of the types, mix(rank r) ~ r^-s, with the
  exponent s solved by bisection so that ``CoEGraph.usage_cdf()[34]`` equals 0.602 (Fig. 11).
  The usage counted there includes the shared detection experts, exactly as CoEGraph does.

The tail (``tail_types``, config ``model.tail_types``):
- Fig. 11 fixes only the head of the usage CDF (top 35 = 0.602). ``tail_types=None`` spreads the
  other 0.398 over every remaining type (Zipf over all 352 / 342 ranks): a 2,500-image task then
  touches ~330-360 distinct experts. ``tail_types=K`` puts the mix on the 35 most common types
  plus K more, i.e. Zipf over the seeded ranks 0 .. 35+K-1 (the ranking is a seeded permutation,
  so those K types are a seeded subset of the rest); the exponent is solved again so that the
  top 35 experts still cover 0.602. The other types get mix 0: they stay in the CoE (experts,
  bytes, detector assignment unchanged) but no task contains them. Zero rather than a small
  floor because any floor large enough to matter in a task brings back exactly the first loads
  the option removes (a floor of 1e-4 per type puts ~55 more distinct experts in a 2,500-image
  task), and a floor too small for that changes nothing a simulation can see. With K types the
  mix has 35+K types and 47+K experts (12 detectors); below K ~ 14 no exponent puts only 0.602
  in the top 35 (``MIN_TAIL_TYPES`` is the hint; the solver decides per seed).
- K from the paper's figures (``derived_tail_types``): every expert a task touches is either
  preloaded or loaded at least once, so distinct experts D <= P + S, with P the experts preloaded
  and S CoServe Best's switches (Fig. 14). The same task runs on both machines and NUMA gives
  the tighter bound: S = 64 (A1) / 77 (A2) / 54 (B1) / 65 (B2); P = the GPU's N from Fig. 18
  (35 board A, 34 board B) + the CPU executor's pool, which the paper does not give: 17
  ResNet101s in our NUMA runs (conf/hardware/numa_3080ti.yaml, cpu_pool_budget 4 GiB). So
  D <= 116 / 129 (A1 / A2) and 105 / 116 (B1 / B2); with K <= ~150 every type in the mix gets
  several images in 2,500, so D = 47 + K, and the smaller task of each board gives
  K_A = 116 - 47 = 69, K_B = 105 - 47 = 58. These are upper bounds (the paper's switches also
  hold reloads and loads into a second executor's pool), i.e. the least concentrated mix the
  paper's counts allow; leaving out the CPU pool (P = Fig. 18's N only) gives K = 52 / 41.
  The UMA machine (~90 experts preloaded in our runs) bounds D only at ~150-175. The bound also
  suggests that Fig. 14 does not count the preloads: with the top 35 at 0.602 each tail expert
  has at most the 35th's usage (<= 0.602 / 35 of the total), so the tail needs >= 24 experts and
  a task touches D >= ~59 > 54 (B1, NUMA) — if Fig. 11's head holds for board B too.
  The paper models (conf/model/pcb_paper_*.yaml) default to K_A / K_B; ``model.tail_types=null``
  is the uniform tail.

Everything is seeded and deterministic: the same (board, seed) always gives the same graph.
No JAX here; ``checkpoint_path`` is None (the simulator needs metadata only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from coserve_jax.coe.graph import CoEGraph, ComponentType
from coserve_jax.types import ExpertInfo, Role

BYTES_PER_PARAM_FP32 = 4

# Architectures of the paper's experts. Parameter counts are the published ones (torchvision
# ResNet101; ultralytics YOLOv5 v6 README), weights fp32. Input shapes are NHWC without batch.
PAPER_ARCHS: dict[str, dict[str, Any]] = {
    "resnet101": {
        "params": 44_550_000,
        "param_bytes": 44_550_000 * BYTES_PER_PARAM_FP32,
        "input_shape": (224, 224, 3),
        "role": "classification",
        "source": "PAPER.md Application: one ResNet101 classification expert per type; "
        "'What the figures imply': 60 GB over >300 experts = 170-200 MB each = ResNet101 fp32",
    },
    "yolov5m": {
        "params": 21_200_000,
        "param_bytes": 21_200_000 * BYTES_PER_PARAM_FP32,
        "input_shape": (640, 640, 3),
        "role": "detection",
        "source": "PAPER.md Application: detection experts are YOLOv5m or YOLOv5l; Fig. 1 "
        "profiles both; 640x640 is YOLOv5's native input",
    },
    "yolov5l": {
        "params": 46_500_000,
        "param_bytes": 46_500_000 * BYTES_PER_PARAM_FP32,
        "input_shape": (640, 640, 3),
        "role": "detection",
        "source": "PAPER.md Application: detection experts are YOLOv5m or YOLOv5l; Fig. 1 "
        "profiles both; 640x640 is YOLOv5's native input",
    },
}

NUM_TYPES: dict[str, int] = {"a": 352, "b": 342}  # PAPER.md Workloads
# Generated boards (not in the paper): the same construction at a larger scale, for the cluster
# studies (experiments/cluster). g3000: 3,000 types; detectors scaled with the types (12 per
# 352 -> 100, half YOLOv5m, half YOLOv5l); Fig. 11's head kept in proportion (the top 10% of
# experts, 300, cover 0.602 of usage). Tail over every type (tail_types must be null).
GENERATED_BOARDS: dict[str, dict[str, Any]] = {
    "g3000": {"types": 3000, "detectors": {"yolov5m": 50, "yolov5l": 50}, "top_k": 300},
}
BOARDS = (*NUM_TYPES, *GENERATED_BOARDS)
NUM_DETECTORS: dict[str, int] = {"yolov5m": 6, "yolov5l": 6}  # see module docstring
DETECTION_SHARE = 0.30  # share of types with a detection check (module docstring)
P_DAMAGED_RANGE = (0.01, 0.05)  # per-type damage probability, uniform (module docstring)
TOP_K = 35  # Fig. 11: the top 35 experts ...
TOP_K_SHARE = 0.602  # ... cover 0.602 of usage (task A)
MIN_TAIL_TYPES = 14  # smaller tails cannot keep the top 35 at 0.602 (module docstring)

# Inputs of derived_tail_types (module docstring): the paper's NUMA figures per board.
FIG14_NUMA_BEST_SWITCHES: dict[str, tuple[int, ...]] = {"a": (64, 77), "b": (54, 65)}  # tasks x1, x2
FIG18_GPU_EXPERTS: dict[str, int] = {"a": 35, "b": 34}  # N chosen by the decay-window search
NUMA_CPU_POOL_EXPERTS = 17  # not in the paper: our NUMA CPU executor's preload (cpu_pool_budget 4 GiB)


def _top_k_share(usage: np.ndarray, k: int) -> float:
    p = np.sort(usage)[::-1]
    return float(p[:k].sum() / p.sum())


def _usage(mix: np.ndarray, p_damaged: np.ndarray, det_of: np.ndarray, n_det: int) -> np.ndarray:
    """Usage per expert (classifiers then detectors), the same rule as CoEGraph._usage_probs."""
    det_usage = np.zeros(n_det)
    has = det_of >= 0
    np.add.at(det_usage, det_of[has], mix[has] * (1.0 - p_damaged[has]))
    return np.concatenate([mix, det_usage])


def _zipf_mix(rank: np.ndarray, exponent: float, n_active: int | None = None) -> np.ndarray:
    """Zipf over the ranks below ``n_active`` (None: all); the other types get 0."""
    w = (rank + 1.0) ** -exponent
    if n_active is not None:
        w = np.where(rank < n_active, w, 0.0)
    return w / w.sum()


def _solve_exponent(
    rank: np.ndarray, p_damaged: np.ndarray, det_of: np.ndarray, n_det: int,
    k: int, share: float, n_active: int | None = None,
) -> float:
    """Zipf exponent whose usage CDF puts `share` of usage in the top k experts (bisection)."""

    def f(s: float) -> float:
        mix = _zipf_mix(rank, s, n_active)
        return _top_k_share(_usage(mix, p_damaged, det_of, n_det), k) - share

    lo, hi = 0.0, 4.0
    if f(lo) > 0 or f(hi) < 0:
        where = "" if n_active is None else f" of the {n_active} types in the mix"
        raise ValueError(
            f"no Zipf exponent in [{lo}, {hi}] puts {share} of usage in the top {k} experts{where}"
        )
    for _ in range(100):  # 2^-100 of the bracket: far below float resolution of the share
        mid = 0.5 * (lo + hi)
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _assign_detectors(
    rng: np.random.Generator, rank: np.ndarray, num_detectors: Mapping[str, int]
) -> np.ndarray:
    """Detector index per type (-1: no detection check), stratified over popularity.

    In every block of 10 consecutive popularity ranks, DETECTION_SHARE of the types (3) get a
    check, so the checked types' share of the mix, hence the tasks per image, varies little
    between seeds. Checked types, in rank order, go round-robin to the detectors, with the
    YOLOv5m and YOLOv5l detectors interleaved so both architectures get a similar share.
    """
    n_types = len(rank)
    by_rank = np.argsort(rank)  # type indices, most common first
    checked: list[int] = []
    for start in range(0, n_types, 10):
        block = by_rank[start:start + 10]
        k = round(DETECTION_SHARE * len(block))
        checked += sorted(rng.choice(block, size=k, replace=False).tolist(), key=lambda t: rank[t])
    offsets, order = {}, []
    base = 0
    for arch, n in num_detectors.items():
        offsets[arch] = base + rng.permutation(n)
        base += n
    for i in range(max(num_detectors.values())):  # interleave: m, l, m, l, ...
        order += [int(offsets[a][i]) for a in num_detectors if i < num_detectors[a]]
    det_of = np.full(n_types, -1)
    for j, t in enumerate(checked):
        det_of[t] = order[j % len(order)]
    return det_of


def paper_shaped_mix(rng: np.random.Generator, n_types: int, num_detectors: Mapping[str, int], top_k: int,
                     top_share: float, n_active: int | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The paper's CoE shape for ``n_types`` types: a seeded popularity ranking, per-type damage
    rates, detectors assigned stratified over popularity (``_assign_detectors``) and a Zipf mix
    whose top ``top_k`` experts cover ``top_share`` of usage. Returns (p_damaged, det_of (-1: no
    detector), mix, usage of classifiers then detectors). ``build_paper_graph`` and the synthetic
    paper-size zoo (``coe/synth.py``) both draw their graphs with it."""
    rank = rng.permutation(n_types)  # rank[i]: popularity rank of type i (0 = most common)
    p_damaged = rng.uniform(*P_DAMAGED_RANGE, size=n_types)
    det_of = _assign_detectors(rng, rank, num_detectors)
    n_det = sum(num_detectors.values())
    exponent = _solve_exponent(rank, p_damaged, det_of, n_det, top_k, top_share, n_active)
    mix = _zipf_mix(rank, exponent, n_active)
    return p_damaged, det_of, mix, _usage(mix, p_damaged, det_of, n_det)


def derived_tail_types(board: str, with_cpu_pool: bool = True) -> int:
    """K from the paper's NUMA figures (module docstring): distinct experts of the board's
    smaller task <= preloaded (Fig. 18's GPU N + the CPU pool) + CoServe Best's switches (Fig. 14),
    minus the 35 head experts and the 12 detectors."""
    board = str(board).lower()
    preloaded = FIG18_GPU_EXPERTS[board] + (NUMA_CPU_POOL_EXPERTS if with_cpu_pool else 0)
    max_distinct = preloaded + min(FIG14_NUMA_BEST_SWITCHES[board])
    return max_distinct - TOP_K - sum(NUM_DETECTORS.values())


def check_tail_types(board: str, tail_types: Any, field: str = "model.tail_types") -> int | None:
    """``tail_types`` as an int (or None), or ValueError naming ``field``: a whole number in
    [1, types - 35] (None: all types). Whether an exponent exists is the solver's to say."""
    if tail_types is None:
        return None
    board = str(board).lower()
    hi = NUM_TYPES[board] - TOP_K if board in NUM_TYPES else None
    if not isinstance(tail_types, (int, np.integer)) or isinstance(tail_types, bool):
        raise ValueError(f"{field}: must be a whole number of types or null (all types), "
                         f"got {tail_types!r}")
    if tail_types < 1 or (hi is not None and tail_types > hi):
        raise ValueError(f"{field}: must be in [1, {hi}] (board {board}: {NUM_TYPES.get(board)} "
                         f"types, {TOP_K} in the head) or null, got {tail_types}")
    return int(tail_types)


def build_paper_graph(board: str = "a", seed: int = 0, tail_types: int | None = None) -> CoEGraph:
    """The paper-scale PCB CoE of board "a" (352 types) or "b" (342 types).

    Experts: one ResNet101 classifier per type, ids ``cls_<board>_<NNN>``; 12 shared detectors,
    ids ``det_<board>_m<i>`` (YOLOv5m) and ``det_<board>_l<i>`` (YOLOv5l). Component types are
    named ``comp_<board>_<NNN>``; type i is checked by ``cls_<board>_<NNN>`` with the same NNN.
    Every ExpertInfo carries its offline usage probability. Deterministic per (board, seed,
    tail_types). ``tail_types``: None spreads the tail over all types; K puts the mix on the 35
    most common types and K more, the rest at 0 (module docstring). A K too small to keep the
    top 35 at 0.602 raises ValueError naming ``model.tail_types``.
    """
    board = str(board).lower()
    if board not in BOARDS:
        raise ValueError(f"board must be one of {sorted(BOARDS)}, got {board!r}")
    gen = GENERATED_BOARDS.get(board)
    if gen is not None and tail_types is not None:
        raise ValueError(f"model.tail_types: generated board {board} spreads its tail over every type; set it to null")
    tail_types = check_tail_types(board, tail_types)
    n_types = NUM_TYPES[board] if gen is None else gen["types"]
    detectors = NUM_DETECTORS if gen is None else gen["detectors"]
    top_k = TOP_K if gen is None else gen["top_k"]
    n_active = None if tail_types is None else TOP_K + tail_types
    rng = np.random.default_rng([seed, *board.encode()])  # a paper board: [seed, ord(board)]

    det_ids = [
        f"det_{board}_{arch[-1]}{i}" for arch, n in detectors.items() for i in range(n)
    ]
    det_archs = [arch for arch, n in detectors.items() for _ in range(n)]

    try:
        p_damaged, det_of, mix, usage = paper_shaped_mix(rng, n_types, detectors, top_k, TOP_K_SHARE, n_active)
    except ValueError as e:
        if n_active is None:
            raise
        raise ValueError(f"model.tail_types: {tail_types} is too few for board {board} (seed "
                         f"{seed}); {e}; use at least ~{MIN_TAIL_TYPES} or null") from None

    cls_arch = PAPER_ARCHS["resnet101"]
    experts = [
        ExpertInfo(
            expert_id=f"cls_{board}_{i:03d}",
            role=Role.PRELIMINARY,
            arch="resnet101",
            param_bytes=int(cls_arch["param_bytes"]),
            input_shape=tuple(cls_arch["input_shape"]),
            usage_prob=float(usage[i]),
        )
        for i in range(n_types)
    ]
    experts += [
        ExpertInfo(
            expert_id=eid,
            role=Role.SUBSEQUENT,
            arch=arch,
            param_bytes=int(PAPER_ARCHS[arch]["param_bytes"]),
            input_shape=tuple(PAPER_ARCHS[arch]["input_shape"]),
            usage_prob=float(usage[n_types + j]),
        )
        for j, (eid, arch) in enumerate(zip(det_ids, det_archs))
    ]
    components = [
        ComponentType(
            name=f"comp_{board}_{i:03d}",
            classifier=f"cls_{board}_{i:03d}",
            detector=det_ids[det_of[i]] if det_of[i] >= 0 else None,
            mix=float(mix[i]),
            p_damaged=float(p_damaged[i]),
        )
        for i in range(n_types)
    ]
    return CoEGraph(experts, components)


def tasks_per_image_by_arch(graph: CoEGraph) -> dict[str, float]:
    """Expected tasks per component image on each architecture (sum of usage by arch).

    Feeds the all-resident ceiling of ``coserve_jax.cost.paper_profiles``.
    """
    out: dict[str, float] = {}
    usage: Mapping[str, float] = graph.usage_probs()
    for eid, e in graph.experts.items():
        out[e.arch] = out.get(e.arch, 0.0) + float(usage[eid])
    return out
