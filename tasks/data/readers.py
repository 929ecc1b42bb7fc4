"""Reading a source as Arrow batches of raw values, each row numbered as in its file.

CSV is read as text only (every column a string; parsing is the validator's job) by pyarrow's
streaming reader. A malformed record (a truncated last line, too many fields) is set aside with
its row number and raw text instead of refusing the file. When a field is larger than the read
block, the block grows; when the file cannot be read record by record at all (an unclosed quote
swallowing the lines after it, bytes that are not the declared encoding), a line-by-line reader
takes over that sets aside the offending line and reads on from the next one. Both raise
:class:`RetryRead` instead of continuing, so the caller discards what it staged of the file and
reads it again with the new plan: a file is always staged by one reader from its first row.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

ROW = "_source_row"
MAX_RECORD_LINES = 10_000  # a quoted field longer than this many lines is taken for an unclosed quote
MAX_RECORD_CHARS = 64 << 20


class ReadError(RuntimeError):
    """A source that cannot be read at all; the message never contains the file's content."""


@dataclass(frozen=True)
class ReadPlan:
    block_bytes: int
    max_block_bytes: int
    line_by_line: bool = False


class RetryRead(Exception):
    """Read the file again from its start with another plan (discard what was staged of it)."""

    def __init__(self, plan: ReadPlan, why: str):
        super().__init__(why)
        self.plan = plan
        self.why = why


@dataclass
class MalformedLine:
    row: int  # data row number (1 = first record after the header), as good rows are numbered
    line: int | None  # physical line in the file, when known
    text: str
    reason: str


def csv_delimiter(path: Path, delimiter: str | None) -> str:
    return delimiter or ("\t" if path.name.endswith(".tsv") else ",")


def _python_encoding(encoding: str | None) -> str:
    name = codecs.lookup(encoding or "utf8").name
    return "utf-8-sig" if name == "utf-8" else name


def read_csv_header(path: Path, delimiter: str, encoding: str | None) -> list[str]:
    """The first record's fields, however long the rows after it are."""
    try:
        with open(path, encoding=_python_encoding(encoding), newline="") as handle:
            header = next(csv.reader(handle, delimiter=delimiter), None)
    except (OSError, UnicodeDecodeError, csv.Error, LookupError) as exc:
        raise ReadError(f"{path}: cannot be read as CSV ({type(exc).__name__}) in encoding "
                        f"{encoding or 'utf8'}") from None
    if not header:
        raise ReadError(f"{path}: empty file (no header row)")
    return header


def _numbered(batch: pa.RecordBatch, rows: np.ndarray) -> pa.RecordBatch:
    return batch.append_column(ROW, pa.array(rows, pa.int64()))


def iter_csv(path: Path, columns: list[str], delimiter: str, encoding: str | None, chunk_rows: int,
             plan: ReadPlan, malformed: list[MalformedLine]) -> Iterator[pa.RecordBatch]:
    """Text batches of a CSV file with their data row numbers; bad records go to ``malformed``."""
    if plan.line_by_line:
        yield from _iter_csv_lines(path, columns, delimiter, encoding, chunk_rows, malformed)
        return
    invalid: list[tuple[int, str, int, int]] = []
    multiline = []

    def handler(row) -> str:
        if "\n" in row.text or "\r" in row.text:
            multiline.append(row.number)  # an unclosed quote: only the line reader can separate the lines
            return "error"
        invalid.append((row.number, row.text, row.expected_columns, row.actual_columns))
        return "skip"

    read = pa_csv.ReadOptions(block_size=plan.block_bytes, encoding=encoding or "utf8", use_threads=False)
    parse = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=handler)
    convert = pa_csv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)
    next_record, seen = 2, 0  # record 1 is the header; numbers count records, not physical lines
    bad_ahead: deque[int] = deque()
    try:
        reader = pa_csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            bad_ahead.extend(sorted(n for n, *_ in invalid[seen:]))
            seen = len(invalid)
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                rows, filled = np.empty(part.num_rows, dtype=np.int64), 0
                while filled < part.num_rows:  # good rows take the record numbers between skipped ones
                    while bad_ahead and bad_ahead[0] < next_record:
                        bad_ahead.popleft()
                    room = bad_ahead[0] - next_record if bad_ahead else part.num_rows
                    count = min(part.num_rows - filled, room)
                    rows[filled:filled + count] = np.arange(next_record, next_record + count)
                    filled += count
                    next_record += count
                    if filled < part.num_rows:
                        next_record = bad_ahead.popleft() + 1
                if _has_line_breaks(part):
                    raise RetryRead(replace(plan, line_by_line=True), "values span several lines")
                yield _numbered(part, rows - 1)
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if multiline:
            raise RetryRead(replace(plan, line_by_line=True), "a quote is not closed") from None
        if "straddling" in text or "straddles" in text:
            bigger = plan.block_bytes * 4
            if bigger <= plan.max_block_bytes:
                raise RetryRead(replace(plan, block_bytes=bigger), "a field is larger than the read block") from None
            raise RetryRead(replace(plan, line_by_line=True), "a field is larger than the largest block") from None
        raise RetryRead(replace(plan, line_by_line=True), "the file cannot be read record by record") from None
    malformed.extend(MalformedLine(n - 1, None, text, f"expected {expected} fields, found {actual} "
                                   "(a truncated or broken line)") for n, text, expected, actual in invalid)


