"""`assistant`: the one entry point (API.md, "Command line")."""

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from core.config import Settings, get_settings
from core.errors import ConfigurationError, NotFound, UsageError
from core.logging import configure_logging

T = TypeVar("T")


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
    from api.server import server_config
    from core.safety import check_startup
    from core.telemetry import setup_error_tracking, setup_tracing

    settings = _settings()
    check_startup(settings, process="api", bind_host=args.host)
    setup_tracing(settings, "assistant-api")
    setup_error_tracking(settings)
    app = create_app(settings)
    config = server_config(
        app,
        settings,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        # SIGTERM: stop accepting, close event streams with a `retry:` hint (api/streams.py),
        # wait for other requests in flight at most this long.
        timeout_graceful_shutdown=math.ceil(settings.api_shutdown_grace.total_seconds()),
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once its graceful shutdown is done, to the
    # handler found at start: a SIGTERM shutdown is a clean one, so that handler does nothing
    # and the process exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 3  # as uvicorn.run: 3 is its start-up failure


def cmd_worker(args: argparse.Namespace) -> int:
    from core.safety import check_startup
    from core.telemetry import setup_error_tracking, setup_tracing
    from worker import run_worker

    settings = _settings()
    check_startup(settings, process="worker")
    setup_tracing(settings, "assistant-worker")
    setup_error_tracking(settings)
    asyncio.run(run_worker(settings, metrics_port=args.metrics_port, metrics_host=args.metrics_host))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from store.migrate import migrate

    applied = asyncio.run(migrate(_settings().require_database_url()))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


async def _user_named(pool: Any, ref: str) -> Any:
    """The user whose id or (unique) name is `ref`; NotFound/UsageError otherwise."""
    from store import users

    found = await users.get_user(pool, user_id=ref)
    if found is not None:
        return found
    named = await users.users_named(pool, name=ref)
    if not named:
        raise NotFound(f"no user with the id or name {ref!r}")
    if len(named) > 1:
        raise UsageError(
            f"{len(named)} users are named {ref!r}: name one by id ({', '.join(u.id for u in named)})"
        )
    return named[0]


def _with_pool(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(pool)` on a one-connection pool of the configured database."""
    from store.db import create_pool

    async def run() -> T:
        pool = await create_pool(_settings().require_database_url(), min_size=1, max_size=1)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


def _user_json(user: Any) -> dict[str, Any]:
    return {**user.model_dump(mode="json"), "disabled": user.disabled_at is not None}


def cmd_users_create(args: argparse.Namespace) -> int:
    from store import users

    async def create(pool: Any) -> tuple[Any, Any]:
        user = await users.create_user(pool, name=args.name, role="admin" if args.admin else "user")
        return user, await users.create_key(pool, user_id=user.id, name="cli")

    user, key = _with_pool(create)
    if args.json:
        print(json.dumps({"user_id": user.id, "api_key": key.secret, "role": user.role}))
    else:
        role = " with the admin role" if args.admin else ""
        print(f"created user {args.name} ({user.id}){role}\nAPI key (shown once): {key.secret}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    from store import users

    listed = _with_pool(users.all_users)
    if args.json:
        print(json.dumps([_user_json(u) for u in listed]))
        return 0
    for user in listed:
        state = "disabled" if user.disabled_at else "active"
        print(f"{user.id}  {user.role:<5}  {user.created_at:%Y-%m-%dT%H:%M:%SZ}  {state:<8}  {user.name}")
    return 0


def cmd_users_update(args: argparse.Namespace) -> int:
    """`users disable|enable|set-role`: the operator may change any user, the last admin included."""
    from store import users

    disabled = {"disable": True, "enable": False}.get(args.action)
    role = args.role if args.action == "set-role" else None

    async def update(pool: Any) -> Any:
        user = await _user_named(pool, args.user)
        return await users.update_user(
            pool, user_id=user.id, role=role, disabled=disabled, keep_an_admin=False
        )

    user = _with_pool(update)
    if args.action == "disable":
        print(f"disabled user {user.name} ({user.id}): its API keys are refused from now on")
    elif args.action == "enable":
        print(f"enabled user {user.name} ({user.id})")
    else:
        print(f"user {user.name} ({user.id}) now has the role {user.role}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from store import users

    async def create(pool: Any) -> tuple[Any, Any]:
        user = await _user_named(pool, args.user)
        return user, await users.create_key(pool, user_id=user.id, name=args.name)

    user, key = _with_pool(create)
    if user.disabled_at is not None:
        print(
            f"assistant: note: {user.name} is disabled; the key works once they are enabled", file=sys.stderr
        )
    if args.json:
        print(
            json.dumps(
                {
                    "key_id": key.id,
                    "user_id": user.id,
                    "name": key.name,
                    "prefix": key.prefix,
                    "api_key": key.secret,
                }
            )
        )
    else:
        print(f"created API key {key.id} for {user.name} ({user.id})\nAPI key (shown once): {key.secret}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from store import users

    async def listed(pool: Any) -> list[Any]:
        user = await _user_named(pool, args.user)
        return await users.list_keys(pool, user_id=user.id)

    keys = _with_pool(listed)
    if args.json:
        print(json.dumps([k.model_dump(mode="json") for k in keys]))
        return 0
    for key in keys:
        used = f"{key.last_used_at:%Y-%m-%dT%H:%M:%SZ}" if key.last_used_at else "never used"
        print(
            f"{key.id}  {key.prefix}…  created {key.created_at:%Y-%m-%dT%H:%M:%SZ}  {used}  {key.name or ''}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from store import users

    async def revoke(pool: Any) -> str | None:
        return await users.revoke_any_key(pool, key_id=args.key_id)

    owner = _with_pool(revoke)
    if owner is None:
        raise NotFound(f"no active API key {args.key_id!r}")
    print(f"revoked API key {args.key_id} of user {owner}: it is refused from now on")
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


def cmd_doctor(args: argparse.Namespace) -> int:
    """The checks of /readyz with a hint for each problem; 1 when a required one failed."""
    from core import doctor

    diagnosis = asyncio.run(doctor.diagnose(_settings()))
    print(json.dumps(diagnosis) if args.json else doctor.render(diagnosis))
    return doctor.exit_code(diagnosis)


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

    worker = sub.add_parser("worker", help="run one worker process")
    worker.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)"
    )
    worker.add_argument("--metrics-host", default="127.0.0.1", help="the metrics port's address")
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    users_cmd = sub.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    create = users_cmd.add_parser("create", help="create a user and print an API key")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="give the user the admin role")
    create.add_argument("--json", action="store_true", help='print {"user_id","api_key","role"}')
    create.set_defaults(func=cmd_users_create)
    users_list = users_cmd.add_parser("list", help="every user: id, role, created, active or disabled, name")
    users_list.add_argument("--json", action="store_true")
    users_list.set_defaults(func=cmd_users_list)
    for action, text in (("disable", "refuse the user's API keys from now on"), ("enable", "undo disable")):
        change = users_cmd.add_parser(action, help=text)
        change.add_argument("user", help="a user id or a unique name")
        change.set_defaults(func=cmd_users_update)
    set_role = users_cmd.add_parser("set-role", help="make a user an admin, or an ordinary user")
    set_role.add_argument("user", help="a user id or a unique name")
    set_role.add_argument("role", choices=["user", "admin"])
    set_role.set_defaults(func=cmd_users_update)

    keys_cmd = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    key_create = keys_cmd.add_parser("create", help="create an API key for a user and print it once")
    key_create.add_argument("user", help="a user id or a unique name")
    key_create.add_argument("--name", help="what the key is for")
    key_create.add_argument(
        "--json", action="store_true", help='print {"key_id","user_id","name","prefix","api_key"}'
    )
    key_create.set_defaults(func=cmd_keys_create)
    key_list = keys_cmd.add_parser("list", help="a user's active API keys (never their secrets)")
    key_list.add_argument("user", help="a user id or a unique name")
    key_list.add_argument("--json", action="store_true")
    key_list.set_defaults(func=cmd_keys_list)
    key_revoke = keys_cmd.add_parser(
        "revoke", help="revoke an API key: it is refused from the next request on"
    )
    key_revoke.add_argument("key_id")
    key_revoke.set_defaults(func=cmd_keys_revoke)

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

    doctor = sub.add_parser("doctor", help="check the database, Temporal, model, tool servers, disk, memory")
    doctor.add_argument("--json", action="store_true", help="print {status, checks: {name: {…, hint}}}")
    doctor.set_defaults(func=cmd_doctor)

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
    except UsageError as err:  # an unknown user or key, an ambiguous name
        print(f"assistant: {err}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
