# A WSGI app for the gunicorn recipe: `ok`, with the worker's pid.
import os


def app(environ, start_response):
    body = b"ok\n"
    start_response("200 OK", [("Content-Length", str(len(body))), ("X-Pid", str(os.getpid()))])
    return [body]
