"""CI check of the README's main job: the quickstart's tables and report exist and are
well-formed (one metrics row per variant × task, the five metrics present and sane).

    python3 tests/python/check_quickstart.py results/quickstart
"""

import math
import pathlib
import sys

import pyarrow.parquet as pq

out = pathlib.Path(sys.argv[1])
for name in ["runs", "finetune", "quantize", "cold_load", "evaluate", "measure", "metrics"]:
    path = out / f"{name}.parquet"
    assert path.is_file(), f"{path} missing"
    assert pq.read_table(path).num_rows > 0, f"{path} is empty"
html = (out / "report.html").read_text()
assert "<svg" in html and "Pareto" in html, "report.html has no frontier plot"

runs = pq.read_table(out / "runs.parquet").to_pylist()
failed = [r for r in runs if r["status"] not in ("ran", "cached")]
assert not failed, f"stages not done: {failed}"

metrics = pq.read_table(out / "metrics.parquet").to_pylist()
variants = {(m["task"], m["precision"]) for m in metrics}
assert variants == {(t, p) for t in ("qa", "summ") for p in ("f16", "q8_0", "q4_0")}, variants
for m in metrics:
    where = f"{m['variant']} [{m['task']}]"
    assert 0.0 <= m["score"] <= 1.0, f"{where}: score {m['score']}"
    for k in ("ipw", "rho_sys", "c_tax", "energy_per_request_j", "tokens_per_s"):
        assert m[k] is not None and m[k] > 0, f"{where}: {k} = {m[k]} ({m['null_reasons']})"
    assert m["n_break"] is not None and (m["n_break"] >= 0 or math.isinf(m["n_break"])), where
    assert m["q_ret_pct"] is not None, where
    # A map column reads as (key, value) pairs: each stage behind the row, how its energy was had.
    sources = dict(m["energy_sources"])
    assert sources and set(sources.values()) == {"estimated"}, f"{where}: {sources}"
    assert any(s.startswith("measure[") for s in sources), f"{where}: {sources}"
    if m["precision"] == "f16":
        assert m["q_ret_pct"] == 100.0, where

finetune = [r for r in pq.read_table(out / "finetune.parquet").to_pylist() if r["row"] == "summary"]
assert len(finetune) == 2, finetune
for r in finetune:
    assert r["loss"] < r["first_loss"], f"{r['stage_id']}: loss did not fall"
print(f"quickstart outputs ok: {len(metrics)} variant rows, {len(runs)} stages")
