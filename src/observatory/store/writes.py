"""The span write path: one transaction per batch; rollups and trace summaries from the rows
actually inserted, so a retried batch is neither stored nor counted twice.

Rows reach a store either as tuples in ``SPAN_COLUMNS`` order (:func:`span_to_row`) or already
encoded for PostgreSQL's COPY (:class:`Encoded`, made by the ingest worker processes), together
with :class:`Aggregates`: the rollup and trace-summary increments of those rows, also computed off
the writer thread.

PostgreSQL, fast path (a batch with aggregates): COPY straight into ``spans``, then one statement
that upserts the pre-aggregated rollups and trace summaries from arrays. A span that is already
stored (a client's retry) makes the COPY fail on the unique key; the transaction is rolled back
and the batch takes the general path.
PostgreSQL, general path: COPY into a session-temporary staging table, then one statement
``INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`` whose returned rows feed the rollup,
latency-histogram and trace-summary upserts (data-modifying CTEs, one round trip).
SQLite: one ``BEGIN IMMEDIATE`` transaction; existing keys are filtered out first, then rows,
rollups and trace summaries are written with executemany.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, NamedTuple, Protocol, overload

import orjson
import psycopg

from observatory.model import STATUS_ERROR, Span
from observatory.store.histogram import bucket_index, bucket_sql
from observatory.store.schema import ROLLUP_DIMENSIONS, ROLLUP_SUMS, SPAN_COLUMNS, USD_SCALE

Row = tuple[Any, ...]
_COL = {name: i for i, name in enumerate(SPAN_COLUMNS)}
_COST_COLUMNS = (_COL["input_cost_usd"], _COL["output_cost_usd"], _COL["total_cost_usd"])
_KEEP = len(SPAN_COLUMNS)  # index of the trailing "keep" flag of a row


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; keep the rest of the string.
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str)


def _json(value: Any) -> str:
    return _dumps(value).decode()


class Screen(Protocol):
    """Redaction applied while a row is built (see ``Redactor.serialized``)."""

    def text(self, value: str) -> str: ...

    def fires(self, value: str) -> bool: ...

    def serialized(self, value: Any, encoded: bytes, dumps: Callable[[Any], bytes]) -> bytes: ...


def span_to_row(
    project_id: int, span: Span, keep: bool = True, screen: Screen | None = None
) -> Row:
    """A span as a tuple in ``SPAN_COLUMNS`` order plus a last element ``keep``: False for a
    span that sampling left out, which then only counts in the rollups.

    ``screen`` redacts the span's text and JSON values on the way (the redactor's fast path:
    each JSON value is scanned once, as encoded, and re-encoded only when a detector may fire).
    """
    usage = span.usage
    cost = span.cost
    values = (
        span.prompt,
        span.completion,
        span.attributes,
        span.resource_attributes,
        span.events,
        span.links,
    )
    if screen is None:
        json_values = [None if v is None else _dumps(v).decode() for v in values]
    else:
        json_values = [
            None if v is None else screen.serialized(v, _dumps(v), _dumps).decode() for v in values
        ]
    name, status_message = span.name, span.status_message
    session_id, user_id = span.session_id, span.user_id
    if screen is not None and screen.fires(
        f"{name}\x00{status_message}\x00{session_id}\x00{user_id}"
    ):
        name = screen.text(name)
        status_message = screen.text(status_message) if status_message else None
        session_id = screen.text(session_id) if session_id else session_id
        user_id = screen.text(user_id) if user_id else user_id
    return (
        project_id,
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        _text(name) or "",
        span.kind,
        span.start_time_unix_nano,
        span.end_time_unix_nano,
        span.duration_ms,
        span.status_code,
        _text(status_message),
        _text(span.service_name),
        _text(span.environment),
        _text(span.scope_name),
        _text(span.provider),
        _text(span.operation),
        _text(span.request_model),
        _text(span.response_model),
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        usage.total_tokens,
        cost.input_usd if cost else None,
        cost.output_usd if cost else None,
        cost.total_usd if cost else None,
        span.time_to_first_token_ms,
        _text(span.finish_reason),
        _text(session_id),
        _text(user_id),
        *json_values,
        keep,
    )


class Encoded(NamedTuple):
    """A span row already in PostgreSQL's COPY text format (no line end), and its keep flag."""

    line: str
    keep: bool


