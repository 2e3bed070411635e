"""How a batch is shaped for a Delta table, before DeltaSink commits it (etl.sinks.delta).

`to_arrow` checks the batch (SEQ_COLUMN of 40-digit text in every row, the key and
partition columns present, for a merge no null key) and converts it to Arrow with one row
per key for a merge (the greatest sequence). `conform` fits it to an existing table's
schema: types of one family are cast where no value changes, a column of only nulls takes
the table's type or is left out, a change of kind is one BatchError naming the column.
`writer_properties` are the Parquet settings of the files written, `ident` quotes a column
for a Delta predicate, `one_line` flattens delta-rs' multi-line errors.

pandas, pyarrow and deltalake are imported inside the functions, so importing the module
costs nothing; `load_deltalake` turns a missing deltalake package into one ConfigError.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

from etl.core.errors import BatchError, ConfigError
from etl.sinks.base import SEQ_COLUMN, SEQ_LENGTH

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from deltalake import DeltaTable

INSTALL_HINT = "DeltaSink needs the deltalake package: pip install 'dramatiq-etl[delta]'"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_deltalake() -> Any:
    """The deltalake package, or ConfigError (one line) when it is not installed."""
    try:
        import deltalake
        import deltalake.exceptions  # noqa: F401 - used through the package
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return deltalake


def writer_properties() -> Any:
    """Parquet settings of the files the sink writes: the defaults, except SEQ_COLUMN, whose
    values are unique (a dictionary is built for nothing) and share long prefixes (run,
    shard, batch): DELTA_BYTE_ARRAY stores those once per page. ~5% less time per batch,
    same size; every Parquet reader decodes it."""
    dl = load_deltalake()
    return dl.WriterProperties(column_properties={SEQ_COLUMN: dl.ColumnProperties(
        dictionary_enabled=False, encoding="DELTA_BYTE_ARRAY")})


def one_line(exc: BaseException) -> str:
    """An error's message on one line (delta-rs nests causes over lines with colour codes)."""
    text = _ANSI.sub("", str(exc))
    return " ".join(part.strip(" ↳") for part in text.splitlines() if part.strip(" ↳")) or repr(exc)


def ident(name: str) -> str:
    """A column name quoted for a Delta predicate (keeps case and odd characters)."""
    return "`" + name.replace("`", "``") + "`"


def family(t: pa.DataType) -> str:
    """The kind of values a type holds: types of one family can be cast into each other
    (delta-rs does so on write), types of two families cannot be merged into one column."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    checks = (("null", pa.types.is_null), ("boolean", pa.types.is_boolean),
              ("number", lambda x: pa.types.is_integer(x) or pa.types.is_floating(x)
               or pa.types.is_decimal(x)),
              ("text", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)
               or pa.types.is_string_view(x)),
              ("binary", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x)
               or pa.types.is_fixed_size_binary(x) or pa.types.is_binary_view(x)),
              ("time", lambda x: pa.types.is_timestamp(x) or pa.types.is_date(x)),
              ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x)
               or pa.types.is_list_view(x) or pa.types.is_fixed_size_list(x)))
    for name, check in checks:
        if check(t):
            return name
    return str(t)


def to_arrow(frame: pd.DataFrame, *, key: Sequence[str], partition_by: Sequence[str],
             merge: bool, where: str) -> pa.Table:
    """The batch as Arrow: sequence checked, and for a merge (`merge`) one row per `key`
    (the greatest sequence). The `key` and `partition_by` columns must be in the batch; a
    merge needs a key without nulls. Any failure is a BatchError starting with `where`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from etl.core.arrow import frame_to_arrow

    if SEQ_COLUMN not in frame.columns:
        raise BatchError(f"{where}: the batch has no {SEQ_COLUMN} column; DeltaSink is "
                         "loaded by the runtime, which adds it")
    needed = [c for c in (*key, *partition_by) if c not in frame.columns]
    if merge and not key:
        raise BatchError(f"{where}: DeltaSink merge needs a key; give key= or bind it with "
                         "with_key (a Pipeline does)")
    if needed:
        raise BatchError(f"{where}: the batch lacks the column(s) {', '.join(needed)} "
                         f"the Delta table is keyed or partitioned on")
    if merge:
        nulls = [k for k in key if frame[k].isna().any()]
        if nulls:
            raise BatchError(f"{where}: key column(s) {', '.join(nulls)} hold nulls; a merge "
                             "cannot match a row without its key")
        if frame.duplicated(list(key)).any():
            frame = frame.sort_values(SEQ_COLUMN, kind="stable").drop_duplicates(
                list(key), keep="last")
    try:  # one thread (a pool per batch costs more than it saves on 50,000 rows), and
        data = frame_to_arrow(frame)  # the column bookkeeping once per schema
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise BatchError(f"{where}: cannot convert the batch for Delta: {one_line(exc)}") from exc
    data = data.replace_schema_metadata(None)
    seq = data.column(SEQ_COLUMN)
    if family(seq.type) != "text":
        raise BatchError(f"{where}: {SEQ_COLUMN} must be text, not {seq.type}")
    lengths = pc.min_max(pc.binary_length(seq))  # bytes: a digit is one
    if seq.null_count or (len(seq) and (lengths["min"].as_py() != SEQ_LENGTH
                                        or lengths["max"].as_py() != SEQ_LENGTH)):
        raise BatchError(f"{where}: {SEQ_COLUMN} must hold {SEQ_LENGTH}-digit text in every row")
    return data


