"""Time the synthetic shop generator: wall time, rows per table, rows/s and peak memory.

Usage: ``python benchmarks/generate.py --customers 1000000 [--out DIR] [--format parquet|csv]``.
Peak memory is the process's maximum resident set size (``resource.ru_maxrss``), sampled RSS
(psutil, every 0.2 s) is printed too, so a spike between samples cannot hide.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.data.synthetic import generate_shop


class RssSampler:
    """Highest resident set size seen by a background thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--months", type=int, default=18)
    parser.add_argument("--format", dest="file_format", choices=["parquet", "csv"], default="parquet")
    parser.add_argument("--dirty-share", type=float, default=0.003)
    parser.add_argument("--out", type=Path, default=None, help="keep the files here (default: temp, deleted)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny size (300 customers, 3 months), in seconds: "
                        "tests/test_benchmarks.py runs it so the script cannot rot")
    args = parser.parse_args()
    if args.smoke:
        args.customers, args.months = 300, 3

    out = args.out or Path(tempfile.mkdtemp(prefix="aftersales-bench-"))
    started = time.perf_counter()
    with RssSampler() as sampler:
        counts = generate_shop(out, customers=args.customers, seed=args.seed, months=args.months,
                               dirty_share=args.dirty_share, file_format=args.file_format,
                               progress=args.progress)
    seconds = time.perf_counter() - started
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    sizes = {name: (out / f"{name}.{args.file_format}").stat().st_size for name in counts}

    total = sum(counts.values())
    print(f"customers {args.customers:,}  seed {args.seed}  format {args.file_format}  out {out}")
    print(f"{'table':<12} {'rows':>12} {'MiB':>9}")
    for name, rows in counts.items():
        print(f"{name:<12} {rows:>12,} {sizes[name] / 2**20:>9.1f}")
    print(f"{'total':<12} {total:>12,} {sum(sizes.values()) / 2**20:>9.1f}")
    print(f"wall time     {seconds:,.1f} s")
    print(f"rows/s        {total / seconds:,.0f}")
    print(f"peak memory   {max_rss / 2**30:.2f} GiB (ru_maxrss), {sampler.peak / 2**30:.2f} GiB (sampled RSS)")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
