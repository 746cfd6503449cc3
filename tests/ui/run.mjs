// Browser tests of the admin UI: playwright-core drives Debian's chromium
// against a running gateway (started by tests/admin_ui.rs, which passes
// FG_ADMIN, FG_PROXY, FG_TOKEN and FG_SHOTS). Every page is checked with
// axe-core and screenshotted. Exit code 0: every flow passed.
//
// Run alone against any gateway:
//   FG_ADMIN=http://127.0.0.1:9180 FG_PROXY=http://127.0.0.1:3000 FG_TOKEN=... node tests/ui/run.mjs
import { createRequire } from 'node:module';
import { readFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { flows } from './flows.mjs';

const require = createRequire(new URL('../../admin/package.json', import.meta.url));
const { chromium } = require('playwright-core');
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const env = {
  admin: process.env.FG_ADMIN || 'http://127.0.0.1:9180',
  proxy: process.env.FG_PROXY || 'http://127.0.0.1:3000',
  token: process.env.FG_TOKEN || '',
  upstream: process.env.FG_UPSTREAM || 'http://127.0.0.1:8080',
  // Where to ask the test harness for a gateway restart (none: that flow is skipped).
  signals: process.env.FG_SIGNALS || '',
  shots: process.env.FG_SHOTS || 'target/ui-screenshots',
  chromium: process.env.FLEXGATE_CHROMIUM || '/usr/bin/chromium',
};
mkdirSync(env.shots, { recursive: true });
for (const f of readdirSync(env.shots)) if (f.startsWith('failed-')) rmSync(join(env.shots, f));

const browser = await chromium.launch({
  executablePath: env.chromium,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({
  viewport: { width: 1360, height: 900 },
  colorScheme: 'light',
  permissions: ['clipboard-read', 'clipboard-write'],
});
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: env.admin });
const page = await context.newPage();
page.setDefaultTimeout(15000);

/** Problems the page itself reports: CSP violations, script errors. */
const pageProblems = [];
page.on('pageerror', (e) => pageProblems.push(`page error: ${e.message}`));
page.on('console', (m) => {
  if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) pageProblems.push(`CSP: ${m.text()}`);
});

/** Runs axe-core on the page; fails on any violation. */
async function axe(name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    // @ts-ignore
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ') + ' — ' + n.failureSummary) }));
  });
  if (result.length) {
    throw new Error(`axe on ${name}: ${result.length} violation(s):\n${JSON.stringify(result, null, 2)}`);
  }
  console.log(`  axe: ${name} has no violations`);
}

async function shot(name) {
  await page.screenshot({ path: join(env.shots, `${name}.png`), fullPage: true });
}

/** @param {string} method @param {string} path @param {object} [opts] */
async function proxy(method, path, opts = {}) {
  const r = await fetch(env.proxy + path, { method, ...opts });
  await r.arrayBuffer();
  return r.status;
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

const t = { page, context, env, axe, shot, proxy, assert, pageProblems };
let failed = 0;
const only = (process.env.FG_ONLY || '').split(',').filter(Boolean);
for (const [name, f] of flows) {
  if (only.length && !only.some((o) => name.startsWith(o))) continue;
  // Database-mode flows run only when asked for (FG_ONLY).
  if (!only.length && name.includes('(database mode only)')) continue;
  const started = Date.now();
  console.log(`flow: ${name}`);
  try {
    await f(t);
    if (pageProblems.length) throw new Error(pageProblems.splice(0).join('\n'));
    console.log(`  ok (${Date.now() - started} ms)`);
  } catch (e) {
    failed++;
    console.log(`  FAILED: ${e && e.stack ? e.stack : e}`);
    await page.screenshot({ path: join(env.shots, `failed-${name.replace(/\W+/g, '-')}.png`), fullPage: true }).catch(() => {});
    pageProblems.length = 0;
  }
}
await browser.close();
console.log(failed ? `${failed} flow(s) failed` : 'all flows passed');
process.exit(failed ? 1 : 0);
