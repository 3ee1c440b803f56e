#!/usr/bin/env bash
# The engine on the device machine (one H200), in one run of at most ~8 minutes; everything it
# finds goes to $OUT (default outputs/device_check).
#
#   scripts/make_wheelhouse.sh            # here, once: ./wheelhouse (carried to the device machine)
#   OUT=... scripts/device_check.sh       # on the device machine
#   scripts/device_check.sh --dry-run     # the whole script on this CPU with model=pcb_synth_tiny
#
# Steps (each under its own time limit, cut to what is left of BUDGET_S; a failed step is
# recorded and the next one runs):
#   env      machine, GPUs, JAX devices and memory kinds, package versions      -> env.txt
#   wheels   install from ./wheelhouse only what the image lacks (checked first) -> wheels.log
#   pytest   python -m pytest -m gpu tests/test_gpu.py                          -> pytest_gpu.{log,xml}
#   zoo      build model=pcb_synth (48 ResNet101 + 6 YOLOv5m/l, 8.98 GB)         -> zoo/results.json
#   serve    hardware=gpu model=pcb_synth, samba, coserve, coserve_plus,
#            all_resident at a 25% device budget; it first measures the GPU's
#            profile (K·n+B, loads, activation bytes)                           -> serve/{results,profile}.json
#            (nvidia-smi samples utilisation and memory meanwhile               -> gpu_util.csv)
#   profile  the measured profile as a table                                    -> profile_summary.md
#   bench    load path: the engine's host->device switch vs one contiguous
#            device_put, disk->host vs a raw read, disk->device leased vs
#            copied out of the reader, switches beside batches                  -> bench_load.json
#   report   tables and plots of the serve run                                  -> report/
#   summary  what ran, how long, and the headline figures                       -> summary.md, steps.tsv
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; elif [[ -n "${1:-}" ]]; then echo "usage: $0 [--dry-run]" >&2; exit 2; fi
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/outputs/device_check}
# The whole script, seconds: the device machine allows 10 minutes a call; a dry run on a small
# shared CPU takes ~6 minutes (the tiny zoo's YOLO-family compiles and a CPU profile).
BUDGET_S=${BUDGET_S:-$(( DRY ? 1200 : 470 ))}
mkdir -p "$OUT"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export COSERVE_JAX_CACHE=${COSERVE_JAX_CACHE:-$ROOT/.cache/coserve_jax}
# Several JAX processes run one after another; the engine's byte budgets, not XLA's
# preallocated pool, bound what each holds on the GPU.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1
export DRY PY ROOT OUT  # the step functions below run in a child bash (under timeout)

if (( DRY )); then
  MODEL=${MODEL:-pcb_synth_tiny}
  KIND=cpu
  HW=(hardware=cpu hardware.cpu_devices=2 hardware.executors.cpu=2 hardware.host_budget=50%)
  PROF=('profiler.batch_sizes=[1,2,4]' profiler.repeats=2 profiler.load_samples=2 profiler.loop_requests=100)
  REQUESTS=${REQUESTS:-200}
  BENCH=(--kind cpu --repeats 2 --overlap-s 1)
else
  MODEL=${MODEL:-pcb_synth}
  KIND=gpu
  # GPU executors only: a CPU helper would add minutes of ResNet101 profiling on the host.
  HW=(hardware=gpu hardware.executors.cpu=0)
  PROF=('profiler.batch_sizes=[1,2,4,8,16]' profiler.repeats=5 profiler.load_samples=2 profiler.loop_requests=300)
  REQUESTS=${REQUESTS:-1000}
  BENCH=(--kind gpu --repeats 5 --overlap-s 3)
fi
EXTRA=()
[[ -n "${JAX_CACHE_DIR:-}" ]] && EXTRA+=("backend.compilation_cache_dir=$JAX_CACHE_DIR")

