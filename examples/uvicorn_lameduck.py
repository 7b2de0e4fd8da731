"""uvicorn under baton: fast on the inherited socket, and a drain that fails
no request, also on keep-alive connections. Copy the parts marked RECIPE.

    baton run --listen http=127.0.0.1:8000 --ready auto \
        -- python3 uvicorn_lameduck.py myapp:app

(`myapp:app` is imported from the current directory; without it, a
hello app answers.)

Why not `uvicorn --fd 3`: it works, but uvicorn wraps fd 3 as a unix
socket (socket.fromfd(3, AF_UNIX, ...)), so asyncio never sets TCP_NODELAY
on the connections, and each response waits for the client's delayed ACK:
about 44 ms per request. socket.socket(fileno=3) asks the kernel what the
socket is.

The drain (lame duck): on SIGTERM it stops accepting and, for a grace
period, every response says "Connection: close", so each client opens its
next connection to the new generation; only then does uvicorn shut down,
which closes idle keep-alive connections, and connections whose request
has not arrived yet, at once.
"""
import asyncio
import os
import socket
import sys

import uvicorn

# RECIPE: longer than the time a client keeps a connection idle between
# two requests; baton's --drain-timeout must be longer than grace plus the
# longest request.
GRACE_S = 1.0


class LameDuck:
    """RECIPE: ASGI middleware that closes each connection after its
    response once the drain began."""

    def __init__(self, app):
        self.app = app
        self.draining = False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message):
            if self.draining and message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = dict(message, headers=headers + [(b"connection", b"close")])
            await send(message)

        await self.app(scope, receive, send_closing)


class Server(uvicorn.Server):
    """RECIPE: the first SIGTERM or SIGINT starts the lame duck; uvicorn's
    own shutdown follows after the grace (a second SIGINT forces it)."""

    def __init__(self, config, lame_duck):
        super().__init__(config)
        self.lame_duck = lame_duck

    def handle_exit(self, sig, frame):
        if self.lame_duck.draining:
            return super().handle_exit(sig, frame)
        self.lame_duck.draining = True
        # Stop accepting now: new connections wait in baton's socket for the
        # new generation. A connection accepted late would still be waiting
        # for its request when uvicorn's shutdown closes it.
        for server in self.servers:
            server.close()
        # uvicorn calls this from its event loop (loop.add_signal_handler).
        asyncio.get_running_loop().call_later(GRACE_S, super().handle_exit, sig, frame)


async def hello(scope, receive, send):
    """The app when none is named: answers `ok` with the worker's pid."""
    await receive()
    headers = [(b"content-type", b"text/plain"), (b"x-pid", str(os.getpid()).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok\n"})


def main():
    sys.path.insert(0, os.getcwd())  # as uvicorn's --app-dir . does
    app = uvicorn.importer.import_from_string(sys.argv[1]) if len(sys.argv) > 1 else hello
    lame_duck = LameDuck(app)
    config = uvicorn.Config(lame_duck, log_level="warning", lifespan="off")
    server = Server(config, lame_duck)
    # RECIPE: the socket from baton (or systemd), else bind one.
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
        sock = socket.socket(fileno=3)
    else:
        sock = socket.create_server(("127.0.0.1", 8000))
    print(f"uvicorn-lameduck pid={os.getpid()} serving on {sock.getsockname()}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    print(f"uvicorn-lameduck pid={os.getpid()} drained", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