class EncodedRows(Sequence[Encoded]):
    """The rows of one or more requests in COPY text format, held as one string.

    One string crosses from a worker process to the server process as a single copy, and the
    common write (every row kept, COPY straight into ``spans``) sends it on untouched; it is
    split into :class:`Encoded` rows only when a row has to be looked at on its own.
    """

    __slots__ = ("_lines", "keep", "size", "text")
    text: str
    size: int
    keep: list[bool] | None

    def __init__(self, text: str, size: int, keep: list[bool] | None = None) -> None:
        self.text = text  # every line ends with "\n"
        self.size = size
        self.keep = keep  # None: every row is kept
        self._lines: list[str] | None = None

    @classmethod
    def of(cls, rows: Sequence[Row]) -> EncodedRows:
        keep = [bool(row[_KEEP]) for row in rows]
        text = "".join(f"{copy_line(row)}\n" for row in rows)
        return cls(text, len(rows), None if all(keep) else keep)

    @classmethod
    def concat(cls, parts: Sequence[EncodedRows]) -> EncodedRows:
        if len(parts) == 1:
            return parts[0]
        keep: list[bool] | None = None
        if any(part.keep is not None for part in parts):
            keep = [k for part in parts for k in (part.keep or [True] * part.size)]
        return cls("".join(part.text for part in parts), sum(p.size for p in parts), keep)

    def __getstate__(self) -> tuple[str, int, list[bool] | None]:
        return self.text, self.size, self.keep

    def __setstate__(self, state: tuple[str, int, list[bool] | None]) -> None:
        self.text, self.size, self.keep = state
        self._lines = None

    def __len__(self) -> int:
        return self.size

    def _split(self) -> list[str]:
        if self._lines is None:
            self._lines = self.text.split("\n")[: self.size]
        return self._lines

    @overload
    def __getitem__(self, index: int) -> Encoded: ...

    @overload
    def __getitem__(self, index: slice) -> list[Encoded]: ...

    def __getitem__(self, index: int | slice) -> Encoded | list[Encoded]:
        lines = self._split()
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        return Encoded(lines[index], True if self.keep is None else self.keep[index])

    @property
    def stored(self) -> int:
        """Rows meant for the spans table."""
        return self.size if self.keep is None else sum(self.keep)

    def kept_text(self) -> str:
        if self.keep is None:
            return self.text
        return "".join(f"{line}\n" for line, k in zip(self._split(), self.keep, strict=True) if k)

    def staged_text(self) -> str:
        """Every row with its keep flag as the last column (the staging table's layout)."""
        keep = self.keep or [True] * self.size
        return "".join(
            f"{line}\t{'t' if k else 'f'}\n" for line, k in zip(self._split(), keep, strict=True)
        )


class SpanStore(Protocol):
    """A dedicated write connection owned by the writer thread."""

    def write(self, rows: Sequence[Any], aggregates: Aggregates | None = None) -> int:
        """Insert ``rows`` in one transaction; return how many were new. ``aggregates``, when
        given, are exactly the rollup and trace increments of all of ``rows``."""

    def close(self) -> None: ...


# --- COPY text encoding -------------------------------------------------------------------------

_COPY_CONTROL = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: str) -> str:
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.translate(_COPY_CONTROL)
    return value


def copy_line(row: Row) -> str:
    """The span columns of ``row`` as one line of COPY text format (without the line end).

    NUL cannot occur in a value (:func:`span_to_row` replaced it in every text value, and JSON
    escapes it), so it marks NULL while the line is built: the whole line is then escaped at
    once, and only a line whose text holds a tab, newline or carriage return is built again
    field by field. Floats print as Python writes them ("inf" and "nan" included), which
    PostgreSQL reads back exactly.
    """
    values = ["\x00" if v is None else v if type(v) is str else str(v) for v in row[:_KEEP]]
    line = "\t".join(values)
    if line.count("\t") != _KEEP - 1 or "\n" in line or "\r" in line:
        return "\t".join("\\N" if v == "\x00" else _copy_text(v) for v in values)
    if "\\" in line:
        line = line.replace("\\", "\\\\")
    return line.replace("\x00", "\\N")


def encode_rows(rows: Sequence[Row]) -> EncodedRows:
    return EncodedRows.of(rows)


# --- aggregation --------------------------------------------------------------------------------

