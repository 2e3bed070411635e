"""Schema drift: a batch whose columns or types differ from what the pipeline expects.

A pipeline may declare the columns its source should have, by kind
(`Pipeline(expected_schema={"id": "integer", "name": "string", ...})`; pandas and Arrow
dtype names are accepted too) and a policy for batches that differ:

  evolve   take the batch as it is (the default);
  freeze   fail the batch: it goes to the dead-letter queue and TaskErrorLog, nothing loads;
  discard  drop columns the schema does not name; a missing column or a changed type still
           fails the batch, as no dropping can fix it.

A pipeline that declares nothing is held to what its source looked like last time: each
new run records its source's columns and kinds, and takes those of the newest completed run
of the same pipeline as its expectation (`etl run --accept-schema` starts from the source as
it is now). A feed that gained, lost or retyped a column is then reported on its first run.

Every drift is reported in TaskErrorLog (error type SchemaDrift, the differences in its
context) and counted in the run summary, whatever the policy. The log says it once per run,
when the run completes, with the number of batches affected (`drift_report`); each batch's
own line is at INFO (-v).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from etl.core.errors import BatchError, ConfigError
from etl.core.lazy import LazyModule
from etl.sources.base import SchemaKinds, WholeTable

pd = LazyModule("pandas")
pdt = LazyModule("pandas.api.types")
np = LazyModule("numpy")
pa = LazyModule("pyarrow")

POLICIES = ("evolve", "freeze", "discard")
KINDS = ("integer", "float", "boolean", "string", "datetime", "date", "other")

_ALIASES = {"int": "integer", "int64": "integer", "int32": "integer", "Int64": "integer",
            "float64": "float", "Float64": "float", "double": "float", "bool": "boolean",
            "str": "string", "object": "string", "timestamp": "datetime", "date32": "date"}


def kind_of_dtype(dtype: Any) -> str:
    """The coarse kind of a pandas dtype: what drift is judged on (int32 vs int64 is not
    drift; int vs string is)."""
    if pdt.is_bool_dtype(dtype):
        return "boolean"
    if pdt.is_integer_dtype(dtype):
        return "integer"
    if pdt.is_float_dtype(dtype):
        return "float"
    if pdt.is_datetime64_any_dtype(dtype):
        return "datetime"
    if pdt.is_string_dtype(dtype) or pdt.is_object_dtype(dtype):
        return "string"
    return "other"


#: Arrow type tests (pyarrow.types functions, by name: pyarrow is imported on first use) and
#: the kind of the pandas column each becomes; anything else (decimals, which arrive as
#: Decimal objects, nested and all-null columns) is "other": not judged.
_ARROW_KINDS = (("is_boolean", "boolean"), ("is_integer", "integer"), ("is_floating", "float"),
                ("is_timestamp", "datetime"), ("is_date", "date"), ("is_string", "string"),
                ("is_large_string", "string"))


def kind_of_arrow(dtype: pa.DataType) -> str:
    """The kind of an Arrow type, as `kind_of_dtype` would judge the pandas column it becomes
    (a null-free one: nulls are allowed for by `fits`)."""
    return next((kind for test, kind in _ARROW_KINDS if getattr(pa.types, test)(dtype)),
                "other")


def source_schema(source: Any) -> dict[str, str] | None:
    """A source's columns and kinds, when it can tell them (a file source once parsed, a
    table from its declared types)."""
    if isinstance(source, SchemaKinds):
        return dict(source.schema_kinds())
    if not isinstance(source, WholeTable):
        return None
    return {field.name: kind_of_arrow(field.type) for field in source.table().schema
            if not field.name.startswith("_")}


@functools.lru_cache(maxsize=1024)
def normalise_kind(name: str) -> str:
    """A declared type as a kind: a kind itself, or a pandas / Arrow dtype name (cached:
    every batch of a run is compared with the same names)."""
    if name in KINDS:
        return name
    base = name.split("[", 1)[0]
    if base in _ALIASES:
        return _ALIASES[base]
    try:
        return kind_of_dtype(pd.api.types.pandas_dtype(name))
    except TypeError:
        raise ConfigError(f"unknown type {name!r} in expected_schema; use one of "
                          f"{', '.join(KINDS)} or a pandas dtype") from None


@dataclass
class Drift:
    """How a batch's columns differ from the expected schema."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # column: (expected, found)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.changed)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing {', '.join(self.missing)}")
        if self.extra:
            parts.append(f"unexpected {', '.join(self.extra)}")
        if self.changed:
            parts.append("changed " + ", ".join(f"{c} {want} -> {got}" for c, (want, got) in self.changed.items()))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"missing": self.missing, "extra": self.extra,
                "changed": {c: list(v) for c, v in self.changed.items()}}


