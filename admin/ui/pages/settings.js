// Settings: version, config version, readiness, this node and, in cluster
// mode, every node seen on the metrics stream.
import { html, useEffect, useState } from '../vendor/htm-preact-standalone.js';
import { api, errText } from '../lib/api.js';
import { useEventStream } from '../lib/stream.js';
import { Link, Notice } from '../lib/ui.js';
import { StreamStatus } from './dashboard.js';

/** A public probe (no token unless admin.publicEndpoints: false). @param {string} path */
async function probe(path) {
  const r = await fetch(path, { cache: 'no-store' });
  if (r.status === 401) throw new Error(`${path} needs the admin token here (admin.publicEndpoints: false)`);
  return r.json();
}

/** @param {number} s seconds */
function uptime(s) {
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} days`;
}

export function SettingsPage() {
  const [health, setHealth] = useState(/** @type {any} */ (null));
  const [ready, setReady] = useState(/** @type {any} */ (null));
  const [version, setVersion] = useState(/** @type {number|null} */ (null));
  const [error, setError] = useState('');
  const [cluster, setCluster] = useState(false);
  const [nodes, setNodes] = useState(/** @type {Record<string, {seen: number, uptime: number, requests: number}>} */ ({}));

  useEffect(() => {
    probe('/health').then(setHealth, (e) => setError(errText(e)));
    probe('/health/ready').then(setReady, () => {});
    api('GET', '/api/routes').then((r) => setVersion(r.version), (e) => setError(errText(e)));
  }, []);

  const stream = useEventStream('/api/stream/metrics?interval=5', {
    connected: (d) => setCluster(!!d.cluster),
    metrics: (s) =>
      setNodes((n) => ({ ...n, [s.node]: { seen: Date.now(), uptime: s.uptimeSeconds, requests: s.totalRequests } })),
  });

  return html`<div class="page">
    <h1>Settings</h1>
    ${error && html`<${Notice} kind="warn">${error}<//>`}
    <section class="card" aria-labelledby="about-h">
      <h2 id="about-h">This gateway</h2>
      <dl class="kv" data-testid="about">
        <dt>FlexGate version</dt><dd>${health?.version ?? '–'}</dd>
        <dt>Config version</dt><dd>${version ?? health?.configVersion ?? '–'}</dd>
        <dt>Node</dt><dd>${stream.node || '–'}</dd>
        <dt>Mode</dt><dd>${cluster ? 'cluster (NATS feed)' : 'single node'}</dd>
        <dt>Readiness</dt><dd>${ready
          ? html`${ready.status} · ${Object.entries(ready.checks)
              .map(([k, c]) => `${k}: ${/** @type {any} */ (c).status}${/** @type {any} */ (c).store ? ` (${/** @type {any} */ (c).store})` : ''}`)
              .join(', ')}`
          : '–'}</dd>
        <dt>Admin UI build</dt><dd><code>${new URL(import.meta.url).pathname.split('/')[3] || '–'}</code> (asset hash)</dd>
      </dl>
    </section>
    <section class="card" aria-labelledby="nodes-h">
      <h2 id="nodes-h">Nodes</h2>
      <${StreamStatus} stream=${stream} what="metrics" staleAfter=${15} />
      ${Object.keys(nodes).length === 0
        ? html`<p class="muted">Waiting for the first summary…</p>`
        : html`<div class="table-wrap"><table class="data" data-testid="nodes">
            <thead><tr><th scope="col">Node</th><th scope="col">Uptime</th><th scope="col">Requests since start</th><th scope="col">Last summary</th></tr></thead>
            <tbody>${Object.entries(nodes).map(
              ([n, v]) => html`<tr><th scope="row">${n}${n === stream.node ? ' (this one)' : ''}</th>
                <td>${uptime(v.uptime)}</td><td>${v.requests.toLocaleString('en')}</td>
                <td>${new Date(v.seen).toLocaleTimeString()}</td></tr>`,
            )}</tbody>
          </table></div>`}
      ${!cluster && html`<p class="small muted">Other nodes appear here in cluster mode (NATS).</p>`}
    </section>
    <section class="card" aria-labelledby="boot-h">
      <h2 id="boot-h">Boot settings</h2>
      <p>Listeners, the admin service, TLS, the database, Redis and NATS are read from the config file at start and change only with a restart (<code>flexgate start -u</code> hands the sockets over without dropping a connection). The admin API does not serve them; the dynamic part is on the <${Link} href="/admin/config">Config<//> page.</p>
    </section>
  </div>`;
}
