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

import duckdb
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


def cpu_seconds() -> float:
    """User + system seconds of this process, DuckDB's threads included: fairer than wall on a busy host."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def read_rows(folder: Path, chunk_rows: int, to_pandas: bool) -> int:
    """Reading every file in the same chunks, without parsing or validating."""
    rows = 0
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
    return rows


def bare_load(folder: Path, target: Path) -> None:
    """Every file copied into a DuckDB file as it is, no checks: what writing the warehouse costs."""
    con = duckdb.connect(str(target))
    for path in sorted(folder.iterdir()):
        if path.name.startswith("_") or path.suffix not in (".parquet", ".csv"):
            continue
        reader = "read_parquet(?)" if path.suffix == ".parquet" else "read_csv(?, all_varchar = true)"
        con.execute(f'CREATE TABLE "{path.stem}" AS SELECT * FROM {reader}', [str(path)])
    con.execute("CHECKPOINT")
    con.close()


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
    with Clock() as read:
        rows = read_rows(data, settings.ingest.chunk_rows, to_pandas=False)
    with Clock() as read_pandas:
        read_rows(data, settings.ingest.chunk_rows, to_pandas=True)
    after_read = peak_rss_gib()
    with Clock() as bare:
        bare_load(data, work / "bare.duckdb")

    wh = Warehouse(work / "warehouse.duckdb", memory_limit=settings.warehouse.memory_limit)
    with Clock() as ingest:
        result = ingest_batch(data, wh, settings)
    planted, caught, identical = planted_rows_caught(data, wh)
    with Clock() as again:
        rerun = ingest_batch(data, wh, settings, force=True)
    wh.close()

    def line(label: str, clock: Clock) -> str:
        return (f"{label:<28}{clock.wall:>8.1f} s wall {rows / clock.wall:>12,.0f} rows/s | "
                f"{clock.cpu:>7.1f} s CPU {rows / clock.cpu:>12,.0f} rows/CPU-s")

    print(f"rows in batch               {result.rows_in:>14,}")
    for f in result.files:
        print(f"  {f.table:<24} {f.rows_in:>14,} rows  {f.seconds:6.1f} s checking and staging")
    print(f"valid / quarantined         {result.rows_valid:>14,} / {result.rows_quarantined:,} "
          f"(values cleared in kept rows: {result.values_cleared:,})")
    print(line("read only (Arrow batches)", read))
    print(line("read + to_pandas", read_pandas))
    print(line("bare DuckDB load, no checks", bare))
    print(line("validated ingestion", ingest))
    print(line("re-run, forced (no changes)", again))
    print(f"ratio to reading alone      {read.wall / ingest.wall:>8.1%} wall | {read.cpu / ingest.cpu:>7.1%} CPU  "
          f"(target >= {TARGET:.0%}); bare load alone: {read.cpu / bare.cpu:.1%} CPU")
    print(f"re-run changed              {sum(f.inserted + f.updated for f in rerun.files):>14,} rows")
    print(f"planted dirty rows     {planted:>14,}  quarantined rows {caught:,}  "
          f"identical: {'yes' if identical else 'NO'}")
    print(f"peak memory            {peak_rss_gib():>10.2f} GiB (after reading alone: {after_read:.2f} GiB)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
