'use strict';
// WebSocket over HTTP/2 (RFC 8441) with Node's built-in http2 module, for Sockeye's
// interop tests (crates/sockeye/tests/http2.rs). The WebSocket framing on each stream
// is ws's own (a ws WebSocket set on the stream), the HTTP/2 side is Node's.
//
//   node h2.js server
//       An h2c server (prior knowledge) announcing SETTINGS_ENABLE_CONNECT_PROTOCOL.
//       Prints `listening port=<n>`. Each extended CONNECT with :protocol websocket and
//       sec-websocket-version 13 is answered 200 (the first offered subprotocol echoed)
//       and becomes a WebSocket that first sends the text `node-h2 <:path>`, then echoes
//       text and binary. Anything else is answered 400. Prints `open path=<:path>` and
//       `closed path=<:path> code=<n>` per WebSocket.
//
//   node h2.js client <port> <streams>
//       Connects to 127.0.0.1:<port> with prior knowledge, waits for the server's
//       settings (which must enable the extended CONNECT), opens <streams> WebSockets on
//       the one session at /ws/<i>, reads the first message of each (printed as
//       `first i=<i> text=<text>`), sends `hello <i>` and a 100000-byte binary message
//       and checks both echoes, then closes each with code 1000 and prints
//       `done i=<i> code=<close code>`; finally `ok sessions=1` and exit 0. Any failure
//       prints `error message=<text>` and exits 1.

const http2 = require('http2');
const WebSocket = require('ws');

function emit(line) {
  process.stdout.write(line + '\n');
}

function fail(message) {
  emit(`error message=${String(message).replace(/\s+/g, '_')}`);
  process.exit(1);
}

// A ws WebSocket on an HTTP/2 stream: `isServer` picks the role (a client masks).
function websocketOn(stream, isServer) {
  const ws = new WebSocket(null, undefined, {});
  ws._isServer = isServer;
  ws.setSocket(stream, Buffer.alloc(0), { maxPayload: 100 * 1024 * 1024 });
  return ws;
}

function server() {
  const srv = http2.createServer({ settings: { enableConnectProtocol: true } });
  srv.on('stream', (stream, headers) => {
    const path = headers[':path'];
    if (
      headers[':method'] !== 'CONNECT' ||
      headers[':protocol'] !== 'websocket' ||
      headers['sec-websocket-version'] !== '13'
    ) {
      stream.respond({ ':status': 400 });
      stream.end('not a WebSocket\n');
      return;
    }
    const response = { ':status': 200 };
    const offered = headers['sec-websocket-protocol'];
    if (offered) response['sec-websocket-protocol'] = offered.split(',')[0].trim();
    stream.respond(response);
    const ws = websocketOn(stream, true);
    emit(`open path=${path}`);
    ws.send(`node-h2 ${path}`);
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('close', (code) => emit(`closed path=${path} code=${code}`));
    ws.on('error', (e) => emit(`error message=${String(e.message).replace(/\s+/g, '_')}`));
  });
  srv.listen(0, '127.0.0.1', () => emit(`listening port=${srv.address().port}`));
}

function client(port, streams) {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', fail);
  const timer = setTimeout(() => fail('timed out'), 15000);
  session.once('remoteSettings', (settings) => {
    if (!settings.enableConnectProtocol) fail('the server does not enable the extended CONNECT');
    let left = streams;
    for (let i = 0; i < streams; i++) {
      const stream = session.request(
        {
          ':method': 'CONNECT',
          ':protocol': 'websocket',
          ':scheme': 'http',
          ':path': `/ws/${i}`,
          ':authority': `127.0.0.1:${port}`,
          'sec-websocket-version': '13',
        },
        { endStream: false }
      );
      stream.on('response', (headers) => {
        if (headers[':status'] !== 200) fail(`status ${headers[':status']} on stream ${i}`);
        const ws = websocketOn(stream, false);
        const big = Buffer.alloc(100000, i);
        let step = 0;
        ws.on('message', (data, isBinary) => {
          if (step === 0) {
            emit(`first i=${i} text=${data.toString()}`);
            ws.send(`hello ${i}`);
          } else if (step === 1) {
            if (isBinary || data.toString() !== `hello ${i}`) fail(`bad text echo on ${i}`);
            ws.send(big);
          } else if (step === 2) {
            if (!isBinary || !Buffer.from(data).equals(big)) fail(`bad binary echo on ${i}`);
            ws.close(1000, 'done');
          }
          step++;
        });
        ws.on('close', (code) => {
          if (step !== 3) fail(`stream ${i} closed at step ${step}`);
          emit(`done i=${i} code=${code}`);
          if (--left === 0) {
            clearTimeout(timer);
            emit('ok sessions=1');
            session.close(() => process.exit(0));
          }
        });
        ws.on('error', fail);
      });
      stream.on('error', fail);
    }
  });
}

const [mode, port, streams] = process.argv.slice(2);
if (mode === 'server') server();
else if (mode === 'client') client(Number(port), Number(streams || 1));
else fail(`usage: node h2.js server | client <port> <streams>`);
