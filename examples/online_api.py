"""The Python API as a plain script: run an experiment, then serve images online.

    python examples/online_api.py

No ``if __name__ == "__main__":`` guard is needed: the engine's checkpoint readers are plain
subprocesses that never re-import this file.
"""

from coserve_jax.api import Engine, make_trace, run_experiment

# Two arms side by side on one generated workload; results.json lands in runs/api.
# pcb_tiny's experts are tiny next to a batch's working memory: at the default 25% budget an
# executor cannot hold its largest expert plus a batch, so these examples give it 75%.
tiny = ["model=pcb_tiny", "hardware.device_budget=75%"]
results = run_experiment([*tiny, "arms=[samba,coserve]", "workload.num_requests=300"], out_dir="runs/api")
for arm, r in results["arms"].items():
    print(f"{arm}: {r['throughput_rps']:.1f} img/s, {r['switches']['count']} switches")

# Online: submit float32 (H, W, C) images one by one; each Future resolves to the verdict.
with Engine.from_config(tiny, arm="coserve") as engine:
    requests = make_trace(engine.cfg, engine.model.graph)[:20]  # component types of the workload
    futures = [engine.submit(engine.model.zoo.render(r), r.component_type) for r in requests]
    for r, future in zip(requests, futures):
        out = future.result(timeout=60)  # {'verdict': 'ok', 'experts': [...], 'latency_s': ...}
        print(f"{r.component_type}: {out['verdict']} via {out['experts']} in {out['latency_s'] * 1e3:.1f} ms")
