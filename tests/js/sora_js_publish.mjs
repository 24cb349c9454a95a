#!/usr/bin/env node
// Publishes the fake camera and microphone of headless Chromium with the OFFICIAL Sora
// JavaScript SDK (npm sora-js-sdk), sendonly, to a Sora-compatible signaling URL.
//
// Used by sora-endpoint's conformance tests; usable by hand:
//   node tests/js/sora_js_publish.mjs --signaling-url ws://127.0.0.1:7000/signaling \
//        --channel-id test --seconds 4 [--codec VP8|H264] [--metadata '{"access_token":"x"}'] \
//        [--simulcast] [--width W --height H] [--no-audio]
//
// --simulcast publishes simulcast (`simulcast: true` in the SDK's sendonly options; the SDK
// applies the offer's `encodings` to the video sender); the camera then defaults to 1280x720,
// as Chromium enables fewer layers for small inputs. The outbound stats then list each layer by
// rid (`video_rids`).
//
// The page is served from a throwaway HTTP server on 127.0.0.1 (a secure context, so
// getUserMedia works) with sora.js straight from node_modules. Prints one JSON line per event
// and a final {"summary": {...}} line; exits 0 when the SDK connected (its own
// connection.created) and disconnected cleanly. Publishing stops after --seconds, or earlier
// when a line "stop" arrives on stdin.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const SORA_JS = join(here, 'node_modules', 'sora-js-sdk', 'dist', 'sora.js');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
];

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: Date.now() / 1000, ...fields }) + '\n');
}

