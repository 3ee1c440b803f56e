"""Open-loop load generator for the HTTP endpoint (``python -m coserve_jax.serve``).

    python scripts/loadgen.py --url http://127.0.0.1:8000 --rate 20 --requests 600 --duration-s 60
    python scripts/loadgen.py --arrival gamma --cv 2 --rate 20 --slo-ms 500 --out runs/load.json

Requests arrive at their scheduled times whatever the server's pace (open loop): Poisson
arrivals, or gamma inter-arrival times with coefficient of variation ``--cv`` (burstier above
1), at ``--rate`` img/s. The images and component types come from the model's seeded workload
(``--overrides``, the same Hydra overrides as the server's model), rendered before the first send.
Bounded: at most ``--requests`` sends, none after ``--duration-s``, each waiting at most
``--timeout-s``; loopback addresses only. Reports sent, answered by HTTP status, lost (no
answer), achieved throughput (200s over the span from the first send to the last answer),
p50/p95/p99 latency of the 200s (from each request's scheduled send, any wait for one of the
``--max-inflight`` sender threads included) and the share of all sent requests answered 200
within ``--slo-ms``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np


def loopback_only(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError as e:
        raise SystemExit(f"--url: cannot resolve {host!r}: {e}") from None
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise SystemExit(f"--url: {host} resolves to {sorted(addrs)}; this load generator targets loopback only")


def arrival_offsets_s(n: int, rate: float, arrival: str, cv: float, seed: int) -> np.ndarray:
    """Send times (s from the start) of n requests at ``rate`` per second."""
    rng = np.random.default_rng(seed)
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    else:  # gamma with mean 1/rate and coefficient of variation cv: shape 1/cv^2
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def workload(overrides: list[str], n: int) -> list[tuple[str, bytes]]:
    """(component type, .npy body) for n requests of the model's seeded workload."""
    from coserve_jax.api import as_run_config, load_model, make_trace
    from coserve_jax.serve.decode import encode_npy

    cfg = as_run_config([*overrides, f"workload.num_requests={n}"])[0]
    model = load_model(cfg, progress=False)
    return [(r.component_type, encode_npy(model.zoo.render(r))) for r in make_trace(cfg, model.graph)]


