"""Rendering command results as an aligned table, JSON or CSV: the one place output is formatted."""

import csv
import datetime as dt
import itertools
import json
import math
import sys
from collections.abc import Iterator

import pyarrow as pa


def _plain(value):
    """A JSON-friendly version of one cell."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        shown = ", ".join(_cell(v) for v in value[:4])
        return f"[{shown}{', …' if len(value) > 4 else ''}]" + (f" ({len(value)})" if len(value) > 4 else "")
    if isinstance(value, dict):
        return json.dumps(_plain(value))
    return str(value)


def rows_of(result) -> list[dict] | None:
    """Rows from an Arrow table or a list of dicts; ``None`` for anything else."""
    if isinstance(result, pa.Table):
        return result.to_pylist()
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
        return result
    return None


def render(result, fmt: str = "table", out=None) -> None:
    """Write ``result`` (Arrow table, list of row dicts, dict, or text) to ``out`` in ``fmt``.

    An iterator of row dicts is written as its rows come in JSON and CSV (memory stays bounded
    however many rows there are); a table needs every row for its widths and collects them.
    """
    out = out or sys.stdout
    if result is None:
        return
    if isinstance(result, Iterator):
        if fmt in ("json", "csv"):
            return _stream(result, fmt, out)
        result = list(result)
    rows = rows_of(result)
    if fmt == "json":
        out.write(json.dumps(_plain(rows if rows is not None else result), indent=2, ensure_ascii=False) + "\n")
    elif rows is None and isinstance(result, dict):
        for key, value in result.items():
            nested = rows_of(value) if isinstance(value, list) and value else None
            if nested is not None:
                out.write(f"\n{key}:\n")
                render(nested, fmt, out)
            else:
                out.write(f"{key}: {_cell(value)}\n")
    elif rows is None:
        out.write(f"{result}\n")
    elif fmt == "csv":
        columns = list(result.column_names) if isinstance(result, pa.Table) else _columns(rows)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(_csv_cells(row, columns))
    else:
        columns = list(result.column_names) if isinstance(result, pa.Table) else _columns(rows)
        out.write(table_text(columns, [[_clipped(_cell(row.get(c))) for c in columns] for row in rows]))


def _csv_cells(row: dict, columns: list[str]) -> list:
    return [json.dumps(_plain(row.get(c))) if isinstance(row.get(c), list | dict) else _plain(row.get(c)) for c in columns]


def _stream(rows: Iterator[dict], fmt: str, out) -> None:
    """Rows written one by one, flushed as they come: the same text ``render`` gives a list.

    CSV takes its columns from the first row, so every row should have the same keys.
    """
    first = next(rows, None)
    rows = itertools.chain([first], rows) if first is not None else iter(())
    if fmt == "csv":
        writer, columns = csv.writer(out, lineterminator="\n"), list(first or {})
        writer.writerow(columns)
        for row in rows:
            writer.writerow(_csv_cells(row, columns))
            out.flush()
        return
    opening = "[\n"
    for row in rows:
        # indent at "\n" only: textwrap would also break at U+0085 or U+2028 inside a string
        out.write(opening + "  " + json.dumps(_plain(row), indent=2, ensure_ascii=False).replace("\n", "\n  "))
        out.flush()
        opening = ",\n"
    out.write("[]\n" if opening == "[\n" else "\n]\n")


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


#: The widest cell an aligned table shows; --json and --csv give every value whole.
MAX_CELL = 60


def _clipped(text: str) -> str:
    """One line of at most :data:`MAX_CELL` characters, an ellipsis marking what was cut."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table_text(columns: list[str], cells: list[list[str]]) -> str:
    """An aligned plain-text table: header, a rule, one line per row (numbers right-aligned)."""
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(r[i]) for r in cells if r[i]) and any(r[i] for r in cells) for i in range(len(columns))]

    def line(values):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule] + [line(r) for r in cells]) + "\n"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
