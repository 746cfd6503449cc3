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
      await page.getByRole('heading', { name: 'Settings' }).waitFor();
    },
  ],
  [
    'dashboard: traffic shows on the live charts (rate and p99)',
    async (t) => {
      const { page, assert } = t;
      await nav(t, 'Dashboard');
      await page.waitForURL(/\/admin$/);
      await page.locator('[data-testid=stream-metrics] strong', { hasText: 'live' }).waitFor();
      const sent = await traffic(t, '/seed', 3000);
      assert(sent > 20, `sent ${sent} requests`);
      // The rate tile and the p99 tile show numbers; the charts hold points.
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
      // The route's row, sortable.
      const table = page.locator('[data-testid=routes-table]');
      await table.locator('th[scope=row]', { hasText: 'seed' }).waitFor();
      await table.getByRole('button', { name: /Route/ }).click();
      assert((await table.locator('th[aria-sort=ascending]').count()) === 1, 'sorted by route');
      // Upstream target health from /metrics.
      await page.locator('[data-testid=upstreams-health] .badge', { hasText: 'healthy' }).first().waitFor();
      await t.axe('dashboard');
      await t.shot('dashboard');
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
    },
  ],
];
