"""The Ray Serve app over loopback HTTP: two replicas of the tiny zoo's engine behind the
affinity router; images posted concurrently while one replica is killed; bad requests get a
4xx with the reason and the app keeps serving; /healthz and /metrics answer.

One Ray session for the module (starting Ray and the replicas is most of the time)."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("prometheus_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, ctype: str, body: bytes, content_type: str = "application/x-npy",
         timeout_s: float = 60.0) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/v1/infer?component_type={ctype}", data=body,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.fixture(scope="module")
def server(real, tmp_path_factory):
    import ray

    from coserve_jax.metrics.results import write_json_atomic
    from coserve_jax.serve.launch import start

    profile = Path(tmp_path_factory.mktemp("serve")) / "profile.json"
    write_json_atomic(profile, real.cost.profile)  # the session's measured profile: no re-measuring
    srv = start([*real.overrides, "serve.replicas=2", "serve.router=affinity", f"serve.http.port={_free_port()}",
                 f"hardware.profile={profile}", "backend.load_processes=0", "serve.ray.num_cpus=2",
                 "serve.replica.num_cpus=0.5", "serve.http.request_timeout_s=60", "serve.http.retries=3"])
    yield srv
    srv.shutdown()
    assert not ray.is_initialized()


def _images(real, n: int):
    from coserve_jax.api import make_trace

    reqs = make_trace(real.cfg(f"workload.num_requests={n}"), real.model.graph)
    return [(r.component_type, real.model.zoo.render(r)) for r in reqs]


def test_http_kill_a_replica_mid_run_loses_nothing(server, real):
    import ray

    from coserve_jax.serve.decode import encode_npy

    work = _images(real, 60)
    assert post(server.url, work[0][0], encode_npy(work[0][1]))[0] == 200  # the router is up
    killed = []

    def kill_one() -> None:
        names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if "Replica" in a["name"] and "Ingress" not in a["name"]]
        victim = sorted(names, key=lambda a: a["name"])[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]))
        killed.append(victim["name"])

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(post, server.url, t, encode_npy(img), "application/x-npy", 90.0) for t, img in work]
        for done, _ in enumerate(concurrent.futures.as_completed(futs, timeout=180), start=1):
            if done == 15:
                kill_one()
        results = [f.result() for f in futs]
    assert killed
    assert time.time() - t0 < 180
    statuses = [s for s, _ in results]
    assert all(s in (200, 503) for s in statuses), statuses  # answered, or failed with a reason
    for s, body in results:
        if s == 200:
            assert body["verdict"] in ("ok", "damaged", "misaligned", "reversed") and body["experts"]
        else:
            assert "replica" in body["error"]
    assert statuses.count(200) >= 50, statuses
    # after the kill the app keeps serving (Ray restarts the replica; the router re-partitions)
    assert post(server.url, work[1][0], encode_npy(work[1][1]))[0] == 200


def test_bad_requests_get_a_4xx_with_the_reason_and_serving_goes_on(server, real):
    from coserve_jax.serve.decode import encode_npy, encode_png

    ctype, img = _images(real, 1)[0]
    s, body = post(server.url, "no_such_type", encode_npy(img))
    assert s == 404 and "unknown component type" in body["error"]
    s, body = post(server.url, ctype, encode_npy(img[:-1]))
    assert s == 422 and "shape" in body["error"]
    s, body = post(server.url, ctype, encode_npy(img.astype(np.float64)))
    assert s == 422 and "dtype" in body["error"]
    s, body = post(server.url, ctype, b"\x89PNG\r\n\x1a\n-not-a-png", "image/png")
    assert s == 400 and "corrupt PNG" in body["error"]
    s, body = post(server.url, ctype, b"\0" * (9 << 20))
    assert s == 413 and "limit" in body["error"]
    s, body = post(server.url, ctype, b"hello", "text/plain")
    assert s == 415
    s, body = post(server.url, ctype, encode_png(img), "image/png")
    assert s == 200 and body["verdict"]
    s, body = post(server.url, ctype, encode_npy(img))
    assert s == 200 and body["latency_s"] > 0


def test_healthz_and_prometheus_metrics(server, real):
    from coserve_jax.serve.decode import encode_npy

    ctype, img = _images(real, 1)[0]
    assert post(server.url, ctype, encode_npy(img))[0] == 200
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as r:
        assert r.status == 200 and json.load(r)["status"] == "ok"
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for name in ("coserve_requests_total", "coserve_failures_total", "coserve_request_latency_seconds_bucket",
                 "# TYPE coserve_replica_queue_depth gauge", "# TYPE coserve_replica_load_seconds histogram"):
        assert name in text, name


def test_per_replica_stats_reach_metrics(server, real):
    from coserve_jax.serve.decode import encode_npy

    ctype, img = _images(real, 1)[0]
    assert post(server.url, ctype, encode_npy(img))[0] == 200
    deadline = time.time() + 30  # replicas report their stats every serve.replica.routing_stats_period_s
    while True:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
            text = r.read().decode()
        if "coserve_replica_load_seconds_bucket" in text or time.time() > deadline:
            break
        time.sleep(0.5)
    for name in ("coserve_replica_queue_depth{", "coserve_replica_pool_bytes{", "coserve_replica_switches_total{",
                 "coserve_replica_load_seconds_bucket{"):
        assert name in text, name


def test_each_replica_preloads_its_working_set(server, real):
    """The affinity router's partition gives each replica a working set; the ingress has each
    replica load it (here after the kill above too: the restarted replica gets a new one)."""
    from coserve_jax.serve.decode import encode_npy

    ctype, img = _images(real, 1)[0]
    assert post(server.url, ctype, encode_npy(img))[0] == 200
    graph = real.model.graph

    def preloaded(d: dict) -> bool:
        # Every expert it holds is in its set, and the set is held whole or the next expert of
        # it would not fit beside what is held.
        ws, held = d.get("working_set"), set(d.get("working_set_held", ()))
        if not ws or len(held) != d["experts"]:
            return False
        missing = [e for e in ws if e not in held]
        return not missing or d["expert_bytes_used"] + graph.experts[missing[0]].param_bytes > d["expert_bytes"]

    deadline = time.time() + 60
    while True:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as r:
            health = json.load(r)
        done = len(health["detail"]) == 2 and all(preloaded(d) for d in health["detail"].values())
        if done or time.time() > deadline:
            break
        time.sleep(0.5)
    assert done, health


def test_load_generator_against_the_endpoint(server, real, tmp_path):
    """``scripts/loadgen.py`` end to end: open-loop sends, every request answered, and its
    closed-loop measure of the serving path's seconds per request."""
    import runpy

    loadgen = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "loadgen.py"))
    report = loadgen["main"](["--url", server.url, "--rate", "20", "--requests", "20", "--duration-s", "10",
                              "--overrides", *real.overrides, "--out", str(tmp_path / "load.json")])
    assert report["sent"] == 20 and report["lost"] == 0 and report["status"] == {"200": 20}
    assert json.loads((tmp_path / "load.json").read_text())["achieved_rps"] > 0
    # One sender thread against arrivals far faster than one round trip: the sends queue in the
    # client, and the report counts that wait (it once timed from each actual send, which
    # overstated throughput and hid the queue)
    queued = loadgen["main"](["--url", server.url, "--rate", "500", "--requests", "8", "--max-inflight", "1",
                              "--overrides", *real.overrides])
    assert queued["status"] == {"200": 8} and queued["client_wait_s"]["queued"] >= 6
    assert queued["achieved_rps"] == pytest.approx(8 / queued["wall_s"], rel=0.05)  # one at a time, to the end
    assert queued["latency_ms"]["p99"] >= 1e3 * queued["client_wait_s"]["max"]
    over = loadgen["serving_overhead_s"](server.url, loadgen["workload"](real.overrides, 4), 4)
    assert 0 < over["median_s"] < 10
