"""The paper's two machines (PAPER.md Table 1) as cost-model profiles (coserve_jax.profile/1).

``paper_profile(constants, archs)`` turns the ``paper_profile:`` node of
``conf/hardware/numa_3080ti.yaml`` / ``uma_m2.yaml`` (every constant cited there) into a profile
that ``CostModel`` accepts, with executor kinds "gpu" and "cpu". No JAX, no I/O.

How the figures are combined, and where they conflict (choices are ours):

Loads. Table 1's SSD bandwidth gives the raw read; PAPER.md's derived note says the framework
overhead (deserialising, copying) is about as large as the disk time, so disk -> host RAM costs
``bytes/ssd + bytes/deserialise``. Fig. 1 gives, per architecture, switch / (switch + execution)
for SSD -> GPU (share s_d) and CPU -> GPU (share s_h). The execution latency cancels in their
ratio: load_host/load_disk = [s_h/(1-s_h)] / [s_d/(1-s_d)], so a GPU load from disk is
``disk_to_host / (1 - ratio)`` and from host ``ratio x that``. On NUMA this gives 0.71 s per
ResNet101 switch from SSD (inside the 0.7-0.9 s PAPER.md derives from Samba-CoE's Fig. 13/14
results) and 36 ms from host RAM (~5 GB/s, a plausible pageable PCIe copy). We do *not* multiply
Fig. 1's share by Fig. 19's 35 ms single-request latency: that gives 3.1 s per switch (57 MB/s,
a tenth of the SSD's bandwidth) and a Samba-CoE ~3x slower than the paper measured.

Shared hardware (``split_loads``). The three terms above are three resources: the read is the
SSD's (Table 1's one disk per machine), the deserialising is CPU work on one host core per load
lane, and a GPU load's remaining ``host_to_gpu`` seconds are the copy over the GPU's link (Fig. 1's
CPU -> GPU switch). Their sum is the disk -> GPU load above; the profile gives each fit these
shares (``parts``) and ``host.cores`` (``host_cores``: Table 1's CPU), and the simulator runs
them in order on the shared disk, the host's cores and the GPU's link (``engine/sim.py``). Two
concurrent NUMA reads then take 0.67 s each instead of 0.34 s, while their deserialising
overlaps on two cores. Without ``split_loads`` a load is one job, as before issue #22.

Compute. Fig. 12 (GPU 150-200 ms, CPU 900-1200 ms at batch 30) and Fig. 19 (~35 ms single
request) describe a GPU executor that alone would do >= 100 img/s at batch 6, but CoServe Best
measures 26-30 img/s with everything nearly resident (Fig. 13), i.e. the whole machine does
about one image per ~35 ms of GPU time (PAPER.md "What the figures imply"). The profile
describes one executor alone on its device; the simulator makes executors on one device share
it (processor sharing, ``engine/sim.py``), so several GPU executors add no compute, only overlap
of loads with compute — the reason the paper runs several. ``gpu.executors_sharing`` stays in
the constants (1: the profile is per device) so a per-lane calibration can be expressed if
ever needed. A request is one
ResNet101 task plus ``tasks_per_request`` detection tasks (the board mix of
``coserve_jax.coe.paper``); each architecture's cost relative to ResNet101 is the ratio of the
isolated execution times that Fig. 1 implies with our loads. The batch shape comes from Fig. 5:
the best batch n* is where per-image latency K + B/n has plateaued, read as "within
``plateau_tolerance`` of K", so B = tolerance x n* x K. The CPU keeps Fig. 12's CPU/GPU latency
ratio at batch 30. Fig. 12's absolute latencies are therefore not used (kept as provenance).

Memory. One more ResNet101 image in a batch costs 1.5 experts' bytes on the NUMA GPU (PAPER.md
Profiled behaviour); we apply the same 1.5 x param_bytes per image to every architecture and
executor kind (the paper gives no other figure), at several n.

Overheads. Scheduling (8.3-9.0 ms NUMA, 2.3-2.6 ms UMA per request, Fig. 19) runs on the CPU in
parallel with GPU inference, so it is not on the critical path: dispatch_s is 0 unless the
constants say ``scheduling_on_critical_path: true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coserve_jax.cost.model import SCHEMA, CostModel
from coserve_jax.types import Tier

ACTIVATION_POINTS = (1, 2, 4, 8, 16, 32)  # batch sizes at which activation bytes are listed
REFERENCE_ARCH = "resnet101"  # the architecture Fig. 19's per-image latency refers to


def _odds(share: float) -> float:
    """switch/execution from switch/(switch+execution)."""
    share = float(share)
    if not 0.0 < share < 1.0:
        raise ValueError(f"a Fig. 1 switch share must lie in (0, 1), got {share}")
    return share / (1.0 - share)


def _loads_s(constants: Mapping, archs: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
    """Per-architecture load seconds: disk->host, disk->gpu, host->gpu, and isolated exec."""
    ssd = float(constants["ssd_read_bytes_per_s"])
    deser = float(constants["deserialise_bytes_per_s"])
    shares = constants["switch_share"]
    out: dict[str, dict[str, float]] = {}
    for arch, spec in archs.items():
        size = float(spec["param_bytes"])
        disk_to_host_s = size / ssd + size / deser
        odds_disk = _odds(shares["disk_to_gpu"][arch])
        ratio = _odds(shares["host_to_gpu"][arch]) / odds_disk
        if ratio >= 1.0:
            raise ValueError(f"Fig. 1 shares for {arch}: host->GPU must be cheaper than SSD->GPU")
        disk_to_gpu_s = disk_to_host_s / (1.0 - ratio)
        out[arch] = {
            "read_s": size / ssd,
            "deserialise_s": size / deser,
            "disk_to_host_s": disk_to_host_s,
            "disk_to_gpu_s": disk_to_gpu_s,
            "host_to_gpu_s": ratio * disk_to_gpu_s,
            # Fig. 1's execution latency implied by our disk load: only its ratio across
            # architectures is used (per-architecture compute cost relative to ResNet101).
            "isolated_exec_s": disk_to_gpu_s / odds_disk,
        }
    return out


def paper_profile(constants: Mapping, archs: Mapping[str, Mapping]) -> dict[str, Any]:
    """A coserve_jax.profile/1 dict for one of the paper's machines.

    constants: the ``paper_profile`` node of a hardware config (see conf/hardware/numa_3080ti.yaml
    for every key and its citation). archs: architecture specs with ``param_bytes``, e.g.
    ``coserve_jax.coe.paper.PAPER_ARCHS``; must include "resnet101".
    Kinds "gpu" and "cpu"; GPU pools load from "host" and "disk", CPU pools (experts in host
    RAM) from "disk"; ``host_cache_loads.disk`` is disk -> host RAM.
    """
    if REFERENCE_ARCH not in archs:
        raise ValueError(f"archs must include {REFERENCE_ARCH!r} (Fig. 19 refers to it)")
    gpu, cpu = constants["gpu"], constants["cpu"]
    loads = _loads_s(constants, archs)
    ref_exec_s = loads[REFERENCE_ARCH]["isolated_exec_s"]
    act_per_image = float(constants["activation_experts_per_image"])
    compile_s = float(constants.get("compile_s", 0.0))

    # GPU time per request (Fig. 19) spread over the request's tasks, in ResNet101 units.
    tasks = constants["tasks_per_request"]
    ref_tasks = sum(
        float(t) * loads[a]["isolated_exec_s"] / ref_exec_s for a, t in tasks.items()
    )
    gpu_k_ref = float(gpu["executors_sharing"]) * float(gpu["device_s_per_request"]) / ref_tasks
    gpu_n, cpu_n = int(gpu["best_batch"]), int(cpu["best_batch"])
    gpu_tol, cpu_tol = float(gpu["plateau_tolerance"]), float(cpu["plateau_tolerance"])
    cpu_ratio = float(cpu["latency_ratio_to_gpu_at_batch30"])

    kinds: dict[str, dict[str, Any]] = {"gpu": {"archs": {}}, "cpu": {"archs": {}}}
    for arch, spec in archs.items():
        rel = loads[arch]["isolated_exec_s"] / ref_exec_s
        k_gpu = gpu_k_ref * rel
        b_gpu = gpu_tol * gpu_n * k_gpu
        # CPU: Fig. 12's CPU/GPU latency ratio at batch 30, with the CPU's own plateau shape.
        k_cpu = cpu_ratio * (30 * k_gpu + b_gpu) / (30 + cpu_tol * cpu_n)
        b_cpu = cpu_tol * cpu_n * k_cpu
        per_image_bytes = act_per_image * int(spec["param_bytes"])
        for kind, k, b, n in (("gpu", k_gpu, b_gpu, gpu_n), ("cpu", k_cpu, b_cpu, cpu_n)):
            points = sorted(set(ACTIVATION_POINTS) | {n})
            kinds[kind]["archs"][arch] = {
                "k_s": k,
                "b_s": b,
                "max_batch": n,
                "compile_s": compile_s,
                "param_bytes": int(spec["param_bytes"]),
                "activation_bytes": {str(m): int(round(m * per_image_bytes)) for m in points},
            }

    split = bool(constants.get("split_loads", False))
    ref = loads[REFERENCE_ARCH]
    # A load's parts (engine/sim.py shares each): the SSD read (Table 1's bandwidth), the
    # deserialising (CPU work, the derived overhead) and the host -> GPU copy (Fig. 1's CPU -> GPU
    # switch); disk -> GPU = all three, disk -> host RAM = the first two, host -> GPU = the copy.
    parts = {"disk_to_gpu_s": {"disk": ref["read_s"], "cpu": ref["deserialise_s"], "link": ref["host_to_gpu_s"]},
             "disk_to_host_s": {"disk": ref["read_s"], "cpu": ref["deserialise_s"]},
             "host_to_gpu_s": {"link": ref["host_to_gpu_s"]}}

    def fit(key: str) -> dict[str, Any]:
        # The schema has one fit per (pool kind, source), not per architecture: we make it
        # exact for ResNet101 (352 of 364 experts, 97% of the bytes) and proportional to bytes;
        # per-architecture values stay in "per_arch_loads_s".
        size = float(archs[REFERENCE_ARCH]["param_bytes"])
        out: dict[str, Any] = {"a_s": 0.0, "b_s_per_byte": ref[key] / size}
        if split:
            out["parts"] = {r: v / ref[key] for r, v in parts[key].items()}
        return out

    kinds["gpu"]["loads"] = {"disk": fit("disk_to_gpu_s"), "host": fit("host_to_gpu_s")}
    kinds["cpu"]["loads"] = {"disk": fit("disk_to_host_s")}
    on_path = bool(constants.get("scheduling_on_critical_path", False))
    host = {"cores": int(constants["host_cores"])} if constants.get("host_cores") else {}
    return {
        "schema": SCHEMA,
        "device": {"name": str(constants.get("machine", "paper")), "source": "PAPER.md"},
        "jax_version": None,
        "settings": {"derived_from": "coserve_jax.cost.paper_profiles.paper_profile"},
        "kinds": kinds,
        "host_cache_loads": {"disk": fit("disk_to_host_s")},
        "overheads": {
            "dispatch_s": float(constants["scheduling_s_per_request"]) if on_path else 0.0,
        },
        **({"host": host} if host else {}),
        # Provenance (extra keys are allowed by the schema).
        "paper_constants": _plain(constants),
        "per_arch_loads_s": loads,
        "gpu_executors_sharing": int(gpu["executors_sharing"]),
    }


def _plain(x: Any) -> Any:
    """Mappings/sequences (e.g. OmegaConf nodes) as plain JSON-able Python."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) or type(x).__name__ == "ListConfig":
        return [_plain(v) for v in x]
    return x


