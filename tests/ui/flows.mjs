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
];