printf "step\trc\tseconds\tlimit_s\n" > "$OUT/steps.tsv"
FAILED=0
# step NAME MAX_SECONDS CMD...: run CMD into $OUT/NAME.log within min(MAX, time left).
step() {
  local name=$1 max=$2; shift 2
  local left=$(( BUDGET_S - SECONDS - 5 ))
  local limit=$(( max < left ? max : left ))
  if (( limit < 10 )); then
    echo "== $name: skipped, out of time (${SECONDS}s of ${BUDGET_S}s used)"
    printf "%s\tskipped\t0\t%s\n" "$name" "$limit" >> "$OUT/steps.tsv"; FAILED=1; return
  fi
  echo "== $name (limit ${limit}s; ${SECONDS}s used)"
  local t0=$SECONDS
  if declare -F "$1" >/dev/null; then  # a function of this script: timeout needs a program
    export -f "$1"
    set -- bash -c "$1"
  fi
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf "%s\t%s\t%s\t%s\n" "$name" "$rc" "$(( SECONDS - t0 ))" "$limit" >> "$OUT/steps.tsv"
  tail -n 15 "$OUT/$name.log"
  (( rc == 0 )) || { echo "== $name failed (rc $rc)"; FAILED=1; }
}

env_info() {
  echo "mode: $([[ $DRY == 1 ]] && echo dry-run || echo device)"; date -u; uname -a
  command -v nvidia-smi >/dev/null && nvidia-smi
  df -h "$ROOT" "$COSERVE_JAX_CACHE" 2>/dev/null | sort -u; free -g 2>/dev/null; nproc
  "$PY" - <<'PY'
import importlib.metadata as md, sys
print("python", sys.version)
for n in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "orbax-checkpoint", "optax", "numpy",
          "hydra-core", "omegaconf", "pytest", "tqdm", "matplotlib"):
    try:
        print(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"{n} -")
import jax
for d in jax.devices():
    print(d, d.device_kind, sorted(m.kind for m in d.addressable_memories()))
PY
}

