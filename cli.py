"""`assistant`: the one entry point (API.md, "Command line")."""

import argparse
import asyncio
import contextlib
import json
import sys

from core.config import Settings, get_settings
from core.errors import ConfigurationError
from core.logging import configure_logging


def _settings() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    return settings


def cmd_dev(args: argparse.Namespace) -> int:
    import devrun

    return devrun.run_dev(host=args.host, port=args.port)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker import run_worker

    asyncio.run(run_worker(_settings()))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from store.migrate import migrate

    applied = asyncio.run(migrate(_settings().require_database_url()))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    from store import users
    from store.db import create_pool

    async def create() -> tuple[str, str]:
        pool = await create_pool(_settings().require_database_url(), min_size=1, max_size=1)
        try:
            user = await users.create_user(pool, name=args.name)
            key = await users.create_key(pool, user_id=user.id, name="cli")
            return user.id, key.secret
        finally:
            await pool.close()

    user_id, secret = asyncio.run(create())
    if args.json:
        print(json.dumps({"user_id": user_id, "api_key": secret}))
    else:
        print(f"created user {args.name} ({user_id})\nAPI key (shown once): {secret}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from chat.app import run_chat

    return run_chat(args)


def cmd_fake_model(args: argparse.Namespace) -> int:
    from fakemodel import serve

    _settings()
    print(f"built-in offline model on http://{args.host}:{args.port}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.token_delay))
    return 0


def cmd_tool_server(args: argparse.Namespace) -> int:
    from toolserver.run import run_tool_server

    return run_tool_server(_settings(), host=args.host, port=args.port, stdio=args.stdio)


def cmd_tools_list(args: argparse.Namespace) -> int:
    from store import catalog
    from store.db import create_pool

    async def listed() -> list[catalog.CatalogTool]:
        pool = await create_pool(_settings().require_database_url(), min_size=1, max_size=1)
        try:
            return await catalog.list_tools(pool)
        finally:
            await pool.close()

    for tool in asyncio.run(listed()):
        state = "ok" if tool.healthy else f"unavailable: {tool.problem or 'unknown'}"
        gate = " (needs approval)" if tool.requires_confirmation else ""
        print(f"{tool.name}  [{tool.source}]{gate}  {state}")
    return 0


def cmd_tools_trust(args: argparse.Namespace) -> int:
    """Pin a server's tools to the definitions it offers now; workers re-enable them within seconds."""
    from store import pins
    from store.db import create_pool

    async def trust() -> tuple[list[pins.Pin], list[pins.Pin]]:
        pool = await create_pool(_settings().require_database_url(), min_size=1, max_size=1)
        try:
            return await pins.trust_server(pool, server=args.server), await pins.of_server(
                pool, server=args.server
            )
        finally:
            await pool.close()

    moved, known = asyncio.run(trust())
    if not known:
        print(f"assistant: no tool of a server named {args.server!r} has been seen", file=sys.stderr)
        return 1
    for pin in moved:
        print(f"trusted the new definition of {pin.name}")
    if not moved:
        print(f"every tool of {args.server} already matches its pin ({len(known)} tools)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description="A durable AI assistant.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run everything on embedded services")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(func=cmd_dev)

    api = sub.add_parser("api", help="run one API process")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)

    sub.add_parser("worker", help="run one worker process").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    users_cmd = sub.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    create = users_cmd.add_parser("create", help="create a user and print an API key")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help='print {"user_id","api_key"}')
    create.set_defaults(func=cmd_users_create)

    from chat.app import add_arguments as add_chat_arguments

    chat = sub.add_parser("chat", help="interactive terminal client of the API")
    add_chat_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    fake = sub.add_parser("fake-model", help="the built-in OpenAI-compatible offline model")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8400)
    fake.add_argument("--token-delay", type=float, default=0.02, help="seconds between tokens")
    fake.set_defaults(func=cmd_fake_model)

    tool_server = sub.add_parser(
        "tool-server", help="serve the built-in tools over MCP and the simple protocol"
    )
    tool_server.add_argument("--host", default="127.0.0.1")
    tool_server.add_argument("--port", type=int, default=8765)
    tool_server.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout instead of HTTP")
    tool_server.set_defaults(func=cmd_tool_server)

    tools_cmd = sub.add_parser("tools", help="the tools workers offer, and tool server trust")
    tools_sub = tools_cmd.add_subparsers(dest="action", required=True)
    tools_sub.add_parser("list", help="every tool, its source and whether it can be used").set_defaults(
        func=cmd_tools_list
    )
    trust = tools_sub.add_parser("trust", help="accept a tool server's changed tool definitions")
    trust.add_argument("server")
    trust.set_defaults(func=cmd_tools_trust)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as err:
        print(f"assistant: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
