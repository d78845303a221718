"""An MCP tool result as the compact JSON the model reads and the event log stores.

`structuredContent` is preferred when a server sends it: the spec has servers repeat it as
JSON text, which would double the result. Images and audio become references (type, MIME type,
size): their base64 data means nothing to a text model and would fill its context. Embedded
resources keep their text. Everything is bounded to `max_chars` of JSON, cutting text (a
structured value too large for that is turned into its JSON text first) and saying so with
`truncated` and a `note`. NUL characters are dropped and lone surrogates replaced (PostgreSQL's
jsonb refuses them; a server's output is no reason to fail the turn), NaN becomes null.
"""

import base64
import binascii
import json
import math
from typing import Any

from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from tools.base import ToolFailed, storable_text

DEFAULT_MAX_CHARS = 60_000
# How much of a failing tool's error text the model reads.
MAX_ERROR_CHARS = 4_000
# Room kept for `truncated` and `note`, which are added after measuring.
_NOTE_ROOM = 200


def compact_result(result: CallToolResult, *, max_chars: int = DEFAULT_MAX_CHARS) -> Any:
    """The result as `{content?, structured?, items?}`; raises ToolFailed("tool_error") for
    a result the server marked as an error."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if result.is_error:
        message = _clean("\n".join(texts)).strip() or "the tool reported an error without a message"
        raise ToolFailed("tool_error", _cut_text(message, MAX_ERROR_CHARS))
    compact: dict[str, Any] = {}
    if result.structured_content is not None:
        compact["structured"] = _clean(result.structured_content)
    elif texts:
        compact["content"] = _clean("\n".join(texts))
    items = [_item(block) for block in result.content if not isinstance(block, TextContent)]
    if items:
        compact["items"] = items
    if not compact:
        compact["content"] = ""
    return _fitted(compact, max_chars, texts)


def _item(block: Any) -> dict[str, Any]:
    """A non-text content block as a small reference."""
    if isinstance(block, ImageContent | AudioContent):
        return {"type": block.type, "mime_type": _clean(block.mime_type), "bytes": _decoded_size(block.data)}
    if isinstance(block, ResourceLink):
        link = {"type": "resource_link", "uri": _clean(block.uri), "name": _clean(block.name)}
        if block.mime_type:
            link["mime_type"] = _clean(block.mime_type)
        return link
    if isinstance(block, EmbeddedResource):
        resource = block.resource
        embedded: dict[str, Any] = {"type": "resource", "uri": _clean(resource.uri)}
        if resource.mime_type:
            embedded["mime_type"] = _clean(resource.mime_type)
        if isinstance(resource, TextResourceContents):
            embedded["text"] = _clean(resource.text)
        elif isinstance(resource, BlobResourceContents):
            embedded["bytes"] = _decoded_size(resource.blob)
        return embedded
    return {"type": _clean(str(getattr(block, "type", "unknown")))}


def _decoded_size(data: str) -> int:
    """Bytes the base64 text stands for (estimated from its length if it is not valid base64)."""
    try:
        return len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return len(data) * 3 // 4


def _fitted(compact: dict[str, Any], max_chars: int, texts: list[str]) -> dict[str, Any]:
    """`compact` cut until its JSON (with the note) is at most `max_chars` characters."""
    if _size(compact) <= max_chars:
        return compact
    budget = max(0, max_chars - _NOTE_ROOM)
    if "structured" in compact:
        # A structured value cannot be cut and stay meaningful, but text can: the text blocks
        # the server sent beside it (the same result, unstructured), else its JSON.
        structured = compact.pop("structured")
        compact["content"] = _clean("\n".join(texts)) if texts else json.dumps(structured, ensure_ascii=False)
    kept_items, dropped = _fitted_items(compact.pop("items", []), budget // 2)
    if kept_items:
        compact["items"] = kept_items
    text = compact.get("content", "")
    room = budget - _size({**compact, "content": ""})
    # Escaping can make JSON longer than the text: cut, measure, cut again by the excess.
    cut = text[: max(0, room)]
    while cut and _size({**compact, "content": cut}) > budget:
        cut = cut[: max(0, len(cut) - (_size({**compact, "content": cut}) - budget))]
    compact["content"] = cut
    compact["truncated"] = True
    note = f"the result was cut: {len(cut):,} of {len(text):,} characters of text kept"
    if dropped:
        note += f", {dropped} of {dropped + len(kept_items)} content items left out"
    compact["note"] = note
    return compact


def _fitted_items(items: list[dict[str, Any]], budget: int) -> tuple[list[dict[str, Any]], int]:
    """The items that fit in `budget` characters of JSON (embedded texts cut to share it)."""
    kept: list[dict[str, Any]] = []
    share = budget // max(1, len(items))
    for item in items:
        if "text" in item and _size(item) > share:
            item = {**item, "text": _cut_text(item["text"], max(0, share - _size({**item, "text": ""})))}
        if _size(kept) + _size(item) > budget:
            break
        kept.append(item)
    return kept, len(items) - len(kept)


def _cut_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 7)] + " […cut]"


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def _clean(value: Any) -> Any:
    """`value` as jsonb stores it: NUL dropped and lone surrogates made U+FFFD (in keys too),
    NaN and infinities made null."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