_TOKEN_COLS = tuple(
    _COL[c]
    for c in (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    )
)
_I = {name: _COL[name] for name in SPAN_COLUMNS}
# Positions in a trace accumulator (see Aggregates.traces).
T_START, T_END, T_ROOT_ID, T_ROOT_NAME, T_SPANS, T_LLM, T_ERRORS = range(7)
T_IN, T_OUT, T_TOTAL, T_COST, T_SERVICE, T_ENV, T_USER, T_SESSION = range(7, 15)


def usd_units(value: Decimal | None) -> int | None:
    """A cost in units of 1e-10 USD, rounded as PostgreSQL's numeric(20,10) rounds it."""
    if value is None:
        return None
    return int((value * USD_SCALE).to_integral_value(ROUND_HALF_UP))


@dataclass(slots=True)
class Aggregates:
    """Rollup and trace-summary increments of a set of rows, ready to be upserted.

    ``sums[grain][key]`` = [requests, errors, 5 token sums, cost units, duration sum];
    ``latency[grain][(*key, bucket)]`` = count; ``traces[(project, trace)]`` = the T_* fields.
    Rollups count every row (sampled-out ones too); traces only the rows that are stored.
    """

    sums: dict[str, dict[tuple[Any, ...], list[Any]]] = field(default_factory=dict)
    latency: dict[str, dict[tuple[Any, ...], int]] = field(default_factory=dict)
    traces: dict[tuple[int, str], list[Any]] = field(default_factory=dict)

    def merge(self, other: Aggregates) -> None:
        """Add ``other`` (rows written after this one's) to this one."""
        for grain, sums in other.sums.items():
            mine = self.sums.setdefault(grain, {})
            for key, acc in sums.items():
                have = mine.get(key)
                if have is None:
                    mine[key] = list(acc)
                else:
                    for i, value in enumerate(acc):
                        have[i] += value
        for grain, counts in other.latency.items():
            mine_l = self.latency.setdefault(grain, {})
            for lkey, count in counts.items():
                mine_l[lkey] = mine_l.get(lkey, 0) + count
        for tkey, t in other.traces.items():
            have_t = self.traces.get(tkey)
            if have_t is None:
                self.traces[tkey] = list(t)
            else:
                _merge_trace(have_t, t)


def _merge_trace(have: list[Any], t: list[Any]) -> None:
    """The same combination as the traces upsert's ON CONFLICT clause."""
    have[T_START] = min(have[T_START], t[T_START])
    have[T_END] = max(have[T_END], t[T_END])
    if t[T_ROOT_ID] is not None:
        have[T_SERVICE] = t[T_SERVICE] or have[T_SERVICE]
        have[T_ROOT_ID] = t[T_ROOT_ID]
        have[T_ROOT_NAME] = t[T_ROOT_NAME]
    else:
        have[T_SERVICE] = have[T_SERVICE] or t[T_SERVICE]
    for i in (T_SPANS, T_LLM, T_ERRORS, T_IN, T_OUT, T_TOTAL):
        have[i] += t[i]
    if t[T_COST] is not None:
        have[T_COST] = t[T_COST] + (have[T_COST] or 0)
    for i in (T_ENV, T_USER, T_SESSION):
        have[i] = have[i] or t[i]


