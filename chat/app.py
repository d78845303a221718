"""The `assistant chat` REPL: one line of stdin is one message; the turn's events stream back.

Ctrl-C while a turn runs cancels the turn (the stream then shows its `cancelled` end); a second
Ctrl-C leaves. `--json` prints every event as one JSON line and asks nothing: an approval is then
left pending, to be decided through the API (POST /api/v1/approvals/{id}) or the web UI, and the
client keeps following the turn until it ends.
"""

import argparse
import sys
from collections.abc import Iterator

from chat.client import ApiClient, ApiError, ChatError, TurnStream
from chat.config import ChatConfig, MissingKey, last_conversation, remember_conversation, resolve
from chat.render import JsonRenderer, Renderer
from core.config import get_settings

_HELP = "type a message; /new starts a new conversation, /quit leaves (Ctrl-C cancels a running turn)"


class _Leave(Exception):
    """The person asked to leave (a second Ctrl-C, /quit or end of input)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new", action="store_true", help="start a new conversation")
    parser.add_argument("--conversation", metavar="ID", help="continue this conversation")
    parser.add_argument("--json", action="store_true", help="print one JSON event per line; no prompts")
    parser.add_argument("--url", help="API URL (else ASSISTANT_URL, else the running `assistant dev`)")
    parser.add_argument("--key", help="API key (else ASSISTANT_API_KEY, else the dev login key)")


def run_chat(args: argparse.Namespace) -> int:
    try:
        config = resolve(url=args.url, key=args.key, settings=get_settings())
    except MissingKey as err:
        print(f"assistant chat: {err}", file=sys.stderr)
        return 2
    api = ApiClient(config.url, config.key)
    try:
        return _Chat(api, config, json_mode=args.json).run(new=args.new, conversation_id=args.conversation)
    except ChatError as err:
        print(f"assistant chat: {err}", file=sys.stderr)
        return 1
    finally:
        api.close()


class _Chat:
    def __init__(self, api: ApiClient, config: ChatConfig, *, json_mode: bool) -> None:
        self.api = api
        self.config = config
        self.json_mode = json_mode
        self.renderer: Renderer = JsonRenderer() if json_mode else Renderer()
        self.conversation_id: str | None = None

    def run(self, *, new: bool, conversation_id: str | None) -> int:
        self.api.me()  # the key and the URL are checked before anything is typed
        if conversation_id:
            self._open(conversation_id, explicit=True)
        elif not new and (last := last_conversation(self.config.data_dir)):
            self._open(last, explicit=False)
        if not self.json_mode:
            where = f"conversation {self.conversation_id}" if self.conversation_id else "a new conversation"
            print(f"connected to {self.config.url}; {where}\n{_HELP}")
        try:
            for line in self._lines():
                text = line.strip()
                if text in ("/quit", "/exit"):
                    break
                if text == "/new":
                    self.conversation_id = None
                    self.renderer.line("(a new conversation starts with your next message)")
                elif text:
                    self._send(text)
        except (_Leave, KeyboardInterrupt):  # a Ctrl-C between the places that expect one leaves too
            self.renderer.spinner.stop()
        if not self.json_mode:
            print()
        return 0

    def _open(self, conversation_id: str, *, explicit: bool) -> None:
        try:
            conversation = self.api.conversation(conversation_id)
        except ApiError as err:
            if err.status != 404 or explicit:
                raise
            return  # the remembered one is gone (or another user's): start afresh
        self.conversation_id = conversation["id"]
        if conversation.get("active_turn_id"):
            self.renderer.line(f"(a turn is still running: {conversation['active_turn_id']}; following it)")
            self._follow(self.api.follow(conversation["active_turn_id"]))

    def _lines(self) -> Iterator[str]:
        while True:
            try:
                line = input("> ") if not self.json_mode else sys.stdin.readline()
            except (EOFError, KeyboardInterrupt):
                return
            if self.json_mode and not line:
                return
            yield line

    def _send(self, text: str) -> None:
        if self.conversation_id is None:
            self.conversation_id = self.api.create_conversation()["id"]
        remember_conversation(self.config.data_dir, self.conversation_id)
        self.renderer.waiting("sending")
        try:
            stream = self.api.send_message(self.conversation_id, text)
        except ApiError as err:
            if err.code != "turn_in_progress":
                self.renderer.line(f"not sent: {err.describe()}")
                return
            self.renderer.line("(the previous turn is still running; following it, then sending)")
            self._follow(self.api.follow(err.problem["active_turn_id"]))
            stream = self.api.send_message(self.conversation_id, text)
        self._follow(stream)

    def _follow(self, stream: TurnStream) -> None:
        """Render a turn to its end; Ctrl-C cancels it, a second Ctrl-C leaves."""
        from chat import approve  # its preview needs the e-mail helpers; only load them for a turn

        cancelling = False
        while not stream.ended:
            events = stream.events()
            try:
                for event in events:
                    self.renderer.event(event)
                    if event["type"] == "approval_required" and not self.json_mode:
                        approve.decide(self.api, self.renderer, event, ask=input)
            except (KeyboardInterrupt, EOFError):
                events.close()
                if cancelling:
                    self.renderer.spinner.stop()
                    raise _Leave() from None
                cancelling = True
                self.renderer.line("(cancelling the turn; Ctrl-C again to leave)")
                try:
                    self.api.cancel(stream.turn_id)
                except KeyboardInterrupt:  # the second Ctrl-C came while the cancel was on its way
                    self.api.cancel(stream.turn_id)  # idempotent: be sure it was sent, then leave
                    self.renderer.spinner.stop()
                    raise _Leave() from None
        self.renderer.spinner.stop()
