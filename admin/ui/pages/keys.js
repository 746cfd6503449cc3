// API keys: create (the plaintext shown once, with a copy button), list
// with expiry, scopes, routes and usage, revoke.
import { html, useEffect, useState } from '../vendor/htm-preact-standalone.js';
import { api, ApiError, errText, fieldErrors } from '../lib/api.js';
import { copyText, Field, Notice, unixText } from '../lib/ui.js';

/** @param {string} s */
const list = (s) =>
  s
    .split(/[,\n]/)
    .map((x) => x.trim())
    .filter(Boolean);

/** @param {any} k */
function status(k) {
  if (k.revoked) return html`<span class="badge bad">revoked</span>`;
  if (k.expired) return html`<span class="badge warn">expired</span>`;
  return html`<span class="badge ok">active</span>`;
}

/** @param {{onCreated: () => void}} p */
function CreateKey({ onCreated }) {
  const [v, setV] = useState({ name: '', expiresIn: '', expiresAt: '', scopes: '', routes: '' });
  const [errors, setErrors] = useState(/** @type {Record<string, string>} */ ({}));
  const [message, setMessage] = useState('');
  const [created, setCreated] = useState(/** @type {{secret: string, key: any}|null} */ (null));
  const [copied, setCopied] = useState('');
  /** @param {string} k */
  const set = (k) => (/** @type {any} */ x) => setV((s) => ({ ...s, [k]: x }));

  /** @param {Event} e */
  const submit = async (e) => {
    e.preventDefault();
    setErrors({});
    setMessage('');
    /** @type {Record<string, any>} */
    const body = { name: v.name };
    if (v.expiresIn.trim()) body.expiresIn = v.expiresIn.trim();
    if (v.expiresAt) body.expiresAt = Math.floor(new Date(v.expiresAt).getTime() / 1000);
    if (list(v.scopes).length) body.scopes = list(v.scopes);
    if (list(v.routes).length) body.routes = list(v.routes);
    try {
      const r = await api('POST', '/api/keys', { body });
      setCreated({ secret: r.secret, key: r.key });
      setCopied('');
      setV({ name: '', expiresIn: '', expiresAt: '', scopes: '', routes: '' });
      onCreated();
    } catch (err) {
      const fe = fieldErrors(err);
      setErrors(fe);
      if (!Object.keys(fe).length) setMessage(errText(err));
    }
  };

  const copy = async () => {
    if (!created) return;
    setCopied((await copyText(created.secret)) ? 'Copied to the clipboard.' : 'Copying failed: select the key and copy it.');
  };

  return html`<section class="card" aria-labelledby="newkey-h">
    <h2 id="newkey-h">Create a key</h2>
    ${created &&
    html`<div class="notice notice-warn" role="status" data-testid="new-secret">
      <p><strong>Key ${created.key.name} (${created.key.id}) created.</strong> Copy it now: it is shown this once and kept nowhere.</p>
      <div class="secret">
        <code data-testid="secret">${created.secret}</code>
        <button type="button" onClick=${copy}>Copy key</button>
        <button type="button" class="secondary" onClick=${() => setCreated(null)}>Done</button>
      </div>
      ${copied && html`<p role="status">${copied}</p>`}
    </div>`}
    ${message && html`<${Notice} kind="error">${message}<//>`}
    <form onSubmit=${submit} noValidate>
      <div class="form-grid">
        <${Field} label="Name (consumer)" name="name" value=${v.name} onInput=${set('name')} required error=${errors.name} hint="unique among active keys" />
        <${Field} label="Expires in" name="expiresIn" value=${v.expiresIn} onInput=${set('expiresIn')} error=${errors.expiresIn} placeholder="30d" hint="30d, 12h, 90m, 45s; empty: never" />
        <${Field} label="Or expires at" name="expiresAt" type="datetime-local" value=${v.expiresAt} onInput=${set('expiresAt')} error=${errors.expiresAt} />
        <${Field} label="Scopes" name="scopes" value=${v.scopes} onInput=${set('scopes')} error=${errors.scopes} hint="comma-separated" />
        <${Field} label="Routes" name="routes" value=${v.routes} onInput=${set('routes')} error=${errors.routes} hint="route ids, comma-separated; empty: every route" />
      </div>
      <button type="submit">Create key</button>
    </form>
  </section>`;
}

export function KeysPage() {
  const [keys, setKeys] = useState(/** @type {any[]|null} */ (null));
  const [error, setError] = useState('');
  const [done, setDone] = useState('');
  const [showRevoked, setShowRevoked] = useState(true);
  const load = () =>
    api('GET', '/api/keys').then(
      (r) => setKeys(r.keys),
      (e) => setError(errText(e)),
    );
  useEffect(() => {
    load();
  }, []);

  /** @param {any} k */
  const revoke = async (k) => {
    if (!window.confirm(`Revoke key ${k.name} (${k.id})? Requests with it are refused from now on.`)) return;
    setError('');
    try {
      await api('DELETE', `/api/keys/${encodeURIComponent(k.id)}`);
      setDone(`Revoked key ${k.name}.`);
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    }
    load();
  };

  const shown = (keys || []).filter((k) => showRevoked || !k.revoked);
  return html`<div class="page">
    <h1>API keys</h1>
    <${CreateKey} onCreated=${load} />
    ${done && html`<${Notice} kind="ok">${done}<//>`}
    ${error && html`<${Notice} kind="error">${error}<//>`}
    <section class="card" aria-labelledby="keys-h">
      <h2 id="keys-h">Keys</h2>
      <div class="row">
        <input type="checkbox" id="show-revoked" checked=${showRevoked} onChange=${(/** @type {any} */ e) => setShowRevoked(e.currentTarget.checked)} />
        <label for="show-revoked">Show revoked keys</label>
      </div>
      ${keys && shown.length === 0 && html`<p class="muted">No keys.</p>`}
      ${shown.length > 0 &&
      html`<div class="table-wrap"><table class="data" data-testid="keys-list">
        <thead><tr>
          <th scope="col">Name</th><th scope="col">Id</th><th scope="col">Status</th><th scope="col">Source</th>
          <th scope="col">Scopes</th><th scope="col">Routes</th><th scope="col">Expires</th>
          <th scope="col">Requests</th><th scope="col">Last used</th><th scope="col">Actions</th>
        </tr></thead>
        <tbody>
          ${shown.map(
            (k) => html`<tr data-key=${k.id}>
              <th scope="row">${k.name}</th>
              <td><code>${k.id}</code></td>
              <td>${status(k)}</td>
              <td>${k.source}</td>
              <td>${k.scopes.join(', ') || html`<span class="muted">none</span>`}</td>
              <td>${k.routes.join(', ') || html`<span class="muted">all</span>`}</td>
              <td>${k.expiresAt ? unixText(k.expiresAt) : html`<span class="muted">never</span>`}</td>
              <td>${k.usage.requests.toLocaleString('en')}</td>
              <td>${unixText(k.usage.lastUsed)}</td>
              <td>${!k.revoked
                ? html`<button type="button" class="danger" onClick=${() => revoke(k)} aria-label=${`Revoke key ${k.name}`}>Revoke</button>`
                : ''}</td>
            </tr>`,
          )}
        </tbody>
      </table></div>`}
    </section>
  </div>`;
}