wheels() {
  # module -> distribution: install only what does not import already.
  local missing=()
  local pair mod dist
  for pair in hydra:hydra-core omegaconf:omegaconf antlr4:antlr4-python3-runtime packaging:packaging tqdm:tqdm \
              pytest:pytest pluggy:pluggy iniconfig:iniconfig pygments:pygments; do
    mod=${pair%%:*}; dist=${pair#*:}
    if "$PY" -c "import $mod" 2>/dev/null; then echo "present: $dist"; else missing+=("$dist"); fi
  done
  if (( ${#missing[@]} == 0 )); then echo "nothing to install"; return 0; fi
  echo "missing: ${missing[*]}"
  if (( DRY )); then echo "dry run: would run pip install --no-index --find-links wheelhouse --no-deps ${missing[*]}"; return 0; fi
  [[ -d wheelhouse ]] || { echo "no ./wheelhouse: run scripts/make_wheelhouse.sh and carry it"; return 1; }
  "$PY" -m pip install --no-index --find-links wheelhouse --no-deps "${missing[@]}"
}

gpu_sampler() {  # nvidia-smi every 200 ms into gpu_util.csv while the serve and bench steps run
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=timestamp,index,utilization.gpu,utilization.memory,memory.used,power.draw \
    --format=csv -lms 200 > "$OUT/gpu_util.csv" 2>/dev/null &
  SAMPLER=$!
}

step env 60 env_info
step wheels 60 wheels
step pytest 120 "$PY" -m pytest -m gpu tests/test_gpu.py -rs -q -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml"
step zoo 180 "$PY" -m coserve_jax.run +experiment=zoo "model=$MODEL" "hydra.run.dir=$OUT/zoo"
SAMPLER=
gpu_sampler
step serve 300 "$PY" -m coserve_jax.run "model=$MODEL" "${HW[@]}" 'arms=[samba,coserve,coserve_plus,all_resident]' \
  hardware.device_budget=25% "workload.num_requests=$REQUESTS" repeats=1 profiler.max_drift=null "${PROF[@]}" \
  "${EXTRA[@]}" "hydra.run.dir=$OUT/serve"
step profile 30 "$PY" - "$OUT/serve/profile.json" "$OUT/profile_summary.md" <<'PY'
import json, sys
prof = json.load(open(sys.argv[1]))
rows = ["| kind | arch | K ms/img | B ms | max batch | compile s | act. MB @max | disk->pool | host->pool |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for kind, kd in prof["kinds"].items():
    loads = kd["loads"]
    fit = lambda f: f"{f['a_s'] * 1e3:.1f} ms + {f['b_s_per_byte'] * 1e9:.3f} s/GB"  # noqa: E731
    for arch, a in kd["archs"].items():
        act = a["activation_bytes"].get(str(a["max_batch"]))
        rows.append(f"| {kind} ({kd.get('device', '')}) | {arch} | {a['k_s'] * 1e3:.2f} | {a['b_s'] * 1e3:.2f} | "
                    f"{a['max_batch']} | {a.get('compile_s', 0):.1f} | {(act or 0) / 1e6:.0f} | {fit(loads['disk'])} | "
                    f"{fit(loads['host'])} |")
rows.append(f"\nhost cache (disk->host): {prof['host_cache_loads']['disk']['a_s'] * 1e3:.1f} ms + "
            f"{prof['host_cache_loads']['disk']['b_s_per_byte'] * 1e9:.3f} s/GB; overheads {prof.get('overheads')}")
open(sys.argv[2], "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
step bench 120 "$PY" scripts/bench_device_load.py "model=$MODEL" "${BENCH[@]}" --out "$OUT/bench_load.json"
[[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null
if "$PY" -c "import matplotlib" 2>/dev/null; then
  step report 60 "$PY" -m coserve_jax.report "$OUT/serve" --out "$OUT/report"
else
  echo "== report: skipped (no matplotlib here; run python -m coserve_jax.report on the copied serve dir)"
  printf "report\tskipped\t0\t0\n" >> "$OUT/steps.tsv"
fi

"$PY" - "$OUT" "$DRY" <<'PY' > "$OUT/summary.md" 2>&1
import csv, json, sys
from pathlib import Path
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
print(f"# device check ({'dry run on CPU' if dry else 'device'})\n")
print("| step | rc | seconds | limit s |\n| --- | --- | --- | --- |")
for r in csv.DictReader(open(out / "steps.tsv"), delimiter="\t"):
    print(f"| {r['step']} | {r['rc']} | {r['seconds']} | {r['limit_s']} |")
res = out / "serve" / "results.json"
if res.exists():
    R = json.loads(res.read_text())
    c = R["config"]
    print(f"\nserve: model={c['model']} hardware={c['hardware']} requests={c['num_requests']} "
          f"device budget {c['device_budget']} ({c['device_budget_bytes'] / 1e9:.2f} GB), zoo {R['zoo']['total_bytes'] / 1e9:.2f} GB\n")
    print("| arm | img/s | switches (during run) | from host | p50 ms | p99 ms | host tier | pools (device: executors) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm, a in R["arms"].items():
        if "infeasible" in a:
            print(f"| {arm} | infeasible: {a['infeasible']} | | | | | | |")
            continue
        pools = ", ".join(f"{p['device']}: {p['executors']}" for p in a.get("pools", []))
        sw = a["switches"]
        print(f"| {arm} | {a['throughput_rps']:.1f} | {sw['count']} ({sw['during_run']}) | {sw['from_host']} | "
              f"{a['latency_ms']['p50']:.0f} | {a['latency_ms']['p99']:.0f} | {a.get('host_tier')} | {pools} |")
b = out / "bench_load.json"
if b.exists():
    B = json.loads(b.read_text())
    print(f"\nload path on {B['device']} (GB/s):\n")
    print("| arch | MB | engine pinned->device | contiguous pinned | engine numpy | contiguous numpy | "
          "disk->host engine cold | raw cold | disk->device lease warm | copied warm |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    g = lambda d, k: f"{d[k]['bytes_per_s'] / 1e9:.2f}" if k in d else "—"  # noqa: E731
    for arch, r in B["archs"].items():
        h, d, dd = r["host_to_device"], r["disk_to_host"], r.get("disk_to_device", {})
        print(f"| {arch} | {r['bytes'] / 1e6:.1f} | {g(h, 'engine_pinned')} | {g(h, 'contiguous_pinned')} | "
              f"{g(h, 'engine_numpy')} | {g(h, 'contiguous_numpy')} | {g(d, 'engine_cold')} | {g(d, 'raw_cold')} | "
              f"{g(dd, 'lease')} | {g(dd, 'copied')} |")
    print(f"\noverlap: {json.dumps(B['overlap'])}")
PY
cat "$OUT/summary.md"
echo "== done in ${SECONDS}s; $( (( FAILED )) && echo 'some steps failed (see steps.tsv)' || echo 'every step passed'); results in $OUT"
exit $FAILED
