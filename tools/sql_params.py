"""The model's JSON values as `query_database` parameters, for the types PostgreSQL inferred.

PostgreSQL decides each placeholder's type when the statement is prepared; the JSON value is
then turned into what asyncpg (and the codecs of tools/sql_values.py, for times and json)
sends for that type. Where JSON has no natural form (dates, uuids, decimals) a string is
taken, and values that do not fit are refused here with the parameter's number, before
anything is sent.
"""

import json
import re
from collections.abc import Sequence
from typing import Any

_INTEGERS = {"int2", "int4", "int8", "oid"}
_FLOATS = {"float4", "float8"}
_TEXTS = {"text", "varchar", "bpchar", "name", "citext"}
_TEMPORAL = {"timestamptz", "timestamp", "date", "time", "timetz", "interval"}


class ParameterError(ValueError):
    """A parameter's JSON value does not fit the type PostgreSQL inferred for its placeholder."""


def coerce_parameters(types: Sequence[Any], values: list[Any]) -> list[Any]:
    """The model's JSON values as what asyncpg sends for each placeholder's type (`Type`s)."""
    if len(types) != len(values):
        placeholders = ", ".join(f"${n}" for n in range(1, len(types) + 1)) or "none"
        raise ParameterError(
            f"the query has {len(types)} placeholder(s) ({placeholders}) but {len(values)} "
            "parameter(s) were given"
        )
    coerced = []
    for number, (kind, value) in enumerate(zip(types, values, strict=True), start=1):
        name = kind.name if kind.schema == "pg_catalog" else ""
        try:
            coerced.append(_coerce(name, value))
        except ParameterError as err:
            raise ParameterError(f"parameter ${number} ({kind.name}): {err}") from None
    return coerced


def _coerce(name: str, value: Any) -> Any:
    """One value for a pg_catalog type `name` (empty for other schemas: passed as given)."""
    if value is None:
        return None
    if name.endswith("[]"):
        if not isinstance(value, list):
            raise ParameterError("expected a list for an array")
        return [_coerce(name if isinstance(item, list) else name[:-2], item) for item in value]
    if name in _INTEGERS:
        return _integer(value)
    if name in _FLOATS:
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                pass
        raise ParameterError("expected a number")
    if name == "numeric":
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            return str(value)  # PostgreSQL parses the digits exactly; a float would not
        raise ParameterError("expected a number or a string of digits")
    if name in ("json", "jsonb"):
        return _json_text(value)
    if name == "bytea":
        if not isinstance(value, str):
            raise ParameterError("expected a string (\\x followed by hex digits for raw bytes)")
        if not value.startswith("\\x"):
            return value.encode()
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            raise ParameterError("\\x must be followed by pairs of hex digits") from None
    if name == "char":
        if not isinstance(value, str):
            raise ParameterError("expected a string (one character)")
        return _pg_char(value)
    if name in _TEXTS:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | str):
            return str(value)
        raise ParameterError("expected a string")
    if name in _TEMPORAL and not isinstance(value, str):
        raise ParameterError("expected an ISO 8601 string")
    return value


def _pg_char(text: str) -> bytes:
    """As PostgreSQL reads `"char"` input: an octal escape (`\\351`), else the first byte."""
    if re.fullmatch(r"\\[0-3][0-7]{2}", text):
        return bytes([int(text[1:], 8)])
    return text.encode()[:1] or b"\x00"


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    raise ParameterError("expected an integer")


def _json_text(value: Any) -> str:
    """A string that already is JSON text is sent as it is; anything else is encoded."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except (ValueError, RecursionError):
            return json.dumps(value, ensure_ascii=False)
        return value
    return json.dumps(value, ensure_ascii=False)