function parseArgs(argv) {
  const opts = { urls: [], channelId: null, codec: 'VP8', seconds: 4, metadata: { access_token: 'dummy' },
    audio: true, width: null, height: null, simulcast: false, connectTimeoutMs: 20000 };
  for (let i = 0; i < argv.length; i++) {
    const [key, value] = [argv[i], argv[i + 1]];
    switch (key) {
      case '--signaling-url': opts.urls.push(value); i++; break;
      case '--channel-id': opts.channelId = value; i++; break;
      case '--codec': opts.codec = value; i++; break;
      case '--seconds': opts.seconds = Number(value); i++; break;
      case '--metadata': opts.metadata = JSON.parse(value); i++; break;
      case '--no-audio': opts.audio = false; break;
      case '--width': opts.width = Number(value); i++; break;
      case '--height': opts.height = Number(value); i++; break;
      case '--simulcast': opts.simulcast = true; break;
      default: throw new Error(`unknown argument ${key}`);
    }
  }
  opts.width ??= opts.simulcast ? 1280 : 640;
  opts.height ??= opts.simulcast ? 720 : 480;
  if (opts.urls.length === 0 || !opts.channelId) {
    throw new Error('usage: sora_js_publish.mjs --signaling-url URL [--signaling-url URL2] --channel-id ID [--seconds N] [--codec VP8|H264] [--simulcast]');
  }
  return opts;
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>sora-js-sdk publisher</title>
<script type="module">
import Sora from '/sora.js';
let pub = null;
const log = (event, fields) => console.log(JSON.stringify({ page: event, ...fields }));
window.publish = async (opts) => {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: opts.audio,
    video: { width: opts.width, height: opts.height },
  });
  const conn = Sora.connection(opts.urls.length === 1 ? opts.urls[0] : opts.urls, false);
  const options = { audio: opts.audio, video: true, videoCodecType: opts.codec, connectionTimeout: opts.connectTimeoutMs };
  if (opts.simulcast) options.simulcast = true;
  pub = conn.sendonly(opts.channelId, opts.metadata, options);
  const state = { connectedCallback: null, notifies: [], disconnect: null, signalingTypes: [] };
  window.publishState = state;
  pub.on('connected', (e) => { state.connectedCallback = e.connection_id; log('connected', { connection_id: e.connection_id }); });
  pub.on('notify', (e) => { state.notifies.push(e.event_type); log('notify', { event_type: e.event_type, connection_id: e.connection_id }); });
  pub.on('disconnect', (e) => { state.disconnect = { type: e.type, code: e.code, reason: e.reason, title: e.title }; log('disconnect', state.disconnect); });
  pub.on('signaling', (e) => { state.signalingTypes.push(e.type); });
  await pub.connect(stream);
  return { connectionId: pub.connectionId, mids: pub.mids, videoSettings: stream.getVideoTracks()[0]?.getSettings(),
    simulcast: pub.simulcast, encodings: pub.encodings };
};
window.outboundStats = async () => {
  const out = {};
  if (!pub || !pub.pc) return out;
  for (const [, r] of (await pub.pc.getStats()).entries()) {
    if (r.type === 'outbound-rtp') {
      const stats = { packetsSent: r.packetsSent, bytesSent: r.bytesSent, framesEncoded: r.framesEncoded,
        frameWidth: r.frameWidth, frameHeight: r.frameHeight, framesPerSecond: r.framesPerSecond,
        targetBitrate: r.targetBitrate, active: r.active, qualityLimitationReason: r.qualityLimitationReason,
        encoderImplementation: r.encoderImplementation, pliCount: r.pliCount };
      // A simulcast sender has one outbound-rtp per layer, told apart by rid.
      if (r.kind === 'video' && r.rid !== undefined) {
        out.video_rids ??= {};
        out.video_rids[r.rid] = stats;
      } else {
        out[r.kind] = stats;
      }
    }
  }
  return out;
};
window.stopPublish = async () => { if (pub) { await pub.disconnect(); } return window.publishState; };
</script>`;

async function serve() {
  const soraJs = await readFile(SORA_JS);
  const server = createServer((req, res) => {
    if (req.url === '/sora.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(soraJs);
    } else if (req.url === '/' || req.url === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const summary = { connected: false, connection_id: null, disconnect: null, outbound: null, error: null };
  const server = await serve();
  const port = server.address().port;
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  let stopRequested = false;
  const stdin = createInterface({ input: process.stdin });
  stdin.on('line', (line) => { if (line.trim() === 'stop') stopRequested = true; });
  try {
    const page = await browser.newPage();
    page.on('console', (msg) => {
      const text = msg.text();
      if (text.startsWith('{"page"')) process.stdout.write(text + '\n');
    });
    page.on('pageerror', (err) => emit('pageerror', { message: String(err) }));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction(() => typeof window.publish === 'function');
    emit('start', { sdk: await page.evaluate(() => import('/sora.js').then((m) => m.default.version())), codec: opts.codec });
    const result = await page.evaluate((o) => window.publish(o), opts);
    summary.connection_id = result.connectionId;
    // The SDK's 'connected' callback follows the peer connection's state, which can settle a
    // moment after publish() resolves: wait for it (bounded) rather than read it too early.
    await page.waitForFunction(() => window.publishState.connectedCallback !== null, null, { timeout: 10000 })
      .catch(() => {});
    const state = await page.evaluate(() => window.publishState);
    summary.connected = state.connectedCallback !== null && state.connectedCallback === result.connectionId;
    summary.simulcast = result.simulcast;
    summary.encodings = result.encodings;
    emit('published-start', { connection_id: result.connectionId, mids: result.mids, camera: result.videoSettings,
      connected_callback: summary.connected, simulcast: result.simulcast, encodings: result.encodings });
    const started = Date.now();
    while (Date.now() - started < opts.seconds * 1000 && !stopRequested) {
      await new Promise((r) => setTimeout(r, 100));
      const s = await page.evaluate(() => window.publishState);
      if (s.disconnect) break;
    }
    summary.outbound = await page.evaluate(() => window.outboundStats());
    emit('outbound-rtp', summary.outbound);
    const final = await page.evaluate(() => window.stopPublish());
    summary.disconnect = final.disconnect;
    summary.notifies = final.notifies;
    summary.signaling_types = final.signalingTypes;
  } catch (err) {
    summary.error = String(err && err.stack ? err.stack : err);
    emit('error', { message: summary.error });
  } finally {
    stdin.close();
    await browser.close();
    server.close();
  }
  process.stdout.write(JSON.stringify({ summary }) + '\n');
  const clean = summary.connected && summary.disconnect && summary.disconnect.type === 'normal';
  process.exit(clean ? 0 : 1);
}

main().catch((err) => {
  emit('error', { message: String(err && err.stack ? err.stack : err) });
  process.exit(2);
});
