#!/usr/bin/env node
// Drives Debian's headless Chromium through the relay's own pages (static/index.html,
// static/view.html) for livefilter's end-to-end tests (relay/tests/browser_e2e.rs).
//
//   node tests/js/browser_driver.mjs [--clip card.y4m] [--deny-camera] [--flash-beep]
//
// --clip plays a y4m file as the fake camera (Chromium loops it at its own rate); without it,
// Chromium's default fake camera (1280x720 at 20 fps, moving pattern) and fake microphone (a
// beep) are used. --deny-camera answers every camera prompt with "deny". --flash-beep gives
// every page a camera and microphone that flash and beep together once a second (lipsync.mjs).
//
// Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
//   -> {"id": 1, "cmd": "open", "page": "streamer", "url": "http://127.0.0.1:8080/"}
//   <- {"id": 1, "ok": true, "result": {...}}      or {"id": 1, "ok": false, "error": "..."}
// Other lines on stdout are events: {"event": "ready"|"console"|"pageerror"|..., ...}.
// Each page lives in its own browser context (like a separate browser profile).
//
// Commands (all take "page" except quit):
//   open {url, mobile?}         load a page (mobile: a 390x844 touch phone viewport); reports
//                               which test API it has (window.livefilter / livefilterView)
//   start {opts}                window.livefilter.start(opts): resolves once live or failed
//   stop, scale {factor}        window.livefilter.stop() / scaleDown(factor)
//   restart-ice                 window.livefilter.restartIce(): an ICE restart of the live session
//   connect, disconnect         window.livefilterView.connect() / disconnect()
//   state                       the page's state() (sender or viewer)
//   text {selector}             textContent of an element ("" when absent); visible: bool
//   attr {selector, name}       an attribute of an element (null when absent)
//   fill {selector, value}, select {selector, value}, click {selector}
//   snapshot {selector}         the current picture of a <video> as PNG (base64) with its size
//   screenshot {path}           full-page PNG screenshot to path
//   layout                      viewport width, page scroll width, elements wider than the viewport
//   close                       closes the page like closing its tab (pagehide runs)
//   av-onsets {targets: [{page, selector}], seconds}
//                               on every target at once, the times of each flash and beep its
//                               <video> plays (lipsync.mjs); takes no "page" of its own
//   quit                        closes the browser and exits 0

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';
import { FLASH_BEEP_CAMERA, avOnsets } from './lipsync.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

function parseArgs(argv) {
  const opts = { clip: null, denyCamera: false, flashBeep: false };
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case '--clip': opts.clip = argv[++i]; break;
      case '--deny-camera': opts.denyCamera = true; break;
      case '--flash-beep': opts.flashBeep = true; break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  return opts;
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// playwright launches Chromium with a fresh temporary profile of its own.
function chromiumArgs(opts) {
  const args = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--use-fake-device-for-media-stream',
    '--allow-loopback-in-peer-connection',
    // Background tabs must not be throttled: several pages stream at once.
    '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
    '--autoplay-policy=no-user-gesture-required',
  ];
  if (!opts.denyCamera) args.push('--use-fake-ui-for-media-stream');
  if (opts.clip) args.push(`--use-file-for-fake-video-capture=${opts.clip}`);
  return args;
}

const pages = new Map(); // name -> { context, page }

function pageOf(msg) {
  const entry = pages.get(msg.page);
  if (!entry) throw new Error(`no page named ${JSON.stringify(msg.page)} (open it first)`);
  return entry.page;
}

async function open(browser, opts, msg) {
  if (pages.has(msg.page)) throw new Error(`page ${msg.page} is already open`);
  const context = await browser.newContext(msg.mobile
    ? { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true }
    : { viewport: { width: 1100, height: 800 } });
  if (opts.denyCamera) await context.clearPermissions();
  if (opts.flashBeep) await context.addInitScript(FLASH_BEEP_CAMERA);
  const page = await context.newPage();
  pages.set(msg.page, { context, page });
  page.on('console', (m) => out({ event: 'console', page: msg.page, type: m.type(), text: m.text() }));
  page.on('pageerror', (err) => out({ event: 'pageerror', page: msg.page, message: String(err) }));
  const response = await page.goto(msg.url, { waitUntil: 'load', timeout: 15000 });
  const api = await page.evaluate(() => (window.livefilter ? 'sender' : window.livefilterView ? 'viewer' : null));
  return { status: response ? response.status() : null, title: await page.title(), api };
}

