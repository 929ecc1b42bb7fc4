"""Ingestion throughput and peak memory on a generated shop.

    python benchmarks/ingest.py --customers 1000000 [--format parquet] [--keep DIR]

Prints rows/s of the whole validated ingestion (parse, pandera, whole-batch checks, merge) and
of reading alone, so the cost of validation shows as a ratio. Peak memory is the process's
maximum resident set size (ru_maxrss), which includes DuckDB's own memory.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from schemas.settings import Settings
from tasks.data.ingest import ingest_batch
from tasks.data.warehouse import Warehouse


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def read_only_seconds(folder: Path, chunk_rows: int) -> tuple[int, float]:
    """Reading every file in the same chunks, without parsing or validating: the floor."""
    rows, started = 0, time.perf_counter()
    for path in sorted(folder.iterdir()):
        if path.name.startswith("_"):
            continue
        if path.suffix == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                rows += len(batch.to_pandas())
        elif path.suffix == ".csv":
            for batch in pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=64 << 20)):
                rows += len(batch.to_pandas())
    return rows, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", choices=["csv", "parquet"], default="parquet")
    parser.add_argument("--keep", type=Path, help="reuse/keep the generated shop in this folder")
    parser.add_argument("--smoke", action="store_true", help="tiny size (300 customers), in seconds: "
                        "tests/test_benchmarks.py runs it so the script cannot rot")
    args = parser.parse_args()
    if args.smoke:
        args.customers = 300

    work = Path(tempfile.mkdtemp(prefix="aftersales-bench-"))
    data = args.keep or work / "shop"
    if not (data / "_batch.json").exists():  # in a child process, so its memory is not counted here
        started = time.perf_counter()
        code = ("from pathlib import Path; from tasks.data.synthetic import generate_shop; "
                f"generate_shop(Path({str(data)!r}), customers={args.customers}, seed={args.seed}, "
                f"file_format={args.format!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"generated {args.customers:,} customers in {time.perf_counter() - started:.1f} s")
    settings = Settings()
    rows, read_s = read_only_seconds(data, settings.ingest.chunk_rows)
    after_read = peak_rss_gib()

    wh = Warehouse(work / "warehouse.duckdb", memory_limit=settings.warehouse.memory_limit)
    started = time.perf_counter()
    result = ingest_batch(data, wh, settings)
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    rerun = ingest_batch(data, wh, settings)
    rerun_s = time.perf_counter() - started
    wh.close()

    print(f"rows in batch          {result.rows_in:>14,}")
    for f in result.files:
        print(f"  {f.table:<20} {f.rows_in:>14,} rows  {f.seconds:6.1f} s staging")
    print(f"valid / quarantined    {result.rows_valid:>14,} / {result.rows_quarantined:,}")
    print(f"read only              {read_s:>10.1f} s  {rows / read_s:>12,.0f} rows/s")
    print(f"validated ingestion    {ingest_s:>10.1f} s  {result.rows_in / ingest_s:>12,.0f} rows/s")
    print(f"validation cost        {ingest_s / read_s:>10.1f} x reading alone")
    print(f"re-run (no changes)    {rerun_s:>10.1f} s  inserted+updated = "
          f"{sum(f.inserted + f.updated for f in rerun.files)}")
    print(f"peak memory            {peak_rss_gib():>10.2f} GiB (after reading alone: {after_read:.2f} GiB)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
