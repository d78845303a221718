"""PostgreSQL values as JSON for `query_database`, read by codecs faithful to PostgreSQL's output.

Why the codecs below replace some of asyncpg's: its binary decoders turn `infinity`,
years before 1 AD and years after 9999 into wrong values or exceptions (one odd date
would fail a whole query), interval months into 30 days, and `real` 1.1 into
1.100000023841858. The replacements read PostgreSQL's wire values themselves (asyncpg's
`tuple` and `binary` codec formats, which keep working inside arrays, composites and
ranges; `text` format codecs do not) and write what PostgreSQL's own output would say,
in ISO 8601. `anyarray` columns (pg_stats, pg_attribute) are read as PostgreSQL's text, where
asyncpg would fail the whole query, and `"char"` (the catalogs' one-letter codes) as its
letter, not bytes. Every value is bounded: strings, bytea and large arrays or json are cut with
a marker, so one huge value cannot crowd out the rest of a result.
"""

import json
import math
import re
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from asyncpg.pgproto.types import BitString, Path
from asyncpg.types import Type

# Integers beyond ±(2^53 - 1) lose digits in JavaScript and most JSON readers: sent as strings.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_VALUE_CHARS = 4000
MAX_JSON_DEPTH = 64

_CHAR_OID, _CHAR_ARRAY_OID = 18, 1002  # `"char"`, PostgreSQL's one-byte type (relkind, contype)
_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)
_INT32_MAX, _INT32_MIN = 2**31 - 1, -(2**31)
_USEC_PER_SECOND = 1_000_000
_USEC_PER_MINUTE = 60 * _USEC_PER_SECOND
_USEC_PER_HOUR = 60 * _USEC_PER_MINUTE
_USEC_PER_DAY = 24 * _USEC_PER_HOUR
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_ORDINAL = date(2000, 1, 1).toordinal()
_PG_EPOCH_UNIX_DAYS = 10957  # 2000-01-01 counted from 1970-01-01
_MICROSECOND = timedelta(microseconds=1)
_ISO_DURATION = re.compile(
    r"P(?:(?P<years>[-+]?\d+)Y)?(?:(?P<months>[-+]?\d+)M)?(?:(?P<weeks>[-+]?\d+)W)?(?:(?P<days>[-+]?\d+)D)?"
    r"(?:T(?:(?P<hours>[-+]?\d+)H)?(?:(?P<minutes>[-+]?\d+)M)?(?:(?P<seconds>[-+]?\d+(?:\.\d{1,6})?)S)?)?"
)


_Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]


class JsonText(str):
    """The text of a json or jsonb value, parsed only when it is short enough to be shown."""


# ---- results ----------------------------------------------------------------------------


