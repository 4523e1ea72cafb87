"""admission.cli: the `admission` command: serve, config, reset, bench."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from admission.config.settings import Settings
from admission.errors import ConfigError, quote

DEMO_TARGET = "admission.demo:app"


def _settings_or_exit() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        for line in exc.lines:
            print(f"admission: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """cmd_serve validates the settings and the target, then serves until drained."""
    from uvicorn.importer import ImportFromStringError, import_from_string

    from admission.server import flags
    from admission.server.serve import DEMO, serve

    settings = _settings_or_exit()
    target = args.app or DEMO
    # As `uvicorn module:app` does: the app's module is looked up in the current directory
    # first (a console script, unlike `python -m`, doesn't put it on the path).
    sys.path.insert(0, os.getcwd())
    try:
        import_from_string(target)
    except ImportFromStringError as exc:
        print(f"admission: cannot load the app {quote(target)}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # The module was found but failed while importing: its traceback is the useful part.
        traceback.print_exc()
        print(
            f"admission: cannot load the app {quote(target)}: importing it raised {exc!r}",
            file=sys.stderr,
        )
        return 2
    if args.workers < 1:
        args.parser.error("--workers must be >= 1")
    if args.reload and args.workers > 1:
        args.parser.error("--reload is for development, with one worker: drop --workers")
    return serve(
        target,
        host=args.host,
        port=args.port,
        workers=args.workers,
        settings=settings,
        access_log=not args.no_access_log,
        uvicorn=flags.passed(args),
    )


def cmd_config(args: argparse.Namespace) -> int:
    """cmd_config prints the effective settings, secrets redacted; 2 on a bad one."""
    settings = _settings_or_exit()
    rows = settings.describe()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if settings.policies:
        from admission.ratelimit.gate import resolved_policies

        print("\npolicies, in the order they apply (every matching one does):")
        for policy in resolved_policies(settings):
            print(f"  policy {policy.name}: {policy.describe()}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """cmd_reset empties a client's buckets in the configured Redis: 0 when done (also when
    there was nothing to empty), 1 with the memory store or when Redis fails, 2 on bad
    settings or an unknown policy."""
    import asyncio

    from admission.bucket import Bucket
    from admission.config.storage import redact_uri
    from admission.errors import StorageError
    from admission.ratelimit.gate import resolved_policies
    from admission.ratelimit.keys import client_key_of
    from admission.stores.naming import naming_secret
    from admission.stores.redis import RedisStore
    from admission.stores.reset import reset_client

    settings = _settings_or_exit()
    if settings.storage == "memory://":
        print(
            "admission: ADMISSION_STORAGE is memory://: each serving process keeps its buckets "
            "in its own memory, so there is nothing to reset from outside it (a restart empties "
            "them; a shared Redis makes them resettable)",
            file=sys.stderr,
        )
        return 1
    if args.policy is not None:
        names = [p.name for p in resolved_policies(settings)]
        if args.policy not in names:
            known = ", ".join(names) if names else "none: ADMISSION_POLICIES is unset"
            args.parser.error(f"no policy {quote(args.policy)} (policies: {known})")
    key = client_key_of(args.key)
    store = RedisStore.from_uri(
        settings.storage,
        # Reset reads and deletes; the bucket's rate plays no part.
        Bucket(1.0, 1),
        timeout_s=max(settings.storage_timeout, RESET_TIMEOUT_S),
        prefix=settings.key_prefix,
        secret=naming_secret(settings.key_prefix, settings.key_secret),
    )

    async def reset() -> int:
        try:
            return await reset_client(store, key, args.policy)
        finally:
            await store.close()

    where = redact_uri(settings.storage)
    scope = f" of policy {quote(args.policy)}" if args.policy else ""
    try:
        deleted = asyncio.run(reset())
    except StorageError as exc:
        print(f"admission: cannot reset in {where}: {exc}", file=sys.stderr)
        return 1
    if deleted:
        print(f"admission: emptied {deleted} bucket(s){scope} of that client in {where}")
    else:
        print(f"admission: no bucket{scope} of that client in {where}: it is full already")
    return 0


# Seconds each Redis call of `admission reset` may take: an operator waits, a request doesn't.
RESET_TIMEOUT_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    """build_parser is the whole command line."""
    parser = argparse.ArgumentParser(
        prog="admission",
        description="Admission control for ASGI services. Settings come from ADMISSION_* "
        "variables (see `admission config` and docs/configuration.md).",
    )
    from admission.server import flags

    parser.add_argument("--version", action="version", version=f"admission {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve an ASGI app (default: the demo) under admission",
        description="Serve an ASGI app under uvicorn with AdmissionMiddleware applied (unless "
        "the app already has it) and the drain wired to SIGTERM/SIGINT. Settings come from the "
        "ADMISSION_* variables; a bad one stops start-up with one line per bad variable and "
        "exit status 2.",
        epilog=flags.owned_epilog(),
    )
    serve.add_argument(
        "app", nargs="?", help=f"the app to serve, as MODULE:APP (default: {DEMO_TARGET})"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each with its own window and memory store (default: 1)",
    )
    serve.add_argument(
        "--no-access-log",
        action="store_true",
        help="turn off uvicorn's per-request access log (default: on)",
    )
    flags.add_arguments(serve)
    serve.set_defaults(func=cmd_serve, parser=serve)
    config = sub.add_parser(
        "config",
        help="print the settings the ADMISSION_* variables give; exit 2 on a bad one",
        description="Print every ADMISSION_* setting with the value the environment gives it "
        "(a default when unset), credentials shown as ***. Exit status 2, with one line per "
        "bad variable, when any is invalid. Settings passed in code to AdmissionMiddleware "
        "win over these variables; the server then logs a warning naming the ones it ignores.",
    )
    config.set_defaults(func=cmd_config, parser=config)
    reset = sub.add_parser(
        "reset",
        help="empty a client's buckets in the shared Redis",
        description="Empty one client's rate-limit buckets in the Redis that ADMISSION_STORAGE "
        "names, so its next request is admitted: every bucket of the client, or those of one "
        "route policy. KEY is what identifies the client per ADMISSION_KEY: the API key or "
        "header value, or the IP address. With the memory store there is nothing to reset "
        "from outside the serving process: exit status 1.",
    )
    reset.add_argument("key", metavar="KEY", help="the client: a header value or an IP address")
    reset.add_argument("--policy", metavar="NAME", help="only the buckets of this route policy")
    reset.set_defaults(func=cmd_reset, parser=reset)
    bench = sub.add_parser("bench", help="sweep window sizes against an app and recommend one")
    from admission.bench import command as bench_command

    bench_command.add_arguments(bench)
    bench.set_defaults(func=bench_command.run, parser=bench)
    return parser


def version() -> str:
    """version is the installed package's version, or "unknown" when it isn't installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("admission")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """main runs the command line and returns its exit status."""
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        # An unknown flag is the subcommand's usage error, so its usage is the one to print.
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
