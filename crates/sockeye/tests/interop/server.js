'use strict';
// A ws server for one connection, driven by peer.js's line protocol.
// Usage: node server.js [protocol]
// Listens on 127.0.0.1 on an ephemeral port and prints `listening port=<n>`. If the
// client offers `protocol`, it is chosen; otherwise none is. permessage-deflate as
// SOCKEYE_INTEROP_DEFLATE says (see peer.js; off by default).

const { WebSocketServer } = require('ws');
const { attach, deflateOption, emit, emitError } = require('./peer');

const wanted = process.argv[2];
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: deflateOption(),
  handleProtocols: (offered) => (wanted !== undefined && offered.has(wanted) ? wanted : false),
});
wss.on('listening', () => emit('listening', { port: wss.address().port }));
wss.on('error', (err) => {
  emitError(`server: ${err.message}`);
  process.exit(1);
});
wss.on('connection', (ws) => {
  // One connection per run: stop listening (the open connection stays).
  wss.close();
  attach(ws);
});
