"""Ingestion throughput and peak memory on a generated shop, beside the cost of reading alone.

    python benchmarks/ingest.py --customers 300000 [--format parquet|csv] [--keep DIR]
    python benchmarks/ingest.py --smoke          # a tiny shop, for the test suite

Prints rows/s of the whole validated ingestion (read, parse, every check, quarantine, duplicate
keys, orphans, merge and row versions, in one transaction) and of reading the same files alone
(Arrow batches, no conversion: the floor), their ratio against the target (validated ingestion
at >= 25 % of read throughput), the re-run of the same batch, peak memory (the process's maximum
resident set size, ru_maxrss, which includes DuckDB's own memory) and whether the quarantine holds
exactly the generator's planted dirty rows.
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

import pandas as pd
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas.settings import Settings  # noqa: E402
from tasks.data.ingest import ingest_batch  # noqa: E402
from tasks.data.warehouse import Warehouse  # noqa: E402

TARGET = 0.25  # validated ingestion at this share of read throughput (issue 15.1)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def read_seconds(folder: Path, chunk_rows: int, to_pandas: bool) -> tuple[int, float]:
    """Reading every file in the same chunks, without parsing or validating."""
    rows, started = 0, time.perf_counter()
    for path in sorted(folder.iterdir()):
        if path.name.startswith("_"):
            continue
        if path.suffix == ".parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
        elif path.suffix == ".csv":
            batches = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=64 << 20))
        else:
            continue
        for batch in batches:
            rows += len(batch.to_pandas()) if to_pandas else batch.num_rows
    return rows, time.perf_counter() - started


def planted_rows_caught(folder: Path, wh: Warehouse) -> tuple[int, int, bool]:
    planted = pd.read_csv(folder / "_dirty_manifest.csv")[["table", "source_row"]].drop_duplicates()
    caught = wh.query('SELECT DISTINCT table_name AS "table", source_row FROM quarantine')
    both = planted.merge(caught, how="outer", indicator=True)
    return len(planted), len(caught), bool((both["_merge"] == "both").all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", choices=["csv", "parquet"], default="parquet")
    parser.add_argument("--keep", type=Path, help="reuse/keep the generated shop in this folder")
    parser.add_argument("--smoke", action="store_true", help="a 300-customer shop: proves the script runs")
    args = parser.parse_args()
    customers = 300 if args.smoke else args.customers

    work = Path(tempfile.mkdtemp(prefix="aftersales-bench-"))
    data = args.keep or work / "shop"
    if not (data / "_batch.json").exists():  # in a child process, so its memory is not counted here
        started = time.perf_counter()
        code = ("from pathlib import Path; from tasks.data.synthetic import generate_shop; "
                f"generate_shop(Path({str(data)!r}), customers={customers}, seed={args.seed}, "
                f"file_format={args.format!r})")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        print(f"generated {customers:,} customers in {time.perf_counter() - started:.1f} s")
    settings = Settings()
    rows, read_s = read_seconds(data, settings.ingest.chunk_rows, to_pandas=False)
    _, pandas_s = read_seconds(data, settings.ingest.chunk_rows, to_pandas=True)
    after_read = peak_rss_gib()

    wh = Warehouse(work / "warehouse.duckdb", memory_limit=settings.warehouse.memory_limit)
    started = time.perf_counter()
    result = ingest_batch(data, wh, settings)
    ingest_s = time.perf_counter() - started
    planted, caught, identical = planted_rows_caught(data, wh)
    started = time.perf_counter()
    rerun = ingest_batch(data, wh, settings)
    rerun_s = time.perf_counter() - started
    wh.close()

    read_rate, ingest_rate = rows / read_s, result.rows_in / ingest_s
    print(f"rows in batch          {result.rows_in:>14,}")
    for f in result.files:
        print(f"  {f.table:<20} {f.rows_in:>14,} rows  {f.seconds:6.1f} s checking and staging")
    print(f"valid / quarantined    {result.rows_valid:>14,} / {result.rows_quarantined:,} "
          f"(values cleared in kept rows: {result.values_cleared:,})")
    print(f"read only (Arrow)      {read_s:>10.1f} s  {read_rate:>12,.0f} rows/s")
    print(f"read + to_pandas       {pandas_s:>10.1f} s  {rows / pandas_s:>12,.0f} rows/s")
    print(f"validated ingestion    {ingest_s:>10.1f} s  {ingest_rate:>12,.0f} rows/s")
    print(f"ratio to reading alone {ingest_rate / read_rate:>10.1%}  (target >= {TARGET:.0%}; "
          f"{ingest_rate / (rows / pandas_s):.1%} of read + to_pandas)")
    print(f"re-run (no changes)    {rerun_s:>10.1f} s  inserted+updated = "
          f"{sum(f.inserted + f.updated for f in rerun.files)}")
    print(f"planted dirty rows     {planted:>14,}  quarantined rows {caught:,}  "
          f"identical: {'yes' if identical else 'NO'}")
    print(f"peak memory            {peak_rss_gib():>10.2f} GiB (after reading alone: {after_read:.2f} GiB)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