def aggregate(rows: Sequence[Row]) -> Aggregates:
    """Rollups from every row, trace summaries from the rows whose keep flag is set."""
    out = Aggregates()
    i_project, i_start = _I["project_id"], _I["start_time_unix_nano"]
    i_end = _I["end_time_unix_nano"]
    i_status, i_duration, i_cost = _I["status_code"], _I["duration_ms"], _I["total_cost_usd"]
    i_service, i_provider, i_operation = _I["service_name"], _I["provider"], _I["operation"]
    i_env, i_req_model, i_resp_model = _I["environment"], _I["request_model"], _I["response_model"]
    grains = [(suffix, seconds * 1_000_000_000, seconds) for suffix, seconds in ROLLUP_GRAINS]
    sums_by = [out.sums.setdefault(suffix, {}) for suffix, _, _ in grains]
    latency_by = [out.latency.setdefault(suffix, {}) for suffix, _, _ in grains]
    traces = out.traces
    for row in rows:
        start = row[i_start]
        duration = row[i_duration]
        error = row[i_status] == STATUS_ERROR
        cost = usd_units(row[i_cost])
        tokens = [row[c] or 0 for c in _TOKEN_COLS]
        dims = (
            row[i_service] or "",
            row[i_provider] or "",
            row[i_resp_model] or row[i_req_model] or "",
            row[i_operation] or "",
            row[i_env] or "",
        )
        bucket = bucket_index(duration)
        for (_, width_ns, seconds), sums, latency in zip(grains, sums_by, latency_by, strict=True):
            key = (row[i_project], (start // width_ns) * seconds, *dims)
            acc = sums.get(key)
            if acc is None:
                acc = sums[key] = [0, 0, 0, 0, 0, 0, 0, 0, 0.0]
            acc[0] += 1
            acc[1] += error
            acc[2] += tokens[0]
            acc[3] += tokens[1]
            acc[4] += tokens[2]
            acc[5] += tokens[3]
            acc[6] += tokens[4]
            acc[7] += cost or 0
            acc[8] += duration
            lkey = (*key, bucket)
            latency[lkey] = latency.get(lkey, 0) + 1
        if not row[_KEEP]:
            continue
        is_root = row[_I["parent_span_id"]] is None
        t = [
            start,
            row[i_end],
            row[_I["span_id"]] if is_root else None,
            row[_I["name"]] if is_root else None,
            1,
            1 if (row[i_resp_model] or row[i_req_model]) else 0,
            1 if error else 0,
            tokens[0],
            tokens[1],
            row[_I["total_tokens"]] or 0,
            cost,
            row[i_service],
            row[i_env],
            row[_I["user_id"]],
            row[_I["session_id"]],
        ]
        tkey = (row[i_project], row[_I["trace_id"]])
        have = traces.get(tkey)
        if have is None:
            traces[tkey] = t
        else:
            _merge_trace(have, t)
    return out


# --- PostgreSQL ---------------------------------------------------------------------------------

_COLS = ", ".join(SPAN_COLUMNS)
_KEY = ", ".join(("project_id", "bucket_start_unix_s", *ROLLUP_DIMENSIONS))
_DIM_EXPR = (
    "coalesce(service_name, '')",
    "coalesce(provider, '')",
    "coalesce(response_model, request_model, '')",
    "coalesce(operation, '')",
    "coalesce(environment, '')",
)
# (table suffix, bucket width in seconds): per minute and per hour, from the same rows.
ROLLUP_GRAINS = (("1m", 60), ("1h", 3600))


def _rollup_ctes() -> str:
    """Data-modifying CTEs that add the counted rows to every rollup grain."""
    parts = []
    for suffix, seconds in ROLLUP_GRAINS:
        group = ", ".join(
            (
                "project_id",
                f"(start_time_unix_nano / {seconds * 1_000_000_000}) * {seconds}",
                *_DIM_EXPR,
            )
        )
        sums = f"rollups_{suffix}"
        latency = f"rollups_{suffix}_latency"
        update = ", ".join(f"{c} = {sums}.{c} + EXCLUDED.{c}" for c in ROLLUP_SUMS)
        parts.append(f"""), r{suffix} AS (
    INSERT INTO {sums} ({_KEY}, {", ".join(ROLLUP_SUMS)})
    SELECT {group},
           count(*), count(*) FILTER (WHERE status_code = {STATUS_ERROR}),
           coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
           coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0),
           coalesce(sum(reasoning_tokens), 0), coalesce(sum(total_cost_usd), 0),
           sum(duration_ms)
    FROM counted GROUP BY {group} ORDER BY {group}
    ON CONFLICT ({_KEY}) DO UPDATE SET {update}
), l{suffix} AS (
    INSERT INTO {latency} ({_KEY}, bucket_index, count)
    SELECT {group}, latency_bucket, count(*)
    FROM counted GROUP BY {group}, latency_bucket ORDER BY {group}, latency_bucket
    ON CONFLICT ({_KEY}, bucket_index)
    DO UPDATE SET count = {latency}.count + EXCLUDED.count
""")
    return "".join(parts)


POSTGRES_INSERT = f"""
WITH ins AS (
    INSERT INTO spans ({_COLS})
    SELECT {_COLS} FROM _obs_staging WHERE _obs_keep
    ON CONFLICT DO NOTHING
    RETURNING project_id, trace_id, span_id, parent_span_id, name, start_time_unix_nano,
              end_time_unix_nano, duration_ms, status_code, service_name, environment, provider,
              operation, request_model, response_model, input_tokens, output_tokens,
              cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens,
              total_cost_usd, session_id, user_id
), new_rows AS (
    -- Stored spans that are new, plus the spans sampling left out: rollups count both.
    SELECT project_id, start_time_unix_nano, duration_ms, status_code, service_name, environment,
           provider, operation, request_model, response_model, input_tokens, output_tokens,
           cache_read_tokens, cache_write_tokens, reasoning_tokens, total_cost_usd
    FROM ins
    UNION ALL
    SELECT project_id, start_time_unix_nano, duration_ms, status_code, service_name, environment,
           provider, operation, request_model, response_model, input_tokens, output_tokens,
           cache_read_tokens, cache_write_tokens, reasoning_tokens, total_cost_usd
    FROM _obs_staging WHERE NOT _obs_keep
), counted AS (
    SELECT *, {bucket_sql()} AS latency_bucket FROM new_rows
{_rollup_ctes()}), t AS (
    INSERT INTO traces (project_id, trace_id, start_time_unix_nano, end_time_unix_nano, duration_ms,
                        root_span_id, root_span_name, span_count, llm_call_count, error_count,
                        input_tokens, output_tokens, total_tokens, total_cost_usd, service_name,
                        environment, user_id, session_id)
    SELECT project_id, trace_id, min(start_time_unix_nano), max(end_time_unix_nano),
           (max(end_time_unix_nano) - min(start_time_unix_nano)) / 1e6,
           max(span_id) FILTER (WHERE parent_span_id IS NULL),
           max(name) FILTER (WHERE parent_span_id IS NULL),
           count(*),
           count(*) FILTER (WHERE coalesce(response_model, request_model) IS NOT NULL),
           count(*) FILTER (WHERE status_code = {STATUS_ERROR}),
           coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
           coalesce(sum(total_tokens), 0), sum(total_cost_usd),
           coalesce(max(service_name) FILTER (WHERE parent_span_id IS NULL), max(service_name)),
           max(environment), max(user_id), max(session_id)
    FROM ins GROUP BY project_id, trace_id ORDER BY project_id, trace_id
    ON CONFLICT (project_id, trace_id) DO UPDATE SET
        start_time_unix_nano = least(traces.start_time_unix_nano, EXCLUDED.start_time_unix_nano),
        end_time_unix_nano = greatest(traces.end_time_unix_nano, EXCLUDED.end_time_unix_nano),
        duration_ms = (greatest(traces.end_time_unix_nano, EXCLUDED.end_time_unix_nano)
                       - least(traces.start_time_unix_nano, EXCLUDED.start_time_unix_nano)) / 1e6,
        root_span_id = coalesce(EXCLUDED.root_span_id, traces.root_span_id),
        root_span_name = coalesce(EXCLUDED.root_span_name, traces.root_span_name),
        span_count = traces.span_count + EXCLUDED.span_count,
        llm_call_count = traces.llm_call_count + EXCLUDED.llm_call_count,
        error_count = traces.error_count + EXCLUDED.error_count,
        input_tokens = traces.input_tokens + EXCLUDED.input_tokens,
        output_tokens = traces.output_tokens + EXCLUDED.output_tokens,
        total_tokens = traces.total_tokens + EXCLUDED.total_tokens,
        total_cost_usd = CASE WHEN traces.total_cost_usd IS NULL THEN EXCLUDED.total_cost_usd
                              WHEN EXCLUDED.total_cost_usd IS NULL THEN traces.total_cost_usd
                              ELSE traces.total_cost_usd + EXCLUDED.total_cost_usd END,
        service_name = CASE WHEN EXCLUDED.root_span_id IS NOT NULL
                            THEN coalesce(EXCLUDED.service_name, traces.service_name)
                            ELSE coalesce(traces.service_name, EXCLUDED.service_name) END,
        environment = coalesce(traces.environment, EXCLUDED.environment),
        user_id = coalesce(traces.user_id, EXCLUDED.user_id),
        session_id = coalesce(traces.session_id, EXCLUDED.session_id)
)
SELECT count(*) FROM ins
"""


def _unnest_upsert(
    table: str, columns: Sequence[tuple[str, str]], conflict: str, update: str
) -> str:
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"%s::{kind}[]" for _, kind in columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT {names} FROM unnest({arrays}) "
        f"WITH ORDINALITY AS u({names}, _n) ORDER BY _n "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {update}"
    )


_ROLLUP_KEY_TYPES = [
    ("project_id", "bigint"),
    ("bucket_start_unix_s", "bigint"),
    *[(d, "text") for d in ROLLUP_DIMENSIONS],
]
_SUM_TYPES = [
    *[(c, "bigint") for c in ROLLUP_SUMS[:7]],
    ("cost_usd", "numeric"),
    ("duration_ms_sum", "float8"),
]
_TRACE_TYPES = [
    ("project_id", "bigint"),
    ("trace_id", "text"),
    ("start_time_unix_nano", "bigint"),
    ("end_time_unix_nano", "bigint"),
    ("duration_ms", "float8"),
    ("root_span_id", "text"),
    ("root_span_name", "text"),
    ("span_count", "bigint"),
    ("llm_call_count", "bigint"),
    ("error_count", "bigint"),
    ("input_tokens", "bigint"),
    ("output_tokens", "bigint"),
    ("total_tokens", "bigint"),
    ("total_cost_usd", "numeric"),
    ("service_name", "text"),
    ("environment", "text"),
    ("user_id", "text"),
    ("session_id", "text"),
]
_TRACE_UPDATE = POSTGRES_INSERT[POSTGRES_INSERT.index("ON CONFLICT (project_id, trace_id)") :]
_TRACE_UPDATE = _TRACE_UPDATE[
    _TRACE_UPDATE.index("DO UPDATE SET") + len("DO UPDATE SET") : _TRACE_UPDATE.index("\n)\nSELECT")
]


def _aggregate_statement() -> str:
    """One statement upserting every rollup grain and the trace summaries from arrays."""
    ctes = []
    for suffix, _ in ROLLUP_GRAINS:
        sums = f"rollups_{suffix}"
        latency = f"rollups_{suffix}_latency"
        ctes.append(
            f"s{suffix} AS ("
            + _unnest_upsert(
                sums,
                [*_ROLLUP_KEY_TYPES, *_SUM_TYPES],
                _KEY,
                ", ".join(f"{c} = {sums}.{c} + EXCLUDED.{c}" for c in ROLLUP_SUMS),
            )
            + ")"
        )
        ctes.append(
            f"l{suffix} AS ("
            + _unnest_upsert(
                latency,
                [*_ROLLUP_KEY_TYPES, ("bucket_index", "smallint"), ("count", "bigint")],
                f"{_KEY}, bucket_index",
                f"count = {latency}.count + EXCLUDED.count",
            )
            + ")"
        )
    ctes.append(
        "t AS ("
        + _unnest_upsert("traces", _TRACE_TYPES, "project_id, trace_id", _TRACE_UPDATE)
        + ")"
    )
    return "WITH " + ",\n".join(ctes) + "\nSELECT 1"


AGGREGATE_UPSERT = _aggregate_statement()


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _usd(units: int | None) -> Decimal | None:
    return None if units is None else Decimal(units).scaleb(-10)


def aggregate_params(aggregates: Aggregates) -> list[list[Any]]:
    """The arrays of :data:`AGGREGATE_UPSERT`, each grain's keys in sorted order (concurrent
    writers then take row locks in the same order and cannot deadlock)."""
    params: list[list[Any]] = []
    for suffix, _ in ROLLUP_GRAINS:
        sums = aggregates.sums.get(suffix, {})
        rows = [(*k, *v[:7], _usd(v[7]), v[8]) for k, v in sorted(sums.items())]
        params.extend(_columns(rows, len(_ROLLUP_KEY_TYPES) + len(_SUM_TYPES)))
        latency = aggregates.latency.get(suffix, {})
        params.extend(_columns([(*k, v) for k, v in sorted(latency.items())], 9))
    traces = [
        (
            k[0],
            k[1],
            t[T_START],
            t[T_END],
            (t[T_END] - t[T_START]) / 1e6,
            t[T_ROOT_ID],
            t[T_ROOT_NAME],
            t[T_SPANS],
            t[T_LLM],
            t[T_ERRORS],
            t[T_IN],
            t[T_OUT],
            t[T_TOTAL],
            _usd(t[T_COST]),
            t[T_SERVICE],
            t[T_ENV],
            t[T_USER],
            t[T_SESSION],
        )
        for k, t in sorted(aggregates.traces.items())
    ]
    params.extend(_columns(traces, len(_TRACE_TYPES)))
    return params


class PostgresSpanStore:
    """COPY plus one upsert statement per batch on a dedicated connection."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._dsn,
                autocommit=False,
                connect_timeout=5,
                application_name="llm-observatory-writer",
            )
            with conn.cursor() as cur:
                # lz4 compresses the large text columns (prompts, attributes) several times
                # faster than the default pglz, and reads decompress faster too.
                with contextlib.suppress(psycopg.errors.InvalidParameterValue):
                    cur.execute("SET default_toast_compression = lz4")
                # The staging rows belong to one transaction only: a commit empties the table,
                # which costs less than a TRUNCATE per batch.
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS _obs_staging ON COMMIT DELETE ROWS AS "
                    f"SELECT {_COLS}, true AS _obs_keep FROM spans WITH NO DATA"
                )
            conn.commit()
            self._conn = conn
        return self._conn

    def write(self, rows: Sequence[Any], aggregates: Aggregates | None = None) -> int:
        if not rows:
            return 0
        if isinstance(rows, EncodedRows):
            encoded = rows
        elif isinstance(rows[0], Encoded):
            encoded = EncodedRows(
                "".join(f"{row.line}\n" for row in rows),
                len(rows),
                [bool(row.keep) for row in rows],
            )
        else:
            encoded = EncodedRows.of(rows)
        if aggregates is not None:
            try:
                return self._write_direct(encoded, aggregates)
            except psycopg.errors.UniqueViolation:
                # Some of these spans are stored already (a retry): take the general path.
                self._discard_on_failure()
        return self._write_staged(encoded)

    def _write_direct(self, rows: EncodedRows, aggregates: Aggregates) -> int:
        conn = self._connect()
        stored = rows.stored
        try:
            with conn.cursor() as cur:
                if stored:
                    with cur.copy(f"COPY spans ({_COLS}) FROM STDIN") as copy:
                        copy.write(rows.kept_text())
                cur.execute(AGGREGATE_UPSERT, aggregate_params(aggregates))
            conn.commit()
        except BaseException:
            self._discard_on_failure()
            raise
        return stored

    def _write_staged(self, rows: EncodedRows) -> int:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                with cur.copy(f"COPY _obs_staging ({_COLS}, _obs_keep) FROM STDIN") as copy:
                    copy.write(rows.staged_text())
                cur.execute(POSTGRES_INSERT)
                result = cur.fetchone()
            conn.commit()
        except BaseException:
            self._discard_on_failure()
            raise
        return int(result[0]) if result else 0

    def _discard_on_failure(self) -> None:
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        if conn.broken or conn.closed:
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- SQLite -------------------------------------------------------------------------------------


# The writer's page cache and how much WAL it lets grow before it checkpoints. SQLite's defaults
# (2 MiB, 1,000 pages = 4 MiB) make a batch of 1,000 spans re-read index pages and checkpoint
# every few batches; with these the same writes take ~22 % less time (bench: 200 batches of the
# bench workload, 12.1-13.4 s -> 9.7-10.3 s).
SQLITE_WRITER_CACHE_KIB = 65_536
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 8_192


class SqliteSpanStore:
    """The single writer of the embedded database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute(f"PRAGMA cache_size=-{SQLITE_WRITER_CACHE_KIB}")
        self._conn.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES}")

    def write(self, rows: Sequence[Any], aggregates: Aggregates | None = None) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            kept = [r for r in rows if r[_KEEP]]
            fresh = self._new_rows(kept)
            if aggregates is None or len(fresh) != len(kept):
                # Some spans are stored already (or nobody aggregated): count only the new ones.
                aggregates = aggregate(fresh + [r for r in rows if not r[_KEEP]])
            if fresh:
                placeholders = ", ".join("?" * len(SPAN_COLUMNS))
                conn.executemany(
                    f"INSERT INTO spans ({_COLS}) VALUES ({placeholders})",
                    [_sqlite_row(r) for r in fresh],
                )
            _sqlite_aggregates(conn, aggregates)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return len(fresh)

    def _new_rows(self, rows: Sequence[Row]) -> list[Row]:
        by_project: dict[int, set[str]] = {}
        for row in rows:
            by_project.setdefault(row[0], set()).add(row[1])
        existing: set[tuple[int, str, str]] = set()
        for project_id, trace_ids in by_project.items():
            ids = sorted(trace_ids)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ", ".join("?" * len(chunk))
                for trace_id, span_id in self._conn.execute(
                    "SELECT trace_id, span_id FROM spans "
                    f"WHERE project_id = ? AND trace_id IN ({marks})",
                    (project_id, *chunk),
                ):
                    existing.add((project_id, trace_id, span_id))
        fresh = []
        for row in rows:
            key = (row[0], row[1], row[2])
            if key not in existing:
                existing.add(key)
                fresh.append(row)
        return fresh

    def close(self) -> None:
        self._conn.close()


