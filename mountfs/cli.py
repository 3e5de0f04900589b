"""The `drive` command line: every subcommand prints one clear line on failure and exits non-zero."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.config import DEFAULT_PORT, ServerConfig, default_data_dir


class CliError(Exception):
    """A failure to report in one line, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _server(args: argparse.Namespace) -> int:
    from server.main import serve

    serve(ServerConfig(data_dir=args.data, host=args.host, port=args.port), log_level=args.log_level)
    return 0


def _user_add(args: argparse.Namespace) -> int:
    from server.errors import ApiError
    from server.main import open_store

    store = open_store(ServerConfig(data_dir=args.data))
    try:
        user, token = store.add_user(args.name)
    except ApiError as e:
        raise CliError(e.message) from None
    if args.token_file:
        _write_secret(Path(args.token_file), token + "\n")
        print(f"created user {user.name}; token written to {args.token_file}")
    else:
        print(f"created user {user.name}; their token (shown once, keep it secret):", file=sys.stderr)
        print(token)
    return 0


def _user_token(args: argparse.Namespace) -> int:
    from server.errors import ApiError
    from server.main import open_store

    store = open_store(ServerConfig(data_dir=args.data))
    try:
        token = store.new_token(args.name)
    except ApiError as e:
        raise CliError(e.message) from None
    if args.token_file:
        _write_secret(Path(args.token_file), token + "\n")
        print(f"new token for {args.name} written to {args.token_file}")
    else:
        print(token)
    return 0


def _user_list(args: argparse.Namespace) -> int:
    from server.main import open_store

    for name in open_store(ServerConfig(data_dir=args.data)).list_users():
        print(name)
    return 0


def _write_secret(path: Path, text: str) -> None:
    """Write a credential readable by its owner only (mode 0600 from the first byte)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drive", description="drivefs: a cloud drive you mount")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("server", help="run the server (embedded: SQLite + a local blob directory)")
    s.add_argument("--data", type=Path, default=default_data_dir(), help="data directory (default: %(default)s)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_server)

    u = sub.add_parser("user", help="manage users (run where the server's data directory is)")
    usub = u.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    for name, func, helptext in (("add", _user_add, "create a user and print its token once"),
                                 ("token", _user_token, "issue another token for a user")):
        a = usub.add_parser(name, help=helptext)
        a.add_argument("name")
        a.add_argument("--data", type=Path, default=default_data_dir())
        a.add_argument("--token-file", help="write the token to this file (mode 0600) instead of printing it")
        a.set_defaults(func=func)
    ls = usub.add_parser("list", help="list users")
    ls.add_argument("--data", type=Path, default=default_data_dir())
    ls.set_defaults(func=_user_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"drive: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