def compare(frame: pd.DataFrame, expected: dict[str, str], *, ignore: tuple[str, ...] = ()) -> Drift:
    """The differences between `frame`'s columns and `expected` (column -> kind), a kind
    judged on the column's values too (`fits`)."""
    have = {c: _kind(dtype) for c, dtype in frame.dtypes.items() if c not in ignore}
    want = {c: normalise_kind(k) for c, k in expected.items()}
    # the values are looked at only for a column whose dtype's kind is not the one wanted
    return compare_kinds(have, want, agree=lambda column, w, h: (
        w == h or w == "other" or fits(w, h, frame[column])))


@functools.lru_cache(maxsize=1024)
def _cached_kind(dtype: Any) -> str:
    return kind_of_dtype(dtype)


def _kind(dtype: Any) -> str:
    """`kind_of_dtype`, cached by dtype: a batch's ~20 columns cost ~0.1 ms a batch through
    pandas' type tests, and the batches of a run share a handful of dtypes."""
    try:
        return _cached_kind(dtype)
    except TypeError:  # an unhashable dtype: judged each time
        return kind_of_dtype(dtype)


def _same_kind(column: str, want: str, have: str) -> bool:
    """Kinds that agree without looking at values: equal, not judged, or integer/float."""
    return want == have or "other" in (want, have) or {want, have} == {"integer", "float"}


def compare_kinds(have: dict[str, str], want: dict[str, str], *,
                  agree: Callable[[str, str, str], bool] = _same_kind) -> Drift:
    """The differences between two schemas (column -> kind), such as a source's now and at
    its last run; `agree(column, wanted, found)` says whether a column kept its kind."""
    return Drift(missing=[c for c in want if c not in have],
                 extra=[c for c in have if c not in want],
                 changed={c: (want[c], have[c]) for c in want
                          if c in have and not agree(c, want[c], have[c])})


def fits(want: str, have: str, values: pd.Series) -> bool:
    """Whether a column of kind `have` holds values of kind `want`, allowing for how pandas
    stores a batch: an integer column with a null arrives as float64 and a boolean one as
    object, and a whole-number float column may parse as integers. An all-null column has
    no type to speak of. Only a real change of kind (text in a number column, numbers with
    fractions in an integer one) is drift."""
    if want == have or want == "other":
        return True
    if want == "float" and have == "integer":
        return True  # widening: every integer is a float
    if want == "integer" and have == "float":  # in numpy: a null's NaN is no fraction
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        return bool(np.all(np.isnan(numbers) | (numbers == np.round(numbers))))
    present = values.dropna()
    if present.empty:
        return True
    if want == "boolean" and have == "string":
        return all(isinstance(v, (bool, np.bool_)) for v in present)
    if want == "date" and have == "string":  # Arrow dates arrive as datetime.date objects
        return all(isinstance(v, dt.date) and not isinstance(v, dt.datetime) for v in present)
    return False


def apply_policy(frame: pd.DataFrame, drift: Drift, policy: str, *, where: str) -> pd.DataFrame:
    """The batch to clean under `policy`, or BatchError when the policy fails it."""
    if not drift or policy == "evolve":
        return frame
    if policy == "freeze" or drift.missing or drift.changed:
        raise SchemaDrift(f"{where}: schema drift ({drift.describe()}); policy {policy} "
                          "fails the batch")
    return frame.drop(columns=drift.extra)


def drift_report(messages: list[str], *, batches: int, policy: str) -> str | None:
    """One line for a run's log: how many of its `batches` drifted and how (`messages`: the
    Drift.describe() of each drifted batch, as TaskErrorLog holds them), most common first;
    None when none drifted."""
    if not messages:
        return None
    kinds = Counter(messages).most_common()
    shown = "; ".join(f"{text} ({count})" if len(kinds) > 1 else text
                      for text, count in kinds[:3])
    more = f"; and {len(kinds) - 3} other kind(s)" if len(kinds) > 3 else ""
    return (f"schema drift in {len(messages):,} of {batches:,} batch(es): {shown}{more}; "
            f"policy {policy}")


class SchemaDrift(BatchError):
    """A batch's schema differs from the pipeline's and its drift policy does not allow it."""
