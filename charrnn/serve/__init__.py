"""`charrnn serve`: a local web page to generate text, look inside the model, and see training curves.

Needs the optional `serve` extra (FastAPI and uvicorn): see errors.install_hint.
Nothing here imports them until the command runs, so the core stays light.
"""
from __future__ import annotations

import ipaddress
import socket

from charrnn.errors import UserError, install_hint

EXTRA_HINT = f"charrnn serve needs FastAPI and uvicorn: {install_hint('serve')}"


def require_extra() -> None:
    """Raise UserError naming the extra when the web dependencies are missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(EXTRA_HINT) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args) -> int:
    """Bind the port, load and warm the model, print the URL, serve until interrupted."""
    require_extra()
    import numpy  # noqa: F401 (loads OpenBLAS, so blas_threads can find it)

    from charrnn.devices import blas_threads

    sock = listen(args.host, args.port)  # first, so a taken port fails before the model loads
    # every request is batch 1: one BLAS thread each is fastest (a second thread waiting for a busy core
    # slows every small product down), and concurrent requests use the other cores
    with sock, blas_threads(1):
        _serve(args, sock)
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A bound socket for uvicorn; UserError naming the flag when the address cannot be used."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} must be in 0..65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot listen on --host {host} --port {port} ({e.strerror or e}); "
                        "pick another port, or --port 0 for any free one") from None
    return sock


def _serve(args, sock: socket.socket) -> None:
    import uvicorn

    from charrnn.serve.app import create_app

    # on loopback, refuse requests for other host names (DNS rebinding); elsewhere the user chose to expose it
    allowed = ["127.0.0.1", "localhost", "::1", args.host] if is_loopback(args.host) else None
    app = create_app(args.checkpoint, impl=args.impl, which=args.which, allowed_hosts=allowed,
                     quantize=args.quantize)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"charrnn serve: http://{shown}:{port}/  ({args.checkpoint}, --impl {args.impl}; Ctrl-C stops)", flush=True)
    if not is_loopback(args.host):
        print(f"charrnn serve: warning: listening on {args.host}, reachable from other machines", flush=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # Ctrl-C: end the streams, so shutdown need not wait
            app.state.engine.stop_generations()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
