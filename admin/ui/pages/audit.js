// The audit log (GET /api/logs): filters by actor, resource, action and
// time; each entry's before/after side by side.
import { html, useEffect, useState } from '../vendor/htm-preact-standalone.js';
import { api, errText } from '../lib/api.js';
import { Field, Notice, pretty, SideBySide } from '../lib/ui.js';

/**
 * `datetime-local` value (local time) → the API's UTC form.
 * @param {string} v
 */
function utc(v) {
  if (!v) return '';
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? v : d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * The entry's JSON without its `null` fields (an absent optional field:
 * the default), so the diff shows what was set.
 * @param {unknown} v
 * @returns {unknown}
 */
function clean(v) {
  if (Array.isArray(v)) return v.map(clean);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== null).map(([k, x]) => [k, clean(x)]));
  return v;
}

/** @param {{entry: any}} p */
function Entry({ entry }) {
  const [open, setOpen] = useState(false);
  const id = `entry-${entry.id}`;
  return html`<li class="audit-entry" data-testid="audit-entry" data-resource=${entry.resource}>
    <div class="audit-line">
      <time datetime=${entry.time}>${new Date(entry.time).toLocaleString()}</time>
      <span class="badge">${entry.action}</span>
      <strong>${entry.resource}</strong>
      <span class="muted">by ${entry.actor} · version ${entry.version}</span>
      <button type="button" class="secondary" aria-expanded=${open} aria-controls=${id}
        onClick=${() => setOpen(!open)}>${open ? 'Hide changes' : 'Show changes'}</button>
    </div>
    ${open &&
    html`<div id=${id}>
      <${SideBySide} before=${pretty(clean(entry.before))} after=${pretty(clean(entry.after))}
        label=${`Changes to ${entry.resource} in version ${entry.version}, before and after`}
        leftTitle=${entry.before == null ? 'Before (none)' : 'Before'} rightTitle=${entry.after == null ? 'After (none)' : 'After'} />
    </div>`}
  </li>`;
}

export function AuditPage() {
  const [f, setF] = useState({ actor: '', resource: '', action: '', since: '', until: '' });
  const [applied, setApplied] = useState(f);
  const [entries, setEntries] = useState(/** @type {any[]} */ ([]));
  const [next, setNext] = useState(/** @type {number|null} */ (null));
  const [error, setError] = useState('');
  const [loading, setLoading] = useState(false);
  /** @param {string} k */
  const set = (k) => (/** @type {any} */ x) => setF((s) => ({ ...s, [k]: x }));

  /** @param {typeof f} q @param {number|null} before */
  const load = async (q, before) => {
    const p = new URLSearchParams({ limit: '50' });
    if (q.actor) p.set('actor', q.actor);
    if (q.resource.trim()) p.set('resource', q.resource.trim());
    if (q.action) p.set('action', q.action);
    if (q.since) p.set('since', utc(q.since));
    if (q.until) p.set('until', utc(q.until));
    if (before) p.set('before', String(before));
    setLoading(true);
    try {
      const r = await api('GET', `/api/logs?${p}`);
      setEntries((xs) => (before ? [...xs, ...r.entries] : r.entries));
      setNext(r.next ?? null);
      setError('');
    } catch (e) {
      setError(errText(e));
    } finally {
      setLoading(false);
    }
  };
  useEffect(() => {
    load(applied, null);
  }, [applied]);

  return html`<div class="page">
    <h1>Audit log</h1>
    <form class="card" aria-labelledby="filter-h" onSubmit=${(/** @type {Event} */ e) => {
      e.preventDefault();
      setApplied({ ...f });
    }}>
      <h2 id="filter-h">Filter</h2>
      <div class="form-grid">
        <${Field} label="Actor" name="actor" value=${f.actor} onInput=${set('actor')} options=${['', 'admin-token', 'session', 'cli', 'import', 'startup']} emptyLabel="any" />
        <${Field} label="Resource" name="resource" value=${f.resource} onInput=${set('resource')} placeholder="route/api, or a kind: route" />
        <${Field} label="Action" name="action" value=${f.action} onInput=${set('action')} options=${['', 'create', 'update', 'delete', 'revoke', 'import']} emptyLabel="any" />
        <${Field} label="Since" name="since" type="datetime-local" value=${f.since} onInput=${set('since')} />
        <${Field} label="Until" name="until" type="datetime-local" value=${f.until} onInput=${set('until')} />
      </div>
      <div class="buttons">
        <button type="submit">Apply filters</button>
        <button type="button" class="secondary" onClick=${() => {
          const empty = { actor: '', resource: '', action: '', since: '', until: '' };
          setF(empty);
          setApplied(empty);
        }}>Clear</button>
      </div>
    </form>
    ${error && html`<${Notice} kind="error">${error}<//>`}
    <section class="card" aria-labelledby="entries-h">
      <h2 id="entries-h">Entries <span class="muted small">newest first</span></h2>
      ${!loading && entries.length === 0 && html`<p class="muted">No entries.</p>`}
      <ol class="audit">${entries.map((e) => html`<${Entry} key=${e.id ?? e.time + e.resource} entry=${e} />`)}</ol>
      ${next && html`<button type="button" class="secondary" disabled=${loading} onClick=${() => load(applied, next)}>Older entries</button>`}
    </section>
  </div>`;
}