// Draws the <video>'s current picture into a canvas at its intrinsic size.
async function snapshot(page, selector) {
  return page.evaluate((sel) => {
    const v = document.querySelector(sel);
    if (!v || !v.videoWidth) return { width: 0, height: 0, png_base64: null };
    const c = document.createElement('canvas');
    c.width = v.videoWidth; c.height = v.videoHeight;
    c.getContext('2d').drawImage(v, 0, 0);
    return { width: c.width, height: c.height, png_base64: c.toDataURL('image/png').split(',')[1] };
  }, selector);
}

async function handle(browser, opts, msg) {
  switch (msg.cmd) {
    case 'open': return open(browser, opts, msg);
    case 'start': return pageOf(msg).evaluate((o) => window.livefilter.start(o), msg.opts || {});
    case 'stop': return pageOf(msg).evaluate(() => window.livefilter.stop());
    case 'scale': return pageOf(msg).evaluate((f) => window.livefilter.scaleDown(f), msg.factor);
    case 'restart-ice': return pageOf(msg).evaluate(() => window.livefilter.restartIce());
    case 'switch-camera': return pageOf(msg).evaluate((c) => window.livefilter.switchCamera(c), msg.camera || '');
    case 'connect': return pageOf(msg).evaluate(() => window.livefilterView.connect());
    case 'disconnect': return pageOf(msg).evaluate(() => window.livefilterView.disconnect());
    case 'state': return pageOf(msg).evaluate(() => (window.livefilter || window.livefilterView).state());
    case 'url': return { url: pageOf(msg).url() };
    case 'layout': return pageOf(msg).evaluate(() => ({
      innerWidth: window.innerWidth,
      scrollWidth: document.documentElement.scrollWidth,
      // Visible elements reaching past the right edge of the viewport (sideways scrolling).
      overflowing: [...document.querySelectorAll('body *')]
        .filter((el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 && r.right > window.innerWidth + 1; })
        .map((el) => el.tagName.toLowerCase() + (el.id ? `#${el.id}` : '')),
    }));
    case 'text': {
      const el = pageOf(msg).locator(msg.selector);
      if ((await el.count()) === 0) return { text: '', visible: false };
      return { text: (await el.first().textContent()) || '', visible: await el.first().isVisible() };
    }
    case 'attr': {
      const el = pageOf(msg).locator(msg.selector);
      return { value: (await el.count()) ? await el.first().getAttribute(msg.name) : null };
    }
    case 'fill': await pageOf(msg).fill(msg.selector, msg.value); return {};
    case 'select': await pageOf(msg).selectOption(msg.selector, msg.value); return {};
    case 'click': await pageOf(msg).click(msg.selector, { timeout: 5000 }); return {};
    case 'snapshot': return snapshot(pageOf(msg), msg.selector || 'video');
    case 'screenshot': await pageOf(msg).screenshot({ path: msg.path, fullPage: true }); return { path: msg.path };
    case 'av-onsets':
      // Every listed page at once, so that both ends see the same flashes.
      return Promise.all(msg.targets.map((t) => pages.get(t.page)
        ? pageOf(t).evaluate(avOnsets, { selector: t.selector, seconds: msg.seconds })
        : Promise.reject(new Error(`no page named ${JSON.stringify(t.page)}`))));
    case 'close': {
      // Like closing a tab: the page goes (pagehide runs), the browser and its network stay,
      // so requests the page made on its way out (keepalive) still complete.
      const entry = pages.get(msg.page);
      if (entry) { pages.delete(msg.page); await entry.page.close(); }
      return {};
    }
    default: throw new Error(`unknown command ${JSON.stringify(msg.cmd)}`);
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: chromiumArgs(opts), headless: true });
  let quitting = false;
  const shutdown = async (code) => {
    if (quitting) return;
    quitting = true;
    await browser.close().catch(() => {});
    process.exit(code);
  };
  out({ event: 'ready', chromium: browser.version(), clip: opts.clip });

  // Commands run one after another, in order.
  let queue = Promise.resolve();
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    queue = queue.then(async () => {
      let msg;
      try { msg = JSON.parse(line); } catch (err) { out({ id: null, ok: false, error: `not JSON: ${err.message}` }); return; }
      if (msg.cmd === 'quit') { out({ id: msg.id, ok: true, result: {} }); await shutdown(0); return; }
      try {
        out({ id: msg.id, ok: true, result: (await handle(browser, opts, msg)) ?? null });
      } catch (err) {
        out({ id: msg.id, ok: false, error: String(err && err.message ? err.message : err) });
      }
    });
  });
  // The test went away: do not leave Chromium behind.
  lines.on('close', () => { queue.then(() => shutdown(0)); });
}

main().catch((err) => {
  out({ event: 'fatal', message: String(err && err.stack ? err.stack : err) });
  process.exit(2);
});
