"""scripts/bench_load.py --quick: every read path runs and the JSON holds its timings."""

import json


def test_bench_load_quick(tmp_path, capsys, script):
    bench = script("bench_load")
    out = tmp_path / "load.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    assert "| 0.4MB | 47 |" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["experts"]
    assert row["file_bytes"] > 0 and row["param_bytes"] > 0
    for path in bench.PATHS:
        assert len(row["times_s"][path]) == 2 and row[path]["median_ms"] > 0
    assert all(row[p]["vs_raw"] > 0 for p in ("restore", "reader", "device", "copied"))
