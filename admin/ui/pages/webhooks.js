// Webhooks: the subscriptions (every field), the delivery log with status
// and attempts, "send test event", and replay of a failed delivery.
import { html, useEffect, useState } from '../vendor/htm-preact-standalone.js';
import { api, errText } from '../lib/api.js';
import { ResourcePage } from '../lib/resource.js';
import { Notice, pretty } from '../lib/ui.js';

const DURATION = 'milliseconds, or 500ms, 30s, 2m, 1h';

/** @type {import('../lib/resource.js').ResourceSpec} */
export const webhookSpec = {
  kind: 'webhook',
  plural: 'webhooks',
  title: 'Webhooks',
  keyField: 'id',
  toggle: true,
  headings: ['URL', 'Events', 'Enabled'],
  columns: (w) => [
    html`<code>${w.url}</code>`,
    (w.events || []).join(', ') || html`<span class="muted">every event</span>`,
    w.enabled === false ? html`<span class="badge bad">disabled</span>` : html`<span class="badge ok">enabled</span>`,
  ],
  fields: [
    { name: 'id', label: 'Id', kind: 'text', hint: 'generated when empty (webhook-…)' },
    { name: 'url', label: 'URL', kind: 'text', required: true, placeholder: 'https://hooks.example.com/flexgate' },
    { name: 'events', label: 'Events', kind: 'list', hint: 'names or patterns (circuit_breaker.*), comma-separated; empty: every event' },
    { name: 'enabled', label: 'Enabled', kind: 'bool', dflt: true },
    { name: 'secret', label: 'Signing secret', kind: 'secret', hint: 'whsec_… or at least 16 bytes; <redacted> keeps the stored one' },
    { name: 'previousSecret', label: 'Previous secret (rotation)', kind: 'secret' },
    { name: 'headers', label: 'Extra headers (JSON)', kind: 'json', placeholder: '{"X-Team": "ops"}' },
    { name: 'maxRetries', label: 'Retries', kind: 'number', hint: 'default 8, at most 20', group: 'Delivery' },
    { name: 'initialDelay', label: 'First retry after', kind: 'duration', hint: DURATION, group: 'Delivery' },
    { name: 'backoffMultiplier', label: 'Backoff multiplier', kind: 'number', hint: '1.0–10.0, default 2.0', group: 'Delivery' },
    { name: 'maxDelay', label: 'Longest wait', kind: 'duration', group: 'Delivery' },
    { name: 'connectTimeout', label: 'Connect timeout', kind: 'duration', group: 'Delivery' },
    { name: 'timeout', label: 'Attempt timeout', kind: 'duration', group: 'Delivery' },
    { name: 'coalesceWindow', label: 'Coalesce window', kind: 'duration', group: 'Delivery' },
    { name: 'autoDisableAfter', label: 'Disable after failing for', kind: 'duration', group: 'Delivery' },
  ],
};

/** @param {string} s */
function statusBadge(s) {
  return html`<span class=${'badge ' + (s === 'succeeded' ? 'ok' : s === 'failed' ? 'bad' : 'warn')}>${s}</span>`;
}

