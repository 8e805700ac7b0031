"""`mnistlab serve`: the local web page over a runs directory."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from ..extras import needs_extras
from .common import bound_socket


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the local web page: draw a digit and watch every layer of your runs react",
        description="Serve the runs under --runs on a local web page. Bound to 127.0.0.1 unless --host says "
        "otherwise: the page has no authentication, so only open it to a network you trust.",
    )
    p.add_argument(
        "--runs", default="runs", metavar="DIR", help="directory holding run directories (default: runs)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for CNN runs (default 1: one image's forward pass gains nothing from more)",
    )
    p.add_argument(
        "--storage", metavar="URL", help="sweep storage of the Sweeps tab (default RUNS/sweeps.db if any)"
    )
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    # Before torch (and its OpenMP runtime) loads: idle OpenMP threads sleep instead of spinning, which
    # stalls each forward pass while other processes keep the cores busy (docs/performance.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with needs_extras("mnistlab serve"):
        import uvicorn

        from ..web.app import create_app
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} must be between 0 and 65535")
    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be at least 1")
    runs = Path(args.runs)
    if not runs.is_dir():
        print(
            f"mnistlab: note: {runs} does not exist yet; runs trained into it will appear on the page",
            file=sys.stderr,
        )
    sock = bound_socket(args.host, args.port)
    app = create_app(runs, torch_threads=args.threads, sweep_storage=args.storage)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    _announce_url(server, args.host)
    with sock:
        server.run(sockets=[sock])
    return 0


def _announce_url(server, host: str) -> None:
    """Print the URL once the socket is bound (so --port 0 shows the real port)."""
    startup = server.startup

    async def startup_and_print(sockets=None):
        await startup(sockets=sockets)
        if not server.started:
            return
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else server.config.port
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        print(
            f"mnistlab: serving {server.config.app.state.store.runs_dir} at http://{shown}:{port}/ (Ctrl+C "
            "to stop)",
            flush=True,
        )

    server.startup = startup_and_print
