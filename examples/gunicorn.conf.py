# gunicorn under baton: a reload fails no request, new connections or
# keep-alive.
#
#   baton run --listen http=127.0.0.1:8000 --ready auto --drain-timeout 40s \
#       -- gunicorn -c examples/gunicorn.conf.py myapp:app
#
# The socket: gunicorn reads LISTEN_FDS by itself and serves baton's
# sockets. Give it no --bind (and no `bind` here): `--bind fd://3` would
# open fd 3 a second time, and gunicorn crash-loops on EBADF.
#
# Readiness: --ready auto, which sees the workers wait on the socket.
# gunicorn's master sends READY=1 before its workers have loaded the app,
# so under --ready notify a deploy that cannot load would replace a good one.

workers = 2

# Sync workers answer every request with "Connection: close": a client
# never sends a request on a connection gunicorn is closing, so keep-alive
# load fails nothing either. (gthread workers keep connections alive, and
# drop the idle ones at exit: requests that race that close fail.) Put a
# proxy in front for keep-alive to clients.
worker_class = "sync"

# On SIGTERM each worker finishes its request; after this many seconds
# the master kills what is left. baton's --drain-timeout must be longer.
graceful_timeout = 30