def _sqlite_row(row: Row) -> Row:
    out = list(row[:_KEEP])
    for i in _COST_COLUMNS:
        out[i] = usd_units(row[i])
    return tuple(out)


def rollup_key(row: Row, seconds: int = 60) -> tuple[Any, ...]:
    return (
        row[_COL["project_id"]],
        (row[_COL["start_time_unix_nano"]] // (seconds * 1_000_000_000)) * seconds,
        row[_COL["service_name"]] or "",
        row[_COL["provider"]] or "",
        row[_COL["response_model"]] or row[_COL["request_model"]] or "",
        row[_COL["operation"]] or "",
        row[_COL["environment"]] or "",
    )


_SQLITE_TRACE_UPSERT = """
INSERT INTO traces (project_id, trace_id, start_time_unix_nano, end_time_unix_nano,
    duration_ms, root_span_id, root_span_name, span_count, llm_call_count, error_count,
    input_tokens, output_tokens, total_tokens, total_cost_usd, service_name, environment,
    user_id, session_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, trace_id) DO UPDATE SET
    start_time_unix_nano = min(start_time_unix_nano, excluded.start_time_unix_nano),
    end_time_unix_nano = max(end_time_unix_nano, excluded.end_time_unix_nano),
    duration_ms = (max(end_time_unix_nano, excluded.end_time_unix_nano)
                   - min(start_time_unix_nano, excluded.start_time_unix_nano)) / 1e6,
    root_span_id = coalesce(excluded.root_span_id, root_span_id),
    root_span_name = coalesce(excluded.root_span_name, root_span_name),
    span_count = span_count + excluded.span_count,
    llm_call_count = llm_call_count + excluded.llm_call_count,
    error_count = error_count + excluded.error_count,
    input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    total_tokens = total_tokens + excluded.total_tokens,
    total_cost_usd = CASE WHEN total_cost_usd IS NULL THEN excluded.total_cost_usd
                          WHEN excluded.total_cost_usd IS NULL THEN total_cost_usd
                          ELSE total_cost_usd + excluded.total_cost_usd END,
    service_name = CASE WHEN excluded.root_span_id IS NOT NULL
                        THEN coalesce(excluded.service_name, service_name)
                        ELSE coalesce(service_name, excluded.service_name) END,
    environment = coalesce(environment, excluded.environment),
    user_id = coalesce(user_id, excluded.user_id),
    session_id = coalesce(session_id, excluded.session_id)
"""


def _sqlite_aggregates(conn: sqlite3.Connection, aggregates: Aggregates) -> None:
    key_cols = ", ".join(("project_id", "bucket_start_unix_s", *ROLLUP_DIMENSIONS))
    sum_cols = ", ".join(ROLLUP_SUMS)
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in ROLLUP_SUMS)
    for suffix, _ in ROLLUP_GRAINS:
        sums = aggregates.sums.get(suffix)
        if sums:
            conn.executemany(
                f"INSERT INTO rollups_{suffix} ({key_cols}, {sum_cols}) "
                f"VALUES ({', '.join('?' * 16)}) "
                f"ON CONFLICT ({key_cols}) DO UPDATE SET {updates}",
                [(*k, *v) for k, v in sorted(sums.items())],
            )
        latency = aggregates.latency.get(suffix)
        if latency:
            conn.executemany(
                f"INSERT INTO rollups_{suffix}_latency ({key_cols}, bucket_index, count) "
                f"VALUES ({', '.join('?' * 9)}) ON CONFLICT ({key_cols}, bucket_index) "
                "DO UPDATE SET count = count + excluded.count",
                [(*k, v) for k, v in sorted(latency.items())],
            )
    if aggregates.traces:
        conn.executemany(
            _SQLITE_TRACE_UPSERT,
            [
                (k[0], k[1], t[T_START], t[T_END], (t[T_END] - t[T_START]) / 1e6, *t[T_ROOT_ID:])
                for k, t in sorted(aggregates.traces.items())
            ],
        )


def open_span_store(dialect: str, *, dsn: str | None = None, path: Path | None = None) -> SpanStore:
    if dialect == "postgresql":
        assert dsn is not None
        return PostgresSpanStore(dsn)
    assert path is not None
    return SqliteSpanStore(path)
