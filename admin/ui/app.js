// The FlexGate admin UI: the shell (navigation, sign-out), the pages by
// path under /admin, and the way back to sign-in when the session ends.
import { html, render, useEffect, useRef, useState } from './vendor/htm-preact-standalone.js';
import { api, setUnauthorizedHandler } from './lib/api.js';
import { BASE, Link, navigate, useLocation } from './lib/ui.js';
import { LoginPage } from './pages/login.js';
import { DashboardPage } from './pages/dashboard.js';
import { RoutesPage, UpstreamsPage } from './pages/resources.js';
import { KeysPage } from './pages/keys.js';
import { WebhooksPage } from './pages/webhooks.js';
import { ConfigPage } from './pages/config.js';
import { AuditPage } from './pages/audit.js';
import { SettingsPage } from './pages/settings.js';

const LOGO = new URL('./favicon.svg', import.meta.url).href;

/** @type {{path: string, title: string, page: any}[]} */
const PAGES = [
  { path: '', title: 'Dashboard', page: DashboardPage },
  { path: '/routes', title: 'Routes', page: RoutesPage },
  { path: '/upstreams', title: 'Upstreams', page: UpstreamsPage },
  { path: '/keys', title: 'API keys', page: KeysPage },
  { path: '/webhooks', title: 'Webhooks', page: WebhooksPage },
  { path: '/config', title: 'Config', page: ConfigPage },
  { path: '/audit', title: 'Audit log', page: AuditPage },
  { path: '/settings', title: 'Settings', page: SettingsPage },
];

/**
 * The sign-in page, remembering where the user was.
 * @param {boolean} [expired] the session ended (rather than: never began)
 */
function toLogin(expired = true) {
  const here = location.pathname + location.search;
  if (location.pathname === BASE + '/login') return;
  const q = new URLSearchParams(expired ? { expired: '1' } : {});
  if (here !== BASE && here !== BASE + '/') q.set('next', here);
  navigate(`${BASE}/login?${q}`, true);
}
setUnauthorizedHandler(() => toLogin(true));

function App() {
  const loc = useLocation();
  const [signedIn, setSignedIn] = useState(/** @type {boolean|null} */ (null));
  const sub = loc.path.startsWith(BASE) ? loc.path.slice(BASE.length).replace(/\/$/, '') : '';
  const isLogin = sub === '/login';

  const wasSignedIn = useRef(false);
  useEffect(() => {
    if (isLogin) return;
    // Whether the session is live, on every page change (a 401 goes to
    // sign-in: "ended" when it was live before).
    api('GET', '/api/metrics', { quiet401: true }).then(
      () => {
        wasSignedIn.current = true;
        setSignedIn(true);
      },
      (e) => {
        if (e.status === 401) toLogin(wasSignedIn.current);
        else setSignedIn(true);
      },
    );
  }, [sub]);

  // After a page change inside the UI, focus goes to the page (screen
  // readers start reading there; Tab goes to its first control).
  const prevSub = useRef(/** @type {string|null} */ (null));
  useEffect(() => {
    if (!isLogin && prevSub.current !== null && prevSub.current !== sub) document.getElementById('main')?.focus();
    prevSub.current = sub;
  }, [sub, signedIn]);

  const current = PAGES.find((p) => p.path === sub);
  useEffect(() => {
    document.title = `${isLogin ? 'Sign in' : current ? current.title : 'Not found'} · FlexGate admin`;
  }, [sub]);

  if (isLogin) return html`<${LoginPage} search=${loc.search} />`;

  const signOut = async () => {
    try {
      await api('DELETE', '/api/session', { quiet401: true });
    } catch {
      /* signed out either way */
    }
    navigate(`${BASE}/login?signedout=1`);
  };

  return html`<div class="shell">
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <span class="brand"><img src=${LOGO} alt="" width="24" height="24" /> FlexGate</span>
      <nav aria-label="Main">
        <ul>
          ${PAGES.map(
            (p) => html`<li><${Link} href=${BASE + p.path} current=${p.path === sub}>${p.title}<//></li>`,
          )}
        </ul>
      </nav>
      <button type="button" class="secondary" onClick=${signOut}>Sign out</button>
    </header>
    <main id="main" tabindex="-1">
      ${signedIn === null
        ? html`<p role="status">Loading…</p>`
        : current
          ? html`<${current.page} key=${sub} />`
          : html`<h1>Not found</h1><p>No page at ${loc.path}. <${Link} href=${BASE}>Dashboard<//></p>`}
    </main>
  </div>`;
}

render(html`<${App} />`, document.getElementById('app'));