# ---- cross-checks against the paper's end-to-end figures -----------------------------------
def all_resident_ceiling_img_per_s(
    cost: CostModel,
    executors: Mapping[str, int],
    tasks_per_image: Mapping[str, float] | None = None,
) -> float:
    """Throughput bound with every expert resident and every executor at its best batch.

    Fluid bound: each device spends, per image, sum over archs of tasks x per-task latency at
    max batch; executors on one device share it (as in the simulator), devices add up. tasks_per_image defaults to one ResNet101 task per image;
    ``coserve_jax.coe.paper.tasks_per_image_by_arch`` gives a board's real mix.
    """
    tasks = dict(tasks_per_image or {REFERENCE_ARCH: 1.0})
    total = 0.0
    for kind, count in executors.items():
        s_per_image = 0.0
        for arch, t in tasks.items():
            n = cost.max_batch(kind, arch)
            s_per_image += t * cost.batch_latency_s(kind, arch, n) / n
        total += (1 if int(count) > 0 else 0) / s_per_image
    return total


def samba_rate_img_per_s(
    cost: CostModel,
    switches_per_request: float = 1.0,
    src: Tier = Tier.DISK,
    arch: str = REFERENCE_ARCH,
) -> float:
    """Samba-CoE-like rate: one GPU executor, batch 1, FCFS, a switch every 1/s requests."""
    size = int(cost.arch("gpu", arch)["param_bytes"])
    per_request_s = cost.batch_latency_s("gpu", arch, 1) + switches_per_request * (
        cost.load_latency_s("gpu", src, size)
    )
    return 1.0 / per_request_s