def conform(data: pa.Table, table: DeltaTable, *, where: str) -> tuple[pa.Table, bool]:
    """`data` shaped for `table`: a column of nulls takes the table's type (pandas gives an
    all-null column no type, and an integer column with a null becomes float), a number is
    cast to the table's number type when no value changes, a column the table lacks stays
    (schema merge) unless it is only nulls, a column the batch lacks is nulls. A column
    whose kind changed (text into a number column...) is a BatchError starting with `where`.
    Also says whether the batch adds columns."""
    import pyarrow as pa

    schema = pa.schema(table.schema().to_arrow())
    names, columns, adds = [], [], False
    for field, column in zip(data.schema, data.columns):
        if pa.types.is_dictionary(field.type):
            column = column.cast(field.type.value_type)
        index = schema.get_field_index(field.name)
        if index < 0:
            if pa.types.is_null(column.type):
                continue  # no type to give it yet: a later batch with values adds it
            adds = True
        else:
            target = schema.field(index).type
            kind, table_kind = family(column.type), family(target)
            if column.type == target:
                pass
            elif kind == "null":
                column = pa.nulls(len(column), target)
            elif kind != table_kind:
                raise BatchError(f"{where}: column {field.name!r} is {column.type} in this batch "
                                 f"but {target} in the Delta table")
            elif kind == "number":
                try:
                    column = column.cast(target, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise BatchError(f"{where}: column {field.name!r}: {column.type} values do "
                                     f"not fit the Delta table's {target} column "
                                     f"({one_line(exc)[:120]})") from exc
        names.append(field.name)
        columns.append(column)
    for field in schema:
        if field.name not in names:
            names.append(field.name)
            columns.append(pa.nulls(data.num_rows, field.type))
    return pa.Table.from_arrays(columns, names=names), adds


def without_null_columns(data: pa.Table) -> pa.Table:
    """`data` without its columns of type null (all values missing, so no type known): a
    new table takes its columns' types from the first batch, and a later batch with values
    adds such a column."""
    import pyarrow as pa

    keep = [name for name, t in zip(data.column_names, data.schema.types) if not pa.types.is_null(t)]
    return data.select(keep) if len(keep) != data.num_columns else data


__all__ = ["INSTALL_HINT", "SEQ_LENGTH", "conform", "family", "ident", "load_deltalake",
           "one_line", "to_arrow", "without_null_columns", "writer_properties"]
