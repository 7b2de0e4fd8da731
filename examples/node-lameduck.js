// A node HTTP server that reloads under baton without failing a request,
// also on keep-alive connections. Copy the parts marked RECIPE.
//
//   baton run --listen http=127.0.0.1:3000 --ready auto -- node examples/node-lameduck.js
//
// The socket: fd 3 (LISTEN_FDS, systemd's protocol), or port 3000 when
// started without baton. Readiness: --ready auto sees node wait on it.
//
// The drain (lame duck): on SIGTERM the server stops accepting and, for a
// grace period, answers every request with "Connection: close", so each
// client opens its next connection to the new generation; then it closes
// the connections left idle. server.close() alone (node 19+) closes idle
// keep-alive connections at once, racing the clients that are sending on
// them right then.
'use strict';
const http = require('http');
const net = require('net');

// RECIPE: longer than the time a client keeps a connection idle between
// two requests; baton's --drain-timeout must be longer than grace plus
// the longest request.
const GRACE_MS = 1000;

let draining = false;
const server = http.createServer((req, res) => {
  if (draining) res.setHeader('Connection', 'close'); // RECIPE
  res.setHeader('X-Pid', String(process.pid));
  res.end('ok\n');
});

// RECIPE: the socket from baton (or systemd), else bind one.
const fromBaton = process.env.LISTEN_PID === String(process.pid) && Number(process.env.LISTEN_FDS) >= 1;
server.listen(fromBaton ? { fd: 3 } : { port: 3000, host: '127.0.0.1' }, () => {
  console.error(`node-lameduck pid=${process.pid} serving on ${fromBaton ? 'fd 3' : 'port 3000'}`);
});

// RECIPE: the lame-duck drain.
process.on('SIGTERM', () => {
  draining = true;
  // Stop accepting only: http.Server#close would also close idle
  // keep-alive connections now (node 19+).
  net.Server.prototype.close.call(server, () => {
    console.error(`node-lameduck pid=${process.pid} drained`);
  });
  setTimeout(() => server.closeIdleConnections(), GRACE_MS);
});
