"""scripts/bench_load.py --quick: every read path runs and the JSON holds its timings."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_load.py"


def test_bench_load_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_load", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "load.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    assert "| 0.4MB | 47 |" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["experts"]
    assert row["file_bytes"] > 0 and row["param_bytes"] > 0
    for path in bench.PATHS:
        assert len(row["times_s"][path]) == 2 and row[path]["median_ms"] > 0
    assert row["restore"]["vs_raw"] > 0 and row["reader"]["vs_raw"] > 0
