// Node `ws` broadcast peer for crates/sockeye/examples/fanout.rs: a `WebSocketServer` whose
// publisher is the broadcast loop of ws's README ("Server broadcast": every open client,
// `client.send(data, { binary: true })`), so that the fan-out benchmark compares the Hub with
// what a ws user writes, in the same run.
//
//   NODE_PATH=crates/sockeye/tests/interop/node_modules node bench/peers/node_broadcast.js
//
// It listens on 127.0.0.1 (an ephemeral port), prints `port N`, and then takes commands on
// stdin, one per line:
//   `count`         prints `clients N` (the open connections);
//   `go SIZE COUNT` broadcasts COUNT binary messages of SIZE bytes, one at a time with the
//                   event loop let run between them (as the Hub's round does), then prints
//                   `sent`;
// and exits when stdin ends. Its CPU time is read by the benchmark from /proc/PID/stat.
'use strict';

const readline = require('readline');
const { WebSocketServer, WebSocket } = require('ws');

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });

wss.on('listening', () => {
  process.stdout.write(`port ${wss.address().port}\n`);
});
wss.on('connection', (ws) => {
  ws.on('error', () => {});
});

async function broadcast(size, count) {
  const data = Buffer.alloc(size, 'x');
  for (let i = 0; i < count; i++) {
    wss.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: true });
      }
    });
    await new Promise(setImmediate);
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', async (line) => {
  const [command, ...args] = line.trim().split(/\s+/);
  if (command === 'count') {
    process.stdout.write(`clients ${wss.clients.size}\n`);
  } else if (command === 'go') {
    await broadcast(Number(args[0]), Number(args[1]));
    process.stdout.write('sent\n');
  } else {
    process.stderr.write(`node_broadcast: unknown command: ${line}\n`);
    process.exit(2);
  }
});
lines.on('close', () => process.exit(0));
