// The flows of the admin UI browser tests, in order (later flows rely on
// the session and the data of earlier ones). Each is [name, async (t) => {}].

/** Sends requests to the proxy for `ms` milliseconds. */
async function traffic(t, path, ms, headers = {}) {
  const end = Date.now() + ms;
  let n = 0;
  const worker = async () => {
    while (Date.now() < end) {
      await t.proxy('GET', path, { headers });
      n++;
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return n;
}

async function signIn(t) {
  const { page, env } = t;
  await page.fill('input[name=token]', env.token);
  await page.click('button[type=submit]');
}

/** Goes to a page of the UI by its navigation link. */
async function nav(t, label) {
  await t.page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: label, exact: true }).click();
}

/** Calls the admin API with the token (another admin, in the tests). */
async function adminApi(t, method, path, body) {
  const r = await fetch(t.env.admin + path, {
    method,
    headers: { Authorization: `Bearer ${t.env.token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

/** Polls `f` until it is truthy (15 s at most). */
async function until(what, f) {
  const end = Date.now() + 15000;
  while (Date.now() < end) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** The error shown next to a form field. */
function fieldError(page, name) {
  return page.locator(`.field:has([name="${name}"]) .field-error`);
}

export const flows = [
  [
    'login: the API message on a wrong token, then back to the remembered page',
    async (t) => {
      const { page, env, assert } = t;
      await page.goto(env.admin + '/admin/settings');
      await page.waitForURL(/\/admin\/login\?next=%2Fadmin%2Fsettings/);
      await page.getByRole('heading', { name: 'Sign in to FlexGate' }).waitFor();
      await t.axe('login');
      await t.shot('login');
      await page.fill('input[name=token]', 'not-the-admin-token');
      await page.click('button[type=submit]');
      const err = page.locator('.field-error');
      await err.waitFor();
      assert((await err.textContent()).includes('the admin token is not valid'), 'the API message next to the field');
      assert((await page.getAttribute('input[name=token]', 'aria-invalid')) === 'true', 'the field is marked invalid');
      await signIn(t);
      await page.waitForURL(/\/admin\/settings$/);
      await page.getByRole('heading', { name: 'Settings', level: 1 }).waitFor();
    },
  ],
  [
    'dashboard: traffic shows on the live charts (rate and p99)',
    async (t) => {
      const { page, assert } = t;
      await nav(t, 'Dashboard');
      await page.waitForURL(/\/admin$/);
      await page.locator('[data-testid=stream-metrics] strong', { hasText: 'live' }).waitFor();
      // Traffic for 8 s; meanwhile the rate tile and the p99 tile show
      // numbers and the charts gain points.
      const sending = traffic(t, '/seed', 8000);
      await page.waitForFunction(() => {
        const rate = document.querySelector('[data-testid=stat-rate] .stat-value')?.textContent || '';
        const p99 = document.querySelector('[data-testid=stat-p99] .stat-value')?.textContent || '';
        return parseFloat(rate.replace(/,/g, '')) > 0 && /\d+(\.\d+)? (ms|s)$/.test(p99);
      });
      await page.waitForFunction(() => Number(document.querySelector('[data-testid=chart-rate]')?.getAttribute('data-points')) >= 3);
      // The latest point of the rate and p99 series are drawn (uPlot's
      // legend shows the values under the cursor; its data: the canvas).
      const p99Label = await page.getAttribute('[data-testid=chart-latency] .chart-box', 'aria-label');
      assert(/p99 now \d/.test(p99Label), `latency chart label: ${p99Label}`);
      const rateLabel = await page.getAttribute('[data-testid=chart-rate] .chart-box', 'aria-label');
      assert(/now [1-9]/.test(rateLabel) || /now 0\.[1-9]/.test(rateLabel), `rate chart label: ${rateLabel}`);
      await t.shot('dashboard');
      const sent = await sending;
      assert(sent > 20, `sent ${sent} requests`);
      // The route's row, sortable.
      const table = page.locator('[data-testid=routes-table]');
      await table.locator('th[scope=row]', { hasText: 'seed' }).waitFor();
      await table.getByRole('button', { name: /Route/ }).click();
      assert((await table.locator('th[aria-sort=ascending]').count()) === 1, 'sorted by route');
      // Upstream target health from /metrics.
      await page.locator('[data-testid=upstreams-health] .badge', { hasText: 'healthy' }).first().waitFor();
      await t.axe('dashboard');
    },
  ],
  [
    'session expiry: back to sign-in, then to the page',
    async (t) => {
      const { page, context } = t;
      await context.clearCookies();
      await nav(t, 'Routes');
      await page.waitForURL(/\/admin\/login\?expired=1&next=%2Fadmin%2Froutes/);
      await page.getByText('Your session has ended').waitFor();
      await signIn(t);
      await page.waitForURL(/\/admin\/routes$/);
    },
  ],
  [
    'routes: a bad field shows the API error next to it; a route made in the form proxies',
    async (t) => {
      const { page, assert } = t;
      await nav(t, 'Routes');
      await page.locator('[data-testid=routes-list] th[scope=row]', { hasText: 'seed' }).waitFor();
      await t.axe('routes');
      await t.shot('routes');
      await page.getByRole('button', { name: 'New route' }).click();
      await page.getByLabel('Id', { exact: true }).fill('ui-made');
      await page.getByLabel('Path', { exact: true }).fill('ui-made');
      await page.getByLabel('Upstream', { exact: true }).selectOption('app');
      await page.getByLabel('Timeout', { exact: true }).fill('soon');
      await page.getByRole('button', { name: 'Create route' }).click();
      const pathErr = fieldError(page, 'path');
      await pathErr.waitFor();
      assert((await pathErr.textContent()).includes('must start with /'), `path error: ${await pathErr.textContent()}`);
      assert((await page.getAttribute('input[name=path]', 'aria-invalid')) === 'true', 'path marked invalid');
      await t.axe('route form with errors');
      await t.shot('routes-form-errors');
      await page.getByLabel('Path', { exact: true }).fill('/ui-made');
      await page.getByRole('button', { name: 'Create route' }).click();
      const toErr = fieldError(page, 'timeout');
      await toErr.waitFor();
      assert((await toErr.textContent()).includes('invalid duration'), `timeout error: ${await toErr.textContent()}`);
      await page.getByLabel('Timeout', { exact: true }).fill('5s');
      await page.getByRole('checkbox', { name: 'GET' }).check();
      await page.getByRole('button', { name: 'Create route' }).click();
      await page.getByText(/Created route ui-made/).waitFor();
      await page.locator('[data-testid=routes-list] tr[data-key=ui-made]').waitFor();
      await until('the new route to proxy', async () => (await t.proxy('GET', '/ui-made')) === 200);
      assert((await t.proxy('POST', '/ui-made')) !== 200, 'only GET is routed');
    },
  ],
  [
    'routes: an If-Match conflict is explained, then overwritten',
    async (t) => {
      const { page, assert } = t;
      await page.getByRole('button', { name: 'Edit route ui-made' }).click();
      await page.getByRole('heading', { name: 'Edit route ui-made' }).waitFor();
      // Another admin changes the config meanwhile.
      const other = await adminApi(t, 'PUT', '/api/routes/seed', { path: '/seed', upstream: 'app', priority: 3 });
      assert(other.status === 200, `other write: ${JSON.stringify(other)}`);
      await page.getByLabel('Priority', { exact: true }).fill('7');
      await page.getByRole('button', { name: 'Save' }).click();
      const conflict = page.locator('[data-testid=conflict]');
      await conflict.getByText('Changed by someone else').waitFor();
      await t.axe('route conflict');
      await t.shot('routes-conflict');
      await conflict.getByRole('button', { name: 'Overwrite with mine' }).click();
      await page.getByText(/Saved route ui-made/).waitFor();
      const now = await adminApi(t, 'GET', '/api/routes/ui-made');
      assert(now.body.route.priority === 7, `priority: ${JSON.stringify(now.body)}`);
      // Disable from the list: the route stops proxying.
      await page.getByRole('button', { name: 'Disable route ui-made' }).click();
      await page.getByText('Disabled route ui-made.').waitFor();
      await until('the disabled route to stop', async () => (await t.proxy('GET', '/ui-made')) === 404);
      await page.getByRole('button', { name: 'Enable route ui-made' }).click();
      await page.getByText('Enabled route ui-made.').waitFor();
    },
  ],
  [
    'upstreams: the list and the form',
    async (t) => {
      const { page } = t;
      await nav(t, 'Upstreams');
      await page.locator('[data-testid=upstreams-list] th[scope=row]', { hasText: 'app' }).waitFor();
      await t.axe('upstreams');
      await page.getByRole('button', { name: 'Edit upstream app' }).click();
      await page.getByRole('heading', { name: 'Edit upstream app' }).waitFor();
      await t.axe('upstream form');
      await t.shot('upstreams');
      await page.getByRole('button', { name: 'Cancel' }).click();
      // Deleting an upstream in use: the API's reason is shown.
      page.once('dialog', (d) => d.accept());
      await page.getByRole('button', { name: 'Delete upstream app' }).click();
      await page.getByRole('alert').getByText(/is used by route\(s\)/).waitFor();
      // A new one made in the form (two weighted targets), then deleted.
      await page.getByRole('button', { name: 'New upstream' }).click();
      await page.getByLabel('Name', { exact: true }).fill('spare');
      await page.getByLabel('Targets (JSON, instead of URL)').fill('[{"url": "http://127.0.0.1:9", "weight": 2}, {"url": "http://127.0.0.1:10"}]');
      await page.getByLabel('Load balancing').selectOption('leastConnections');
      await page.getByRole('button', { name: 'Create upstream' }).click();
      await page.getByText(/Created upstream spare/).waitFor();
      const row = page.locator('[data-testid=upstreams-list] tr[data-key=spare]');
      await row.getByText('leastConnections').waitFor();
      page.once('dialog', (d) => d.accept());
      await page.getByRole('button', { name: 'Delete upstream spare' }).click();
      await page.getByText('Deleted upstream spare.').waitFor();
      await row.waitFor({ state: 'detached' });
    },
  ],
  [
    'keys: create, copy, use, revoke, then 401',
    async (t) => {
      const { page, assert } = t;
      const made = await adminApi(t, 'POST', '/api/routes', { id: 'keyed', path: '/keyed', upstream: 'app', auth: 'required' });
      assert(made.status === 201, `keyed route: ${JSON.stringify(made)}`);
      await until('the keyed route', async () => (await t.proxy('GET', '/keyed')) === 401);
      await nav(t, 'API keys');
      await page.getByRole('heading', { name: 'Create a key' }).waitFor();
      await t.axe('keys');
      await page.getByLabel('Name (consumer)').fill('ui-key');
      await page.getByLabel('Expires in').fill('soon');
      await page.getByRole('button', { name: 'Create key' }).click();
      const expErr = fieldError(page, 'expiresIn');
      await expErr.waitFor();
      await page.getByLabel('Expires in').fill('30d');
      await page.getByLabel('Scopes').fill('read, write');
      await page.getByLabel('Routes').fill('keyed');
      await page.getByRole('button', { name: 'Create key' }).click();
      const secretEl = page.locator('[data-testid=secret]');
      await secretEl.waitFor();
      const secret = (await secretEl.textContent()).trim();
      assert(secret.startsWith('fgk_'), `secret: ${secret}`);
      await page.getByRole('button', { name: 'Copy key' }).click();
      await page.getByText('Copied to the clipboard.').waitFor();
      const clip = await page.evaluate(() => navigator.clipboard.readText());
      assert(clip === secret, 'the clipboard holds the key');
      await t.axe('keys with a new secret');
      await t.shot('keys');
      const row = page.locator('[data-testid=keys-list] tr', { hasText: 'ui-key' });
      await row.getByText('active').waitFor();
      assert((await row.textContent()).includes('read, write'), 'scopes shown');
      await until('the key to work', async () => (await t.proxy('GET', '/keyed', { headers: { 'X-API-Key': clip } })) === 200);
      page.once('dialog', (d) => d.accept());
      await page.getByRole('button', { name: 'Revoke key ui-key' }).click();
      await page.getByText('Revoked key ui-key.').waitFor();
      await row.getByText('revoked').waitFor();
      await until('the revoked key to be refused', async () => (await t.proxy('GET', '/keyed', { headers: { 'X-API-Key': clip } })) === 401);
    },
  ],
  [
    'webhooks: create in the form, send a test event, replay a failed delivery',
    async (t) => {
      const { page, env, assert } = t;
      await nav(t, 'Webhooks');
      await page.getByRole('button', { name: 'New webhook' }).click();
      await page.getByLabel('Id', { exact: true }).fill('ui-hook');
      await page.getByLabel('URL', { exact: true }).fill(env.upstream + '/hook');
      await page.getByLabel('Events', { exact: true }).fill('config.changed');
      await page.getByRole('button', { name: 'Create webhook' }).click();
      await page.getByText(/Created webhook ui-hook/).waitFor();
      await page.getByRole('button', { name: 'Send test event to webhook ui-hook' }).click();
      await page.getByText(/Test event to ui-hook: succeeded/).waitFor();
      const dl = page.locator('[data-testid=deliveries]');
      await dl.locator('.badge', { hasText: 'succeeded' }).first().waitFor();
      // A receiver that is down: the test event fails, then is replayed.
      const dead = await adminApi(t, 'POST', '/api/webhooks', { id: 'dead-hook', url: 'http://127.0.0.1:9/hook', events: ['upstream.unhealthy'] });
      assert(dead.status === 201, `dead hook: ${JSON.stringify(dead)}`);
      await nav(t, 'Dashboard');
      await nav(t, 'Webhooks');
      await page.getByRole('button', { name: 'Send test event to webhook dead-hook' }).click();
      await page.getByText(/Test event to dead-hook: failed/).waitFor();
      await dl.locator('.badge', { hasText: 'failed' }).first().waitFor();
      await t.axe('webhooks with deliveries');
      await t.shot('webhooks');
      await dl.getByRole('button', { name: /^Replay delivery/ }).first().click();
      await dl.getByText(/is pending again/).waitFor();
    },
  ],
  [
    'config: the YAML, an import previewed with a dry-run diff, applied; export',
    async (t) => {
      const { page, assert } = t;
      await nav(t, 'Config');
      const area = page.getByLabel('Config (YAML or JSON)');
      await page.waitForFunction(() => (document.querySelector('textarea[name=config]')?.value || '').includes('id: seed'));
      const yaml = await area.inputValue();
      await area.fill(yaml.replace('- id: seed\n', '- id: seed\n  name: from-import\n'));
      await page.getByRole('button', { name: 'Preview changes (dry run)' }).click();
      const dry = page.locator('[data-testid=dry-run]');
      await dry.getByText('route/seed').waitFor();
      await dry.locator('tr.d-add td', { hasText: 'name: from-import' }).waitFor();
      let now = await adminApi(t, 'GET', '/api/routes/seed');
      assert(!now.body.route.name, 'the dry run changed nothing');
      await t.axe('config with a dry run');
      await t.shot('config');
      await page.getByRole('button', { name: 'Apply import' }).click();
      await page.getByText(/Imported: 1 change/).waitFor();
      now = await adminApi(t, 'GET', '/api/routes/seed');
      assert(now.body.route.name === 'from-import', `imported: ${JSON.stringify(now.body)}`);
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: 'Export YAML' }).click()]);
      assert(download.suggestedFilename() === 'flexgate-config.yaml', download.suggestedFilename());
      const path = await download.path();
      const { readFileSync } = await import('node:fs');
      assert(readFileSync(path, 'utf8').includes('from-import'), 'the export holds the import');
    },
  ],
  [
    'audit: filter by resource and action, the before/after side by side',
    async (t) => {
      const { page, assert } = t;
      await nav(t, 'Audit log');
      await page.locator('[data-testid=audit-entry]').first().waitFor();
      await page.getByLabel('Resource').fill('route/ui-made');
      await page.getByRole('button', { name: 'Apply filters' }).click();
      await page.waitForFunction(() => {
        const rs = [...document.querySelectorAll('[data-testid=audit-entry]')].map((e) => e.getAttribute('data-resource'));
        return rs.length >= 4 && rs.every((r) => r === 'route/ui-made');
      });
      const entries = page.locator('[data-testid=audit-entry]');
      const n = await entries.count();
      for (let i = 0; i < n; i++) await entries.nth(i).getByRole('button', { name: 'Show changes' }).click();
      // The overwrite's diff: priority 7 added on the right, beside the old state.
      await page.locator('.diff tr.d-add td, .diff tr.d-change td', { hasText: '"priority": 7' }).first().waitFor();
      // The creation: nothing before.
      const created = entries.filter({ hasText: 'create' });
      assert((await created.count()) === 1, 'one creation');
      await created.getByRole('columnheader', { name: 'Before (none)' }).waitFor();
      await t.axe('audit with diffs');
      await t.shot('audit');
      await page.getByLabel('Action').selectOption('create');
      await page.getByRole('button', { name: 'Apply filters' }).click();
      await page.waitForFunction(() => document.querySelectorAll('[data-testid=audit-entry]').length === 1);
      await page.getByRole('button', { name: 'Clear' }).click();
      await page.waitForFunction(() => new Set([...document.querySelectorAll('[data-testid=audit-entry]')].map((e) => e.getAttribute('data-resource'))).size > 2);
      // By actor: the writes of the token (the "other admin" of these tests).
      await page.getByLabel('Actor').selectOption('admin-token');
      await page.getByRole('button', { name: 'Apply filters' }).click();
      await page.waitForFunction(() => {
        const es = [...document.querySelectorAll('[data-testid=audit-entry]')];
        return es.length > 0 && es.every((e) => e.textContent.includes('by admin-token'));
      });
      // By time: nothing after 2099.
      await page.getByLabel('Actor').selectOption('');
      await page.getByLabel('Since').fill('2099-01-01T00:00');
      await page.getByRole('button', { name: 'Apply filters' }).click();
      await page.getByText('No entries.').waitFor();
      await page.getByRole('button', { name: 'Clear' }).click();
      await page.locator('[data-testid=audit-entry]').first().waitFor();
    },
  ],
  [
    'settings: version, config version, nodes',
    async (t) => {
      const { page, assert } = t;
      await nav(t, 'Settings');
      const about = page.locator('[data-testid=about]');
      await page.waitForFunction(() => /\d+\.\d+\.\d+/.test(document.querySelector('[data-testid=about]')?.textContent || ''));
      assert(/Config version\s*\d+/.test(await about.textContent()), 'config version shown');
      await page.locator('[data-testid=nodes] tbody tr').first().waitFor();
      await t.axe('settings');
      await t.shot('settings');
    },
  ],
  [
    'dark theme (from the system): axe on every page',
    async (t) => {
      const { page } = t;
      await page.emulateMedia({ colorScheme: 'dark' });
      try {
        for (const [label, ready] of [
          ['Dashboard', '[data-testid=stat-p99]'],
          ['Routes', '[data-testid=routes-list]'],
          ['Upstreams', '[data-testid=upstreams-list]'],
          ['API keys', '[data-testid=keys-list]'],
          ['Webhooks', '[data-testid=webhooks-list]'],
          ['Config', 'textarea[name=config]'],
          ['Audit log', '[data-testid=audit-entry]'],
          ['Settings', '[data-testid=nodes]'],
        ]) {
          await nav(t, label);
          await page.locator(ready).first().waitFor();
          await t.axe(`${label} (dark)`);
          if (label === 'Dashboard') {
            await page.waitForFunction(() => Number(document.querySelector('[data-testid=chart-rate]')?.getAttribute('data-points')) >= 3);
            await t.shot('dashboard-dark');
          }
        }
      } finally {
        await page.emulateMedia({ colorScheme: 'light' });
      }
    },
  ],
  [
    'gateway restart: the stream shows it, the ended session leads to sign-in, then live again',
    async (t) => {
      const { page, env } = t;
      if (!env.signals) {
        console.log('  skipped: FG_SIGNALS is not set (no harness to restart the gateway)');
        return;
      }
      const { writeFileSync, existsSync } = await import('node:fs');
      const { join } = await import('node:path');
      await nav(t, 'Dashboard');
      const state = page.locator('[data-testid=stream-metrics]');
      await state.getByText('live', { exact: true }).waitFor();
      writeFileSync(join(env.signals, 'restart'), '');
      await state.getByText(/reconnecting|disconnected/).waitFor({ timeout: 20000 });
      await t.shot('dashboard-reconnecting');
      await until('the restart', async () => existsSync(join(env.signals, 'restarted')));
      // Sessions live in memory: the new process knows none.
      await page.waitForURL(/\/admin\/login\?expired=1$/, { timeout: 20000 });
      await signIn(t);
      await page.waitForURL(/\/admin$/);
      await state.getByText('live', { exact: true }).waitFor();
    },
  ],
  [
    'sign out',
    async (t) => {
      const { page, env, assert } = t;
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByText('You are signed out.').waitFor();
      const r = await page.evaluate(async () => (await fetch('/api/routes')).status);
      assert(r === 401, `after sign-out: ${r}`);
      await page.goto(env.admin + '/admin/keys');
      await page.waitForURL(/\/admin\/login\?next=%2Fadmin%2Fkeys$/);
      // Keyboard only: Tab to the token, Enter signs in; focus is visible.
      await page.keyboard.press('Tab');
      assert(await page.evaluate(() => document.activeElement?.getAttribute('name') === 'token'), 'Tab reaches the token field');
      await page.keyboard.type(env.token);
      await page.keyboard.press('Enter');
      await page.waitForURL(/\/admin\/keys$/);
      // Focus moved to the page: Tab reaches its first control, with a
      // visible focus ring; Shift+Tab goes back to the header.
      await page.getByRole('heading', { name: 'API keys', level: 1 }).waitFor();
      await page.keyboard.press('Tab');
      const focus = await page.evaluate(() => {
        const el = document.activeElement;
        const st = el ? getComputedStyle(el) : null;
        return { name: el?.getAttribute('name'), outline: st?.outlineStyle, width: st?.outlineWidth };
      });
      assert(focus.name === 'name' && focus.outline !== 'none' && focus.width !== '0px', `visible focus: ${JSON.stringify(focus)}`);
      await page.keyboard.press('Shift+Tab');
      const back = await page.evaluate(() => document.activeElement?.textContent);
      assert(back === 'Sign out', `Shift+Tab: ${back}`);
    },
  ],
  [
    'history (database mode only): the roll-ups by hour and by day',
    async (t) => {
      const { page } = t;
      await nav(t, 'Dashboard');
      const chart = page.locator('[data-testid=history-chart]');
      await page.waitForFunction(() => Number(document.querySelector('[data-testid=history-chart]')?.getAttribute('data-points')) >= 1);
      await chart.scrollIntoViewIfNeeded();
      await t.axe('dashboard with history');
      await t.shot('dashboard-history');
      await page.getByLabel('Range').selectOption('day');
      await page.waitForFunction(() => Number(document.querySelector('[data-testid=history-chart]')?.getAttribute('data-points')) >= 1);
    },
  ],
];
