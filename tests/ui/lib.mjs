// Shared helpers of the dashboard's browser tests. Each spec (tests/ui/*.mjs) is started by
// tests/it/ui.rs against a real `cauce server` with:
//   CAUCE_URL        the server's base URL (http://127.0.0.1:PORT)
//   CAUCE_OPERATOR   an operator token, CAUCE_VIEWER a viewer token
//   SCREENSHOT_DIR   where to write screenshots
//   CAUCE_DATA       JSON: run ids and expected values prepared by the Rust side
// A spec calls `spec(name, async (t) => { ... })`: every `t.step` runs even when an earlier
// one failed (unless it throws `Fatal`), failures are listed at the end, and the process
// exits 1 if any step failed. A failed step saves `FAILED-<step>.png`.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

export const BASE = (process.env.CAUCE_URL || '').replace(/\/$/, '');
export const UI = process.env.CAUCE_UI || `${BASE}/`;
export const OPERATOR = process.env.CAUCE_OPERATOR || '';
export const VIEWER = process.env.CAUCE_VIEWER || '';
export const OPERATOR_NAME = process.env.CAUCE_OPERATOR_NAME || 'ops';
export const VIEWER_NAME = process.env.CAUCE_VIEWER_NAME || 'look';
export const SHOTS = process.env.SCREENSHOT_DIR || 'ui-screenshots';
export const DATA = JSON.parse(process.env.CAUCE_DATA || '{}');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** The two widths every check is looked at in. */
export const SIZES = [
  { name: '1280', width: 1280, height: 800 },
  { name: '390', width: 390, height: 844 },
];

/** Flags that work as root in this sandbox; without the background-networking ones
 * Chromium's own connections are refused by the closed network and slow it down. */
export const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Launches Chromium (Playwright gives each launch a fresh temporary user-data-dir). */
export async function launch() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
}

/** A new page at 1280x800 in a fresh context; console errors and page errors are kept for
 * the failure report. Confirmation dialogs are accepted. */
export async function newPage(browser, { colorScheme = 'light' } = {}) {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    colorScheme,
  });
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') page.problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('dialog', (d) => d.accept().catch(() => {}));
  return page;
}

/** Waits until the dashboard says page `name` is rendered. */
export async function waitLoaded(page, name, timeout = 10000) {
  await page.waitForFunction(
    (n) => document.body && document.body.dataset.page === n && document.body.dataset.loaded === '1',
    name,
    { timeout, polling: 25 },
  );
}

/** Goes to a hash route (`#/runs/ID`) and waits until page `name` is loaded; returns the
 * milliseconds it took. The `loaded` flag is cleared first so a stale one does not count. */
export async function go(page, route, name, timeout = 10000) {
  const t0 = Date.now();
  const here = page.url();
  if (!here.startsWith(UI)) {
    await page.goto(UI + route);
  } else if (new URL(here).hash === route) {
    await page.reload();
  } else {
    await page.evaluate((r) => {
      if (document.body) delete document.body.dataset.loaded;
      location.hash = r;
    }, route);
  }
  await waitLoaded(page, name, timeout);
  return Date.now() - t0;
}

/** Signs in with a token through `#token`/`#signin` and waits for `#whoami`. */
export async function signIn(page, token, who) {
  await page.goto(UI + '#/');
  await page.locator('#token').waitFor({ state: 'visible', timeout: 10000 });
  await page.fill('#token', token);
  await page.click('#signin');
  await page.locator('#whoami').waitFor({ state: 'visible', timeout: 10000 });
  if (who) {
    await page.waitForFunction(
      (w) => {
        const t = (document.querySelector('#whoami')?.textContent || '').toLowerCase();
        return t.includes(w.name) && t.includes(w.role);
      },
      who,
      { timeout: 5000 },
    ).catch(async () => {
      const t = await page.textContent('#whoami');
      throw new Error(`#whoami says "${t.trim()}", expected the name "${who.name}" and the role "${who.role}"`);
    });
  }
}

export const asOperator = (page) => signIn(page, OPERATOR, { name: OPERATOR_NAME, role: 'operator' });
export const asViewer = (page) => signIn(page, VIEWER, { name: VIEWER_NAME, role: 'viewer' });

/** Screenshots of the current page at 1280x800 and 390x844, light and dark (the color
 * scheme is switched with `prefers-color-scheme`). Restores 1280 light. */
export async function shots(page, name, { fullPage = true, dark = true } = {}) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const schemes = dark ? ['light', 'dark'] : ['light'];
  for (const size of SIZES) {
    await page.setViewportSize({ width: size.width, height: size.height });
    for (const scheme of schemes) {
      await page.emulateMedia({ colorScheme: scheme });
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
      await page.screenshot({ path: path.join(SHOTS, `${name}-${size.name}-${scheme}.png`), fullPage });
    }
  }
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.emulateMedia({ colorScheme: 'light' });
}

/** Text of an element, trimmed ('' when absent). */
export async function text(page, selector) {
  const el = await page.$(selector);
  return el ? ((await el.textContent()) || '').trim() : '';
}

/** Whether any element matching `selector` is visible. */
export async function anyVisible(page, selector) {
  return page.evaluate((s) => [...document.querySelectorAll(s)].some((e) => {
    const r = e.getBoundingClientRect();
    const st = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && st.visibility !== 'hidden' && st.display !== 'none';
  }), selector);
}

