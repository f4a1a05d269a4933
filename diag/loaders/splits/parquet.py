"""Parquet (needs pyarrow, the `diag[parquet]` extra), read one record batch at a time."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import InputError
from diag.loaders.splits.common import (
    IdTracker,
    Layout,
    RowIds,
    check_indices,
    check_size,
    column_roles,
    id_by_name,
    make_layout,
    one_line,
    split_chunk,
    string_array,
)
from diag.loaders.splits.model import TEXT, Split, TableChunk


def import_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            path, "reading Parquet needs pyarrow: pip install 'diag[parquet]'"
        ) from None
    return pq


@contextmanager
def arrow_errors(path: Path) -> Generator[None, None, None]:
    """pyarrow raises many types (ArrowInvalid, OSError, ...) on a corrupt file."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"unreadable Parquet file ({one_line(exc)})") from None


def arrow_type(kind: Any) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if any(f(kind) for f in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)):
        return "numeric"
    if pa.types.is_decimal(kind):
        return "numeric"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_temporal(kind):
        return "text"
    if getattr(pa.types, "is_string_view", lambda _: False)(kind):
        return "text"
    return str(kind)


def open_parquet(
    name: str, path: Path, label_column: str | None, group_column: str | None
) -> Split:
    pq = import_parquet(path)
    with arrow_errors(path):
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        rows = pf.metadata.num_rows
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    names = list(schema.names)
    if len(set(names)) != len(names):
        raise InputError(path, "duplicate column names")
    if rows == 0:
        raise InputError(path, "no rows")
    roles = column_roles(path, names, label_column, group_column)
    types = [arrow_type(schema.field(i).type) for i in range(len(names))]
    candidates = [
        i
        for i, t in enumerate(types)
        if t == "text" and i not in roles and not id_by_name(names[i])
    ]
    id_values = _parquet_id_columns(path, pf, names, candidates, rows)
    layout = make_layout(path, names, roles, types, id_values, ())
    labels = _parquet_values(path, pf, names[roles[0]]) if roles[0] is not None else None
    groups = _parquet_values(path, pf, names[roles[1]]) if roles[1] is not None else None
    samples = _ParquetSamples(path, pf, layout, sizes)
    return Split(
        name, path, layout.kind, samples, labels, groups, RowIds(rows), layout.columns,
        layout.notes,
    )  # fmt: skip


def _parquet_id_columns(
    path: Path, pf: Any, names: list[str], candidates: list[int], rows: int
) -> list[bool]:
    """One pass over the text columns only, stopping once none can be an id column."""
    trackers = {i: IdTracker() for i in candidates}
    if trackers:
        with arrow_errors(path):
            for batch in pf.iter_batches(batch_size=65_536, columns=[names[i] for i in trackers]):
                for i, tracker in trackers.items():
                    for value in batch.column(names[i]).to_pylist():
                        if value is None:
                            tracker.alive = False
                            break
                        tracker.add(str(value))
                if not any(t.alive for t in trackers.values()):
                    break
    return [i in trackers and trackers[i].all_distinct(rows) for i in range(len(names))]


def _parquet_values(path: Path, pf: Any, column: str) -> np.ndarray:
    with arrow_errors(path):
        values = pf.read(columns=[column]).column(0)
    return arrow_values(path, values)


def arrow_values(path: Path, values: Any) -> np.ndarray:
    """Labels or groups from one Arrow column: integers stay integers, numbers with nulls
    become float64 (NaN), anything else strings."""
    import pyarrow as pa

    with arrow_errors(path):
        kind = values.type
        if values.null_count == 0 and (pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            return values.to_numpy()
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            return np.asarray(values.cast(pa.float64()).to_numpy(), dtype=np.float64)
        return string_array(["" if v is None else str(v) for v in values.to_pylist()])


class _ParquetSamples:
    """Record batches of the feature columns only; `take` reads just the row groups it needs."""

    def __init__(self, path: Path, pf: Any, layout: Layout, sizes: list[int]) -> None:
        self._path, self._pf, self._layout = path, pf, layout
        self._starts = np.cumsum([0, *sizes])
        self._columns = [layout.names[i] for i in (*layout.numeric, *layout.text)]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def chunks(self, size: int) -> Iterator[tuple[int, object]]:
        import pyarrow as pa

        check_size(size)
        done, pending = 0, []
        with arrow_errors(self._path):
            batches = self._pf.iter_batches(batch_size=size, columns=self._columns)
        while True:
            with arrow_errors(self._path):
                batch = next(batches, None)
            if batch is not None:
                pending.append(batch)
            held = sum(b.num_rows for b in pending)
            # Row groups end batches early: regroup so every chunk but the last has `size` rows.
            while held >= size or (batch is None and held):
                table = pa.Table.from_batches(pending)
                take = min(size, held)
                yield done, self._convert(table.slice(0, take))
                done, held = done + take, held - take
                pending = table.slice(take).to_batches()
            if batch is None:
                return

    def take(self, indices: Sequence[int]) -> list[object]:
        wanted = check_indices(indices, len(self))
        found: dict[int, object] = {}
        groups = np.searchsorted(self._starts, wanted, side="right") - 1
        for group in sorted(set(groups.tolist())):
            with arrow_errors(self._path):
                table = self._pf.read_row_group(group, columns=self._columns)
            for i in sorted(set(wanted[groups == group].tolist())):
                local = i - int(self._starts[group])
                found[i] = split_chunk(self._convert(table.slice(local, 1)), 1)[0]
        return [found[i] for i in wanted.tolist()]

    def _convert(self, table: Any) -> object:
        return arrow_chunk(self._path, self._layout, table)


def arrow_chunk(path: Path, layout: Layout, table: Any) -> object:
    """The chunk for an Arrow table of a layout's feature columns."""
    import pyarrow as pa

    n = table.num_rows
    with arrow_errors(path):
        texts = [
            ["" if v is None else str(v) for v in table.column(layout.names[j]).to_pylist()]
            for j in layout.text
        ]
        numeric = np.empty((n, len(layout.numeric)), dtype=np.float64)
        for k, j in enumerate(layout.numeric):
            column = table.column(layout.names[j]).cast(pa.float64(), safe=False)
            numeric[:, k] = column.to_numpy()
    if layout.kind == TEXT:
        return texts[0]
    if layout.image_shape is not None:
        return numeric.reshape(n, *layout.image_shape)
    if not texts:
        return TableChunk(numeric)
    heads = [layout.names[j] for j in layout.text]
    joined = [
        "|".join(f"{h}={v}" for h, v in zip(heads, row, strict=True))
        for row in zip(*texts, strict=True)
    ]
    return TableChunk(numeric, joined)