/** @param {{id: string, refresh: number}} p */
function Deliveries({ id, refresh }) {
  const [status, setStatus] = useState('');
  const [items, setItems] = useState(/** @type {any[]|null} */ (null));
  const [next, setNext] = useState(/** @type {string|null} */ (null));
  const [error, setError] = useState('');
  const [done, setDone] = useState('');
  const [open, setOpen] = useState(/** @type {string|null} */ (null));

  /** @param {string|null} before */
  const load = async (before) => {
    const q = new URLSearchParams({ limit: '50' });
    if (status) q.set('status', status);
    if (before) q.set('before', before);
    try {
      const r = await api('GET', `/api/webhooks/${encodeURIComponent(id)}/deliveries?${q}`);
      setItems((xs) => (before ? [...(xs || []), ...r.deliveries] : r.deliveries));
      setNext(r.next ?? null);
      setError('');
    } catch (e) {
      setError(errText(e));
    }
  };
  useEffect(() => {
    load(null);
  }, [id, status, refresh]);

  /** @param {any} d */
  const replay = async (d) => {
    try {
      await api('POST', `/api/webhooks/${encodeURIComponent(id)}/deliveries/${encodeURIComponent(d.id)}/retry`);
      setDone(`Delivery ${d.id} is pending again.`);
    } catch (e) {
      setError(errText(e));
    }
    load(null);
  };

  return html`<section class="card" aria-labelledby="dlv-h" data-testid="deliveries">
    <h2 id="dlv-h">Deliveries of ${id}</h2>
    <div class="row">
      <label for="dlv-status">Status</label>
      <select id="dlv-status" value=${status} onChange=${(/** @type {any} */ e) => setStatus(e.currentTarget.value)}>
        <option value="">all</option><option value="pending">pending</option>
        <option value="succeeded">succeeded</option><option value="failed">failed</option>
      </select>
      <button type="button" class="secondary" onClick=${() => load(null)}>Refresh</button>
    </div>
    ${done && html`<${Notice} kind="ok">${done}<//>`}
    ${error && html`<${Notice} kind="error">${error}<//>`}
    ${items && items.length === 0 && html`<p class="muted">No deliveries.</p>`}
    ${items && items.length > 0 &&
    html`<div class="table-wrap"><table class="data">
      <thead><tr><th scope="col">Created</th><th scope="col">Event</th><th scope="col">Status</th><th scope="col">Attempts</th>
        <th scope="col">Last answer</th><th scope="col">Next attempt</th><th scope="col">Actions</th></tr></thead>
      <tbody>
        ${items.map(
          (d) => html`<tr data-key=${d.id}>
            <td>${new Date(d.createdAt).toLocaleString()}</td>
            <th scope="row">${d.type}<div class="muted small"><code>${d.id}</code></div></th>
            <td>${statusBadge(d.status)}</td>
            <td>${d.attempts}</td>
            <td>${d.lastStatus ?? ''}${d.lastLatencyMs != null ? ` in ${d.lastLatencyMs} ms` : ''}${d.lastError ? html`<div class="warn-text small">${d.lastError}</div>` : ''}</td>
            <td>${d.nextAttemptAt ? new Date(d.nextAttemptAt).toLocaleString() : ''}</td>
            <td><div class="buttons">
              <button type="button" class="secondary" aria-expanded=${open === d.id} onClick=${() => setOpen(open === d.id ? null : d.id)}>Payload</button>
              ${d.status === 'failed' && html`<button type="button" onClick=${() => replay(d)} aria-label=${`Replay delivery ${d.id}`}>Replay</button>`}
            </div></td>
          </tr>
          ${open === d.id && html`<tr><td colspan="7"><pre class="block">${pretty(d.payload)}${d.responseSnippet ? `\n\nResponse: ${d.responseSnippet}` : ''}</pre></td></tr>`}`,
        )}
      </tbody>
    </table></div>`}
    ${next && html`<button type="button" class="secondary" onClick=${() => load(next)}>Older deliveries</button>`}
  </section>`;
}

export function WebhooksPage() {
  const [selected, setSelected] = useState(/** @type {string|null} */ (null));
  const [refresh, setRefresh] = useState(0);
  const [note, setNote] = useState(/** @type {{kind: 'ok'|'error', text: string}|null} */ (null));

  /** @param {string} id */
  const test = async (id) => {
    setNote(null);
    try {
      const r = await api('POST', `/api/webhooks/${encodeURIComponent(id)}/test`);
      const d = r.delivery;
      setNote({
        kind: d.status === 'succeeded' ? 'ok' : 'error',
        text: `Test event to ${id}: ${d.status}${d.lastStatus ? ` (HTTP ${d.lastStatus})` : ''}${d.lastError ? `: ${d.lastError}` : ''}.`,
      });
    } catch (e) {
      setNote({ kind: 'error', text: errText(e) });
    }
    setSelected(id);
    setRefresh((n) => n + 1);
  };

  return html`<div>
    ${note && html`<${Notice} kind=${note.kind}>${note.text}<//>`}
    <${ResourcePage} spec=${webhookSpec} extra=${(/** @type {any} */ w) => html`
      <button type="button" class="secondary" onClick=${() => setSelected(w.id)} aria-label=${`Deliveries of webhook ${w.id}`}>Deliveries</button>
      <button type="button" class="secondary" onClick=${() => test(w.id)} aria-label=${`Send test event to webhook ${w.id}`}>Send test event</button>`} />
    ${selected && html`<${Deliveries} id=${selected} refresh=${refresh} />`}
  </div>`;
}
