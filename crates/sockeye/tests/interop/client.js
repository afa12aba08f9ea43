'use strict';
// A ws client, driven by peer.js's line protocol.
// Usage: node client.js <url> [protocol,protocol...]
// permessage-deflate as SOCKEYE_INTEROP_DEFLATE says (see peer.js; off by default);
// prints `open ...` once connected.

const WebSocket = require('ws');
const { attach, deflateOption } = require('./peer');

const url = process.argv[2];
const protocols = process.argv[3] ? process.argv[3].split(',') : [];
attach(new WebSocket(url, protocols, { perMessageDeflate: deflateOption() }));
