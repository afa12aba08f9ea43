'use strict';
// A ws client, driven by peer.js's line protocol.
// Usage: node client.js <url> [protocol,protocol...]
// No compression; prints `open protocol=<hex>` once connected.

const WebSocket = require('ws');
const { attach } = require('./peer');

const url = process.argv[2];
const protocols = process.argv[3] ? process.argv[3].split(',') : [];
attach(new WebSocket(url, protocols, { perMessageDeflate: false }));