def value_cap(max_bytes: int) -> int:
    """The most characters one value may take: 4,000, or a quarter of a small result budget."""
    return max(64, min(MAX_VALUE_CHARS, max_bytes // 4))


def json_size(value: Any) -> int:
    """UTF-8 bytes of `value` as JSON, written the way the tool result is stored."""
    return len(json.dumps(value, ensure_ascii=False).encode())


def is_pg_char(kind: Type) -> bool:
    """Whether a column is `"char"` or `"char"[]`, which asyncpg hands over as bytes."""
    return kind.oid in (_CHAR_OID, _CHAR_ARRAY_OID)


def pg_char_text(value: Any) -> Any:
    """A `"char"` value (or array of them) as PostgreSQL prints it: the character, nothing for
    0, an octal escape above 127. (asyncpg's codec for it cannot be replaced: to asyncpg the
    name "char" means bpchar.)"""
    if isinstance(value, list):
        return [pg_char_text(item) for item in value]
    if not isinstance(value, bytes):
        return value
    byte = value[0] if value else 0
    if byte == 0:
        return ""
    return chr(byte) if byte < 0x80 else f"\\{byte:03o}"


def wire_size(value: Any) -> int:
    """About how many bytes a decoded column value took on the wire (to size the next fetch)."""
    if isinstance(value, str | bytes):
        return 4 + len(value)
    if isinstance(value, asyncpg.Record):
        return 4 + sum(wire_size(item) for item in value.values())
    if isinstance(value, list | tuple):
        return 4 + sum(wire_size(item) for item in value)
    return 12


def to_json(value: Any, cap: int) -> Any:
    """One column value as JSON, its text at most about `cap` characters (cut ones end in a marker)."""
    converted = _convert(value, cap)
    if isinstance(converted, list | dict):
        text = json.dumps(converted, ensure_ascii=False)
        if len(text) > cap:
            return _cut(text, cap)
    return converted


def _convert(value: Any, cap: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, JsonText):
        return _json_value(value, cap)
    if isinstance(value, str):
        return _cut(value, cap)
    if isinstance(value, int):
        return value if abs(value) <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, Decimal):
        return _cut(format(value, "f"), cap)  # exact, never exponent notation; NaN, ±Infinity as words
    if isinstance(value, bytes):
        return _hex(value, cap)
    if isinstance(value, asyncpg.Record):  # a composite type: its fields by name
        return {key: _convert(item, cap) for key, item in value.items()}
    if isinstance(value, asyncpg.Range):
        return _range(value, cap)
    if isinstance(value, Path):  # path and polygon: their points
        return [list(point) for point in value.points]
    if isinstance(value, list | tuple):  # arrays, anonymous records, point, box, circle, line
        return [_convert(item, cap) for item in value]
    if isinstance(value, BitString):
        return _cut(value.as_string(), cap)
    return _cut(str(value), cap)  # uuid, inet, cidr, and types asyncpg hands over as text


def _json_value(text: JsonText, cap: int) -> Any:
    """A json/jsonb value parsed, or its text where the parsed value could not be carried on:
    nesting deeper than MAX_JSON_DEPTH, or a string holding a NUL (`"\\u0000"`, which `json`
    keeps) or a lone surrogate (`"\\ud800"`), neither of which jsonb or UTF-8 can store."""
    if len(text) > cap:
        return _cut(str(text), cap)
    try:
        parsed = json.loads(text, parse_float=_json_number)
    except RecursionError:
        return str(text)
    pending: list[tuple[Any, int]] = [(parsed, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_JSON_DEPTH or (isinstance(item, str) and not _storable(item)):
            return str(text)
        if isinstance(item, dict):
            pending.extend((key, depth) for key in item)
            item = list(item.values())
        if isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
    return parsed


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _cut(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    return f"{text[:cap]}…[{len(text) - cap} more characters]"


def _hex(data: bytes, cap: int) -> str:
    shown = max(1, (cap - 2) // 2)
    if len(data) <= shown:
        return "\\x" + data.hex()
    return f"\\x{data[:shown].hex()}…[{len(data) - shown} more bytes]"


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _json_number(text: str) -> float | str:
    """A JSON number as a float, or as its text where a float cannot hold it (1e400)."""
    number = float(text)
    return number if math.isfinite(number) else text


def _range(value: asyncpg.Range, cap: int) -> str:
    """PostgreSQL's own range notation: `[1,10)`, `(,5]`, `empty`."""
    if value.isempty:
        return "empty"
    lower = "" if value.lower_inf else _range_bound(_convert(value.lower, cap))
    upper = "" if value.upper_inf else _range_bound(_convert(value.upper, cap))
    return f"{'[' if value.lower_inc else '('}{lower},{upper}{']' if value.upper_inc else ')'}"


def _range_bound(bound: Any) -> str:
    text = bound if isinstance(bound, str) else json.dumps(bound)
    if text and not re.search(r'[\s,()\[\]"\\]', text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- codecs -----------------------------------------------------------------------------


async def register_codecs(conn: asyncpg.Connection) -> None:
    """Install the faithful codecs on a new connection (see the module docstring)."""
    tuple_codecs: dict[str, _Codec] = {
        "timestamptz": (_encode_timestamptz, _decode_timestamptz),
        "timestamp": (_encode_timestamp, _decode_timestamp),
        "date": (_encode_date, _decode_date),
        "time": (_encode_time, _decode_time),
        "timetz": (_encode_timetz, _decode_timetz),
        "interval": (_encode_interval, _decode_interval),
    }
    for name, (encoder, decoder) in tuple_codecs.items():
        await conn.set_type_codec(name, schema="pg_catalog", encoder=encoder, decoder=decoder, format="tuple")
    binary_codecs: dict[str, _Codec] = {
        "float4": (_encode_float4, _decode_float4),
        "json": (str.encode, _decode_json),
        "jsonb": (_encode_jsonb, _decode_jsonb),
    }
    for name, (encoder, decoder) in binary_codecs.items():
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=encoder, decoder=decoder, format="binary"
        )
    # A pseudo-type with no binary form: only PostgreSQL's text says what the elements are.
    await conn.set_type_codec("anyarray", schema="pg_catalog", encoder=str, decoder=str, format="text")


def _encode_float4(value: float) -> bytes:
    return struct.pack("!f", value)


def _decode_json(data: bytes) -> JsonText:
    return JsonText(data.decode())


def _encode_jsonb(text: str) -> bytes:
    return b"\x01" + text.encode()  # jsonb's binary format: a version byte, then the text


def _decode_jsonb(data: bytes) -> JsonText:
    return JsonText(data[1:].decode())


def _decode_float4(data: bytes) -> float:
    """The shortest decimal that reads back as the same `real`, as PostgreSQL prints it."""
    value: float = struct.unpack("!f", data)[0]
    if not math.isfinite(value):
        return value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.unpack("!f", struct.pack("!f", candidate))[0] == value:
                return candidate
        except OverflowError:
            continue
    return value


def _decode_timestamptz(wire: tuple[int]) -> str:
    return _timestamp(wire[0], "Z")


def _decode_timestamp(wire: tuple[int]) -> str:
    return _timestamp(wire[0], "")


def _timestamp(microseconds: int, suffix: str) -> str:
    if microseconds in (_INT64_MAX, _INT64_MIN):
        return "infinity" if microseconds > 0 else "-infinity"
    days, of_day = divmod(microseconds, _USEC_PER_DAY)
    return f"{_date(days + _PG_EPOCH_UNIX_DAYS)}T{_clock(of_day)}{suffix}"


def _decode_date(wire: tuple[int]) -> str:
    if wire[0] in (_INT32_MAX, _INT32_MIN):
        return "infinity" if wire[0] > 0 else "-infinity"
    return _date(wire[0] + _PG_EPOCH_UNIX_DAYS)


def _date(unix_days: int) -> str:
    """ISO 8601 calendar date in the proleptic Gregorian calendar, any year.

    Years use astronomical numbering as ISO 8601 does: 1 BC is 0000, 44 BC is -0043,
    and years above 9999 carry a `+`. (Howard Hinnant's civil_from_days.)
    """
    shifted = unix_days + 719468
    era = shifted // 146097
    day_of_era = shifted - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (month <= 2)
    if year < 0:
        year_text = f"-{-year:04d}"
    elif year > 9999:
        year_text = f"+{year}"
    else:
        year_text = f"{year:04d}"
    return f"{year_text}-{month:02d}-{day:02d}"


def _clock(microseconds: int) -> str:
    hours, rest = divmod(microseconds, _USEC_PER_HOUR)
    minutes, rest = divmod(rest, _USEC_PER_MINUTE)
    seconds, fraction = divmod(rest, _USEC_PER_SECOND)
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{fraction:06d}".rstrip("0") if fraction else text


def _decode_time(wire: tuple[int]) -> str:
    return _clock(wire[0])


def _decode_timetz(wire: tuple[int, int]) -> str:
    microseconds, seconds_west = wire
    offset = -seconds_west
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    zone = f"{'+' if offset >= 0 else '-'}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
    return _clock(microseconds) + zone


def _decode_interval(wire: tuple[int, int, int]) -> str:
    """ISO 8601 duration, as PostgreSQL writes it with `IntervalStyle = iso_8601`."""
    months, days, microseconds = wire
    if (months, days, microseconds) == (_INT32_MAX, _INT32_MAX, _INT64_MAX):
        return "infinity"
    if (months, days, microseconds) == (_INT32_MIN, _INT32_MIN, _INT64_MIN):
        return "-infinity"
    years, months = _truncating_divmod(months, 12)
    hours, rest = _truncating_divmod(microseconds, _USEC_PER_HOUR)
    minutes, rest = _truncating_divmod(rest, _USEC_PER_MINUTE)
    seconds, fraction = _truncating_divmod(rest, _USEC_PER_SECOND)
    if not any((years, months, days, hours, minutes, seconds, fraction)):
        return "PT0S"
    text = "P" + "".join(f"{n}{unit}" for n, unit in ((years, "Y"), (months, "M"), (days, "D")) if n)
    if hours or minutes or seconds or fraction:
        text += "T" + "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
        if seconds or fraction:
            sign = "-" if seconds < 0 or fraction < 0 else ""
            digits = f".{abs(fraction):06d}".rstrip("0") if fraction else ""
            text += f"{sign}{abs(seconds)}{digits}S"
    return text


def _truncating_divmod(value: int, divisor: int) -> tuple[int, int]:
    """Division as C does it (toward zero), which PostgreSQL's output follows."""
    quotient = -(-value // divisor) if value < 0 else value // divisor
    return quotient, value - quotient * divisor


def _encode_timestamptz(value: str) -> tuple[int]:
    special = _special(value, _INT64_MAX, _INT64_MIN)
    if special is not None:
        return (special,)
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return ((moment - _PG_EPOCH) // _MICROSECOND,)


def _encode_timestamp(value: str) -> tuple[int]:
    special = _special(value, _INT64_MAX, _INT64_MIN)
    if special is not None:
        return (special,)
    # An offset is ignored, as PostgreSQL ignores it for `timestamp without time zone`.
    moment = datetime.fromisoformat(value.strip()).replace(tzinfo=UTC)
    return ((moment - _PG_EPOCH) // _MICROSECOND,)


def _encode_date(value: str) -> tuple[int]:
    special = _special(value, _INT32_MAX, _INT32_MIN)
    if special is not None:
        return (special,)
    return (date.fromisoformat(value.strip()).toordinal() - _PG_EPOCH_ORDINAL,)


def _encode_time(value: str) -> tuple[int]:
    return (_microseconds_of(time.fromisoformat(value.strip())),)


def _encode_timetz(value: str) -> tuple[int, int]:
    moment = time.fromisoformat(value.strip())
    offset = moment.utcoffset() or timedelta(0)
    return (_microseconds_of(moment), -int(offset.total_seconds()))


def _microseconds_of(moment: time) -> int:
    return (
        moment.hour * _USEC_PER_HOUR
        + moment.minute * _USEC_PER_MINUTE
        + moment.second * _USEC_PER_SECOND
        + moment.microsecond
    )


def _encode_interval(value: str) -> tuple[int, int, int]:
    match = _ISO_DURATION.fullmatch(value.strip())
    if match is None or not any(match.groupdict().values()):
        raise ValueError("expected an ISO 8601 duration such as P1Y2M3DT4H5M6S")
    part = {key: text or "0" for key, text in match.groupdict().items()}
    seconds = Decimal(part["seconds"])
    microseconds = (
        int(part["hours"]) * _USEC_PER_HOUR
        + int(part["minutes"]) * _USEC_PER_MINUTE
        + int(seconds * _USEC_PER_SECOND)
    )
    return (
        int(part["years"]) * 12 + int(part["months"]),
        int(part["weeks"]) * 7 + int(part["days"]),
        microseconds,
    )


def _special(value: str, highest: int, lowest: int) -> int | None:
    word = value.strip().lower()
    if word == "infinity":
        return highest
    if word == "-infinity":
        return lowest
    return None