def send(url: str, ctype: str, body: bytes, timeout_s: float) -> tuple[int | None, float, str, bytes]:
    """(HTTP status or None, seconds, error text, response body) of one request."""
    req = urllib.request.Request(f"{url}/v1/infer?component_type={urllib.parse.quote(ctype)}", data=body,
                                 headers={"Content-Type": "application/x-npy"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            out = r.read()
            return r.status, time.perf_counter() - t, "", out
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - t, e.read().decode(errors="replace")[:200], b""
    except (urllib.error.URLError, OSError) as e:
        return None, time.perf_counter() - t, f"{type(e).__name__}: {e}", b""


def serving_overhead_s(url: str, items: list[tuple[str, bytes]], n: int, timeout_s: float = 60.0,
                       idle_s: float = 3.0, concurrency: int = 1) -> dict[str, Any]:
    """The serving path's seconds per request: ``n`` requests in a closed loop of
    ``concurrency`` clients, each one's round trip less the engine's own latency (``latency_s``
    in the answer, arrival in the replica's engine to verdict). One at a time, what is left is
    the HTTP proxy, the ingress, the router, the actor calls there and back and the client, with
    nothing queued anywhere. ``cpu_s``: the CPU seconds per request of this process and its
    descendants (``busy_cpu_s``) beyond what they burn idle (``idle_cores``: measured over
    ``idle_s`` first, no request in flight); with several clients, under that much load."""
    idle0, t0 = busy_cpu_s(), time.perf_counter()
    time.sleep(idle_s)  # no request in flight: what the serving processes burn anyway
    cpu0, t1 = busy_cpu_s(), time.perf_counter()

    def one(i: int) -> float:
        ctype, body = items[i % len(items)]
        status, wall, err, out = send(url, ctype, body, timeout_s)
        if status != 200:
            raise RuntimeError(f"serving_overhead_s: request {i} ({ctype}) got {status}: {err}")
        return wall - float(json.loads(out)["latency_s"])

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        over = list(pool.map(one, range(n)))
    cpu1, t2 = busy_cpu_s(), time.perf_counter()
    a = np.array(over)
    out = {"requests": n, "concurrency": concurrency, "median_s": float(np.median(a)),
           "p10_s": float(np.percentile(a, 10)), "p90_s": float(np.percentile(a, 90)), "mean_s": float(a.mean()),
           "achieved_rps": n / (t2 - t1), "cpu_s": None, "idle_cores": None}
    if None not in (idle0, cpu0, cpu1):
        idle_cores = (cpu0 - idle0) / (t1 - t0)
        out.update(idle_cores=idle_cores, cpu_s=max(0.0, (cpu1 - cpu0 - idle_cores * (t2 - t1)) / n))
    return out


def busy_cpu_s() -> float | None:
    """CPU seconds spent so far by this process and its descendants (Linux ``/proc``; None
    elsewhere): with a server this process started (``serve_vs_sim.py``: the local Ray cluster,
    its HTTP proxy, ingress and replicas), the whole serving path and its client, and nothing
    else running on the machine."""
    clk = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()  # fields after the command name
        except OSError:
            continue  # gone meanwhile
        parent[pid] = int(rest[1])
        ticks[pid] = int(rest[11]) + int(rest[12])  # utime + stime
    me = os.getpid()
    if me not in ticks:
        return None
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [me]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / clk


def run(url: str, items: list[tuple[str, bytes]], offsets: np.ndarray, duration_s: float, timeout_s: float,
        slo_ms: float, max_inflight: int) -> dict[str, Any]:
    """Send ``items`` at ``offsets`` seconds from now (open loop) on up to ``max_inflight``
    sender threads, and report. Every time counts from a request's scheduled send: its latency
    runs to its answer, and includes any wait for a free sender thread (``client_wait_s``: when
    all ``max_inflight`` are busy the sends queue here, and a latency from the actual send would
    hide that wait). Achieved throughput is the 200s over the span to the last answer."""
    results: list[tuple[float, int | None, float, str]] = []  # (scheduled send, status, answered at, error)
    waits: list[float] = []  # scheduled send -> a sender thread starts it
    lock = threading.Lock()
    late: list[float] = []

    def one(i: int, t_sent: float) -> None:
        started = time.perf_counter() - t0
        status, _, err, _ = send(url, items[i][0], items[i][1], timeout_s)
        answered = time.perf_counter() - t0
        with lock:
            results.append((t_sent, status, answered, err))
            waits.append(started - t_sent)

    t0 = time.perf_counter()
    sent = 0
    with concurrent.futures.ThreadPoolExecutor(max_inflight) as pool:
        futs = []
        for i, off in enumerate(offsets):
            if off > duration_s:
                break
            wait = t0 + off - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                late.append(-wait)
            futs.append(pool.submit(one, i, time.perf_counter() - t0))
            sent += 1
        concurrent.futures.wait(futs, timeout=timeout_s + 30)
    end = time.perf_counter() - t0
    ok = [(t, done) for t, s, done, _ in results if s == 200]
    lat_ms = np.array([done - t for t, done in ok]) * 1e3
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for _, s, _, err in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
        if s != 200:
            errors[err.split(":")[0][:80] or str(s)] = errors.get(err.split(":")[0][:80] or str(s), 0) + 1
    last_answer = max((done for _, _, done, _ in results), default=0.0)
    pct = (lambda q: float(np.percentile(lat_ms, q))) if lat_ms.size else (lambda q: None)
    return {
        "url": url, "sent": sent, "answered": len(results), "lost": sent - len(results),
        "status": statuses, "errors": errors,
        "offered_rps": sent / max(offsets[min(sent, len(offsets)) - 1], 1e-9) if sent > 1 else None,
        "achieved_rps": len(ok) / max(last_answer, 1e-9),
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99)},
        "slo_ms": slo_ms, "within_slo": float((lat_ms <= slo_ms).sum() / max(sent, 1)),
        "late_sends": len(late), "max_send_lag_s": max(late, default=0.0),
        "client_wait_s": {"max": max(waits, default=0.0), "queued": int(sum(w > 0.001 for w in waits))},
        "max_inflight": max_inflight, "wall_s": end,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--rate", type=float, required=True, help="offered img/s")
    ap.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson")
    ap.add_argument("--cv", type=float, default=1.0, help="gamma: coefficient of variation of the gaps")
    ap.add_argument("--requests", type=int, default=500, help="at most this many sends")
    ap.add_argument("--duration-s", type=float, default=60.0, help="no send after this many seconds")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="each request waits at most this long")
    ap.add_argument("--slo-ms", type=float, default=1000.0, help="latency target")
    ap.add_argument("--max-inflight", type=int, default=256, help="sender threads (open loop: keep it large)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overrides", nargs="*", default=["model=pcb_demo"],
                    help="Hydra overrides naming the server's model (images and types)")
    ap.add_argument("--out", type=Path, help="write the report here (JSON)")
    a = ap.parse_args(argv)
    if a.rate <= 0 or a.requests < 1 or a.duration_s <= 0 or a.timeout_s <= 0 or a.cv <= 0:
        ap.error("--rate, --requests, --duration-s, --timeout-s and --cv must be positive")
    loopback_only(a.url)
    items = workload(a.overrides, a.requests)
    report = run(a.url, items, arrival_offsets_s(len(items), a.rate, a.arrival, a.cv, a.seed), a.duration_s,
                 a.timeout_s, a.slo_ms, a.max_inflight)
    report.update(arrival=a.arrival, cv=a.cv, rate=a.rate)
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["lost"] == 0 else 1)
