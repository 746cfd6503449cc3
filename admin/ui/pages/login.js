// Sign-in with the admin token: POST /api/session sets the session cookie.
import { html, useState } from '../vendor/htm-preact-standalone.js';
import { api, ApiError } from '../lib/api.js';
import { BASE, Field, navigate, Notice } from '../lib/ui.js';

/**
 * Where to go after signing in: the remembered page, if it is one of ours.
 * @param {URLSearchParams} search
 */
function nextPage(search) {
  const next = search.get('next') || '';
  return next.startsWith(BASE + '/') && !next.startsWith('//') && !next.startsWith(BASE + '/login') ? next : BASE;
}

/** @param {{search: URLSearchParams}} p */
export function LoginPage({ search }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);

  /** @param {Event} e */
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      await api('POST', '/api/session', { body: { token }, quiet401: true });
      navigate(nextPage(search), true);
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return html`<main id="main" class="login">
    <form class="card login-card" onSubmit=${submit} aria-labelledby="login-title">
      <h1 id="login-title">Sign in to FlexGate</h1>
      ${search.get('expired') && html`<${Notice} kind="warn">Your session has ended. Sign in again to go back to the page you were on.<//>`}
      ${search.get('signedout') && html`<${Notice} kind="ok">You are signed out.<//>`}
      <${Field} label="Admin token" name="token" type="password" value=${token} onInput=${setToken}
        required autocomplete="current-password" error=${error}
        hint="admin.token in the config, or FLEXGATE_ADMIN_TOKEN" />
      <button type="submit" disabled=${busy}>${busy ? 'Signing in…' : 'Sign in'}</button>
    </form>
  </main>`;
}
