'use strict';
// The command-driven ws peer shared by server.js and client.js, for Sockeye's interop
// tests (crates/sockeye/tests/it/interop.rs).
//
// One line per event on stdout and per command on stdin: a name, then key=value pairs
// separated by spaces. Byte strings (text, payloads, reasons, protocol) are hex; an empty
// value is an empty string.
//
// Events (stdout):
//   listening port=<n>                                    server.js only
//   open protocol=<hex> extensions=<hex> deflate=<hex>    the connection is open
//       extensions: ws.extensions ('permessage-deflate' or empty);
//       deflate: the agreed permessage-deflate parameters, `a; b=1` (empty without)
//   message type=<text|binary> len=<n> fnv=<8 hex> pattern=<true|false> [data=<hex>]
//       fnv: FNV-1a 32 of the payload; pattern: whether it equals pattern(len);
//       data: the payload, always for text, for binary only up to 256 bytes
//   ping data=<hex>    pong data=<hex>                    control frames received
//   close code=<n> reason=<hex>                           the 'close' event; then exit 0
//   error message=<hex>                                   an 'error' event or a bad command
//   stats read=<n> written=<n>                            the socket's bytesRead and
//                                                         bytesWritten (answers `stats`)
//
// Commands (stdin):
//   text data=<hex>                          ws.send(<UTF-8 string>)
//   pattern len=<n>                          ws.send(pattern(n)) as binary
//   noise len=<n>                            ws.send(noise(n)) as binary
//   fragments type=<text|binary> chunks=<hex>,<hex>,...
//                                            ws.send(chunk, { binary, fin: false }) for each
//                                            chunk but the last, which has fin: true
//       text, pattern, noise and fragments take `compress=false` for ws's
//       send(data, { compress: false })
//   stats                                    report the socket's byte counts
//   ping data=<hex>                          ws.ping(data)
//   close code=<n> reason=<hex>              ws.close(code, reason)
//
// pattern(n)[i] = ((i * 31) ^ (i >>> 11)) & 0xff, as in interop.rs (compresses well);
// noise(n): xorshift32 from 0x9e3779b9, 4 little-endian bytes per step, as in interop.rs
// (does not compress).
//
// permessage-deflate: off unless SOCKEYE_INTEROP_DEFLATE is set to ws's perMessageDeflate
// option as JSON (`true`, or an object such as {"serverNoContextTakeover":true}).

const readline = require('readline');

function hex(data) {
  return Buffer.from(data).toString('hex');
}

function emit(name, fields = {}) {
  const parts = [name];
  for (const [key, value] of Object.entries(fields)) parts.push(`${key}=${value}`);
  // Writes to a pipe are synchronous on Linux and macOS, so nothing is lost at exit.
  process.stdout.write(parts.join(' ') + '\n');
}

function emitError(message) {
  emit('error', { message: hex(String(message)) });
}

function pattern(len) {
  const buf = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) buf[i] = ((i * 31) ^ (i >>> 11)) & 0xff;
  return buf;
}

function noise(len) {
  const buf = Buffer.allocUnsafe(len);
  let x = 0x9e3779b9 | 0;
  for (let i = 0; i < len; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    for (let j = 0; j < 4 && i + j < len; j++) buf[i + j] = (x >>> (8 * j)) & 0xff;
  }
  return buf;
}

// ws's perMessageDeflate option from SOCKEYE_INTEROP_DEFLATE (false when unset).
function deflateOption() {
  const value = process.env.SOCKEYE_INTEROP_DEFLATE;
  return value ? JSON.parse(value) : false;
}

// The agreed permessage-deflate parameters of `ws` as `a; b=1` (empty without).
function deflateParams(ws) {
  const ext = ws._extensions['permessage-deflate'];
  if (!ext || !ext.params) return '';
  return Object.entries(ext.params)
    .map(([key, value]) => (value === true ? key : `${key}=${value}`))
    .join('; ');
}

function fnv1a32(buf) {
  let h = 0x811c9dc5;
  for (let i = 0; i < buf.length; i++) {
    h ^= buf[i];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

function parseLine(line) {
  const [name, ...rest] = line.trim().split(' ');
  const fields = {};
  for (const part of rest) {
    const eq = part.indexOf('=');
    if (eq < 0) throw new Error(`bad field ${JSON.stringify(part)}`);
    fields[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return { name, fields };
}

function unhex(value) {
  if (value === undefined || !/^([0-9a-f]{2})*$/.test(value)) {
    throw new Error(`bad hex ${JSON.stringify(value)}`);
  }
  return Buffer.from(value, 'hex');
}

function sent(err) {
  if (err) emitError(`send failed: ${err.message}`);
}

function run(ws, line) {
  const { name, fields } = parseLine(line);
  const compress = fields.compress !== 'false';
  switch (name) {
    case 'text':
      ws.send(unhex(fields.data).toString('utf8'), { compress }, sent);
      break;
    case 'pattern':
      ws.send(pattern(Number(fields.len)), { binary: true, compress }, sent);
      break;
    case 'noise':
      ws.send(noise(Number(fields.len)), { binary: true, compress }, sent);
      break;
    case 'fragments': {
      const binary = fields.type === 'binary';
      const chunks = (fields.chunks ?? '').split(',').map(unhex);
      chunks.forEach((chunk, i) => {
        ws.send(chunk, { binary, compress, fin: i === chunks.length - 1 }, sent);
      });
      break;
    }
    case 'stats':
      emit('stats', { read: ws._socket.bytesRead, written: ws._socket.bytesWritten });
      break;
    case 'ping':
      ws.ping(unhex(fields.data), undefined, sent);
      break;
    case 'close':
      ws.close(Number(fields.code), unhex(fields.reason));
      break;
    default:
      throw new Error(`unknown command ${JSON.stringify(name)}`);
  }
}

let socket = null;
const pending = [];

function command(line) {
  if (!line.trim()) return;
  if (!socket) {
    pending.push(line);
    return;
  }
  try {
    run(socket, line);
  } catch (err) {
    emitError(`command ${JSON.stringify(line)}: ${err.message}`);
  }
}

const input = readline.createInterface({ input: process.stdin });
input.on('line', command);
// The test dropped its end without waiting for us: it is gone, so go too.
input.on('close', () => process.exit(2));

// Reports the events of `ws` and runs the commands on it.
function attach(ws) {
  socket = ws;
  const opened = () =>
    emit('open', {
      protocol: hex(ws.protocol),
      extensions: hex(ws.extensions),
      deflate: hex(deflateParams(ws)),
    });
  if (ws.readyState === ws.OPEN) opened();
  else ws.on('open', opened);
  ws.on('message', (data, isBinary) => {
    const buf = Buffer.isBuffer(data) ? data : Buffer.concat([].concat(data));
    const fields = {
      type: isBinary ? 'binary' : 'text',
      len: buf.length,
      fnv: fnv1a32(buf),
      pattern: buf.equals(pattern(buf.length)),
    };
    if (!isBinary || buf.length <= 256) fields.data = hex(buf);
    emit('message', fields);
  });
  ws.on('ping', (data) => emit('ping', { data: hex(data) }));
  ws.on('pong', (data) => emit('pong', { data: hex(data) }));
  ws.on('error', (err) => emitError(err.message));
  ws.on('close', (code, reason) => {
    emit('close', { code, reason: hex(reason) });
    process.exit(0);
  });
  for (const line of pending.splice(0)) command(line);
}

module.exports = { attach, deflateOption, emit, emitError };
