"""Reads edge-eval's Parquet tables with pyarrow and checks their column types.

Usage: python3 check_tables.py RESULTS_DIR — exits non-zero, naming the column, on a mismatch.
"""
import sys

import pyarrow as pa
import pyarrow.parquet as pq

EXPECTED = {
    "metrics": {
        "variant": pa.string(), "precision": pa.string(), "task": pa.string(),
        "synthetic": pa.bool_(), "score": pa.float64(), "samples": pa.int64(),
        "q_ret_pct": pa.float64(), "kl_mean": pa.float64(), "ipw": pa.float64(),
        "rho_sys": pa.float64(), "c_tax": pa.float64(), "n_break": pa.float64(),
        "memory_resident_bytes": pa.int64(),
        "energy_sources": pa.map_(pa.string(), pa.string()),
        "null_reasons": pa.map_(pa.string(), pa.string()),
        "rho_sys_ci_lo": pa.float64(), "n_break_ci_hi": pa.float64(),
    },
    "measure": {
        "row": pa.string(), "batch": pa.int64(), "tokens_per_s": pa.float64(),
        "ttft_ms_p99": pa.float64(), "energy_j": pa.float64(), "energy_source": pa.string(),
        "fixed_length": pa.bool_(),
    },
    "cold_load": {
        "cache_state": pa.string(), "seconds": pa.float64(), "resident_bytes": pa.int64(),
        "energy_net_j": pa.float64(),
    },
    "evaluate": {
        "sample_id": pa.string(), "score": pa.float64(), "output": pa.string(),
        "output_tokens": pa.int64(), "variant": pa.string(), "precision": pa.string(),
        "task": pa.string(), "method": pa.string(), "device": pa.string(),
    },
    "runs": {
        "stage_id": pa.string(), "started_at": pa.timestamp("us", tz="UTC"),
        "hardware": pa.map_(pa.string(), pa.string()),
    },
}

def main(results):
    for table, columns in EXPECTED.items():
        path = f"{results}/{table}.parquet"
        t = pq.read_table(path)
        assert t.num_rows > 0, f"{table}: no rows"
        meta = pq.ParquetFile(path).metadata.metadata or {}
        assert b"edge_eval.pipeline" in meta, f"{table}: no edge_eval metadata"
        # ... and on the Arrow schema, where pyarrow's readers put it.
        for schema in (pq.read_schema(path), t.schema):
            assert b"edge_eval.pipeline" in (schema.metadata or {}), f"{table}: no schema metadata"
        for name, ty in columns.items():
            got = t.schema.field(name).type
            if pa.types.is_map(ty):
                # Writers name a map's entry fields differently (keys/values, key/value).
                same = pa.types.is_map(got) and (got.key_type, got.item_type) == (
                    ty.key_type, ty.item_type)
            else:
                same = got == ty
            assert same, f"{table}.{name}: {got}, expected {ty}"
        # Every column of every table says what it holds.
        for field in t.schema:
            doc = (field.metadata or {}).get(b"description", b"")
            assert doc.strip(), f"{table}.{field.name}: no description"
    # Stage tables describe their columns (with units) in the field metadata.
    doc = pq.read_schema(f"{results}/measure.parquet").field("energy_per_request_j").metadata
    assert doc and b"(J)" in doc.get(b"description", b""), f"measure.energy_per_request_j: {doc}"
    print("pyarrow read every table with the expected types")

if __name__ == "__main__":
    main(sys.argv[1])
