"""Where `assistant chat` finds the API and its key: flags, then the environment, then `assistant dev`."""

import os
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings, read_dev_state
from devrun import _DEV_KEY_FILE

DEFAULT_URL = "http://127.0.0.1:8000"
_LAST_CONVERSATION_FILE = "chat-last-conversation"


class MissingKey(Exception):
    """No API key was given and `assistant dev` left none in the data dir."""


@dataclass(frozen=True)
class ChatConfig:
    url: str
    key: str
    data_dir: Path


def resolve(*, url: str | None, key: str | None, settings: Settings) -> ChatConfig:
    """The API URL and key from `--url`/`--key`, the environment, or the data dir of `assistant dev`."""
    data_dir = settings.assistant_data_dir
    if not url:
        url = os.environ.get("ASSISTANT_URL")
    if not url:
        state = read_dev_state(settings.dev_state_path()) or {}
        url = state.get("api_url") or DEFAULT_URL
    key = key or os.environ.get("ASSISTANT_API_KEY") or _read(data_dir / _DEV_KEY_FILE)
    if not key:
        raise MissingKey(
            "no API key: pass --key or set ASSISTANT_API_KEY; create one with `assistant users create NAME`,"
            f" or run `assistant dev` (it leaves a login key in {data_dir})"
        )
    return ChatConfig(url=url.rstrip("/"), key=key, data_dir=data_dir)


def last_conversation(data_dir: Path) -> str | None:
    return _read(data_dir / _LAST_CONVERSATION_FILE)


def remember_conversation(data_dir: Path, conversation_id: str) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / _LAST_CONVERSATION_FILE).write_text(conversation_id + "\n")
    except OSError:
        pass  # resuming next time is a convenience, not worth failing the chat for


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