def _has_line_breaks(batch: pa.RecordBatch) -> bool:
    """Quoted values with line breaks: only the careful reader tells them from an unclosed quote."""
    return any(pc.any(pc.match_substring(column, mark)).as_py() for column in batch.columns for mark in "\n\r")


def _parse_record(text: str, delimiter: str) -> tuple[str, list[str] | None]:
    """("ok", fields), ("open", None) while a quoted field is still open, or ("broken", None).

    Strict: a quote inside a quoted value must be doubled, so a quote left open by a broken line
    is not silently closed by the next stray quote, merging two records into one.
    """
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter, strict=True))
    except csv.Error as exc:
        return ("open", None) if "unexpected end of data" in str(exc) else ("broken", None)
    return ("ok", rows[0]) if len(rows) == 1 else ("broken", None)


def _iter_csv_lines(path: Path, columns: list[str], delimiter: str, encoding: str | None, chunk_rows: int,
                    malformed: list[MalformedLine]) -> Iterator[pa.RecordBatch]:
    """The slow, careful reader: one physical line at a time, so one broken line costs one line.

    A record that spans lines but is broken (a quote never closed, or closed by a stray quote,
    or the wrong number of fields) costs its first line only: that line is set aside and the
    lines after it are read again as records of their own.
    """
    codec = _python_encoding(encoding)
    if codecs.lookup(codec).name.startswith(("utf-16", "utf-32")):
        raise ReadError(f"{path}: malformed CSV in {codec}; re-export it as UTF-8 to have bad lines set aside")
    width = len(columns)
    buffer: list[list[str]] = []
    numbers: list[int] = []
    record = 0
    queue: deque[tuple[int, str | None, bytes]] = deque()
    pending: list[tuple[int, str]] = []

    def lines() -> Iterator[tuple[int, str | None, bytes]]:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if number == 1:
                    continue  # the header, read by read_csv_header
                try:
                    yield number, raw.decode(codec), raw
                except UnicodeDecodeError:
                    yield number, None, raw

    source = lines()

    def flush() -> pa.RecordBatch:
        arrays = [pa.array([r[i] for r in buffer], pa.string()) for i in range(width)]
        batch = pa.RecordBatch.from_arrays(arrays, names=columns)
        out = _numbered(batch, np.asarray(numbers, dtype=np.int64))
        buffer.clear()
        numbers.clear()
        return out

    def set_aside(line: tuple[int, str], reason: str) -> None:
        nonlocal record
        record += 1
        malformed.append(MalformedLine(record, line[0], line[1].rstrip("\r\n"), f"line {line[0]}: {reason}"))

    def give_up_first(reason: str, then: list | None = None) -> None:
        """Set the pending record's first line aside and read its other lines again."""
        nonlocal pending
        first, *rest = pending
        pending = []
        set_aside(first, reason)
        queue.extendleft(reversed([(n, t, t.encode()) for n, t in rest] + (then or [])))

    unclosed = "a quote is opened but never properly closed (this line is set aside, the next ones are read)"
    while True:
        item = queue.popleft() if queue else next(source, None)
        if item is None:
            if not pending:
                break
            give_up_first(unclosed)
            continue
        number, text, raw = item
        if text is None:
            if pending:
                give_up_first(unclosed, [item])
                continue
            set_aside((number, raw.decode(codec, errors="replace")), f"not valid {encoding or 'utf8'} text")
            continue
        if not pending and not text.strip():
            continue  # blank lines are not records (as for the fast reader)
        pending.append((number, text))
        joined = "".join(t for _, t in pending)
        status, fields = _parse_record(joined, delimiter)
        if status == "open":
            if len(pending) > MAX_RECORD_LINES or len(joined) > MAX_RECORD_CHARS:
                give_up_first(unclosed)
            continue
        if status == "broken" or len(fields) != width:
            if len(pending) > 1:
                give_up_first(unclosed)
                continue
            reason = ("a quote inside a quoted value is not doubled" if status == "broken"
                      else f"expected {width} fields, found {len(fields)}")
            pending = []
            set_aside((number, text), reason)
            continue
        pending = []
        record += 1
        buffer.append(fields)
        numbers.append(record)
        if len(buffer) >= chunk_rows:
            yield flush()
    if buffer:
        yield flush()


def iter_parquet(path: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ReadError(f"{path}: cannot be read as parquet ({type(exc).__name__})") from None
    offset = 0
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        yield _numbered(batch, np.arange(offset + 1, offset + 1 + batch.num_rows))
        offset += batch.num_rows


def iter_query(con: duckdb.DuckDBPyConnection, sql: str, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """A mapping query's rows in a fixed order, so row numbers repeat across runs."""
    reader = con.sql(f"SELECT * FROM ({sql}) ORDER BY ALL").to_arrow_reader(chunk_rows)
    offset = 0
    for batch in reader:
        if batch.num_rows:
            yield _numbered(batch, np.arange(offset + 1, offset + 1 + batch.num_rows))
            offset += batch.num_rows