/** Waits until `#run-state` shows one of `states` (a word in its text or its data-state). */
export async function waitRunState(page, states, timeout = 15000) {
  const list = Array.isArray(states) ? states : [states];
  try {
    await page.waitForFunction(
      (l) => {
        const el = document.querySelector('#run-state');
        if (!el) return false;
        const s = ((el.dataset.state || '') + ' ' + el.textContent).toLowerCase();
        return l.some((x) => new RegExp(`\\b${x}\\b`).test(s));
      },
      list,
      { timeout, polling: 50 },
    );
  } catch (e) {
    throw new Error(`#run-state stayed "${await text(page, '#run-state')}" for ${timeout} ms; expected ${list.join(' or ')}`);
  }
  return runState(page);
}

/** The run state `#run-state` shows (its data-state, else its text). */
export async function runState(page) {
  return page.evaluate(() => {
    const el = document.querySelector('#run-state');
    if (!el) return '';
    return (el.dataset.state || el.textContent || '').trim().toLowerCase();
  });
}

/** Sets a filter control: a <select> by value (else by label), else types into it. */
export async function setFilter(page, selector, value) {
  const tag = await page.$eval(selector, (e) => e.tagName.toLowerCase());
  if (tag === 'select') {
    const opts = await page.$$eval(`${selector} option`, (os) => os.map((o) => ({ v: o.value, l: o.textContent.trim() })));
    const hit = opts.find((o) => o.v === value) || opts.find((o) => o.l.toLowerCase() === value.toLowerCase())
      || opts.find((o) => value && o.l.toLowerCase().includes(value.toLowerCase()));
    if (!hit) throw new Error(`${selector} has no option "${value}" (options: ${JSON.stringify(opts)})`);
    await page.selectOption(selector, hit.v);
  } else {
    await page.fill(selector, value);
  }
}

/** API call from inside the page (as the browser would make it). */
export async function api(page, method, url, token, body) {
  return page.evaluate(async ({ method, url, token, body }) => {
    const r = await fetch(url, {
      method,
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = null;
    try { json = await r.json(); } catch (_) { /* not JSON */ }
    return { status: r.status, json };
  }, { method, url: BASE + url, token, body });
}

/** A step failure that stops the spec (later steps depend on it). */
export class Fatal extends Error {}

/** Runs a spec; see the top of this file. `limitMs` bounds the whole spec. */
export async function spec(name, body, { limitMs = 90000 } = {}) {
  const started = Date.now();
  const failures = [];
  let browser;
  const timer = setTimeout(() => {
    console.log(`FAIL ${name}: the spec took longer than ${limitMs} ms`);
    process.exit(1);
  }, limitMs);
  const pages = [];
  const t = {
    failures,
    timings: {},
    async page(opts) {
      const p = await newPage(browser, opts);
      pages.push(p);
      return p;
    },
    timing(what, ms) {
      t.timings[what] = ms;
      console.log(`TIMING ${what}=${ms}ms`);
    },
    async step(what, fn) {
      const t0 = Date.now();
      try {
        await fn();
        console.log(`ok   ${what} (${Date.now() - t0} ms)`);
      } catch (e) {
        const msg = (e && e.message ? e.message : String(e)).split('\n').slice(0, 6).join('\n     ');
        console.log(`FAIL ${what} (${Date.now() - t0} ms)\n     ${msg}`);
        failures.push(what);
        for (const [i, p] of pages.entries()) {
          try {
            const file = path.join(SHOTS, `FAILED-${what.replace(/[^a-z0-9]+/gi, '_')}-${i}.png`);
            fs.mkdirSync(SHOTS, { recursive: true });
            await p.screenshot({ path: file, fullPage: false });
            const ds = await p.evaluate(() => JSON.stringify(document.body ? document.body.dataset : {}));
            console.log(`     page ${i}: ${p.url()} dataset=${ds} screenshot=${file}`);
          } catch (_) { /* the page may be gone */ }
        }
        if (e instanceof Fatal) throw e;
      }
    },
  };
  let code = 0;
  try {
    browser = await launch();
    await body(t);
  } catch (e) {
    if (!(e instanceof Fatal)) {
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
      failures.push('(spec aborted)');
    }
  } finally {
    // An uncaught exception in the dashboard fails the spec; console errors are shown when
    // something failed (a refused API call the spec made on purpose logs one too).
    const thrown = pages.flatMap((p, i) => (p.problems || []).filter((x) => x.startsWith('pageerror')).map((x) => `page ${i} ${x}`));
    if (thrown.length) {
      console.log(`FAIL uncaught errors in the page:\n     ${thrown.join('\n     ')}`);
      failures.push('uncaught errors in the page');
    }
    if (failures.length) {
      for (const [i, p] of pages.entries()) {
        for (const pr of p.problems || []) if (pr.startsWith('console')) console.log(`page ${i} ${pr}`);
      }
    }
    if (browser) await browser.close().catch(() => {});
  }
  clearTimeout(timer);
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  if (failures.length) {
    console.log(`${name}: ${failures.length} step(s) failed in ${secs} s: ${failures.join('; ')}`);
    code = 1;
  } else {
    console.log(`${name}: all steps passed in ${secs} s`);
  }
  process.exit(code);
}

/** Throws with a message unless `cond`. */
export function expect(cond, message) {
  if (!cond) throw new Error(message);
}

/** Throws unless `a` equals `b` (compared as JSON). */
export function expectEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const b = JSON.stringify(expected);
  if (a !== b) throw new Error(`${what}: got ${a}, expected ${b}`);
}

/** Waits for a condition evaluated in Node (polling), with a message on timeout. */
export async function until(fn, { timeout = 10000, every = 100, message = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, every));
  }
}
