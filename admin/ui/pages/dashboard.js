// The live dashboard: /api/stream/metrics every second (rate, latency,
// errors over 15 minutes; status mix; routes; upstreams), the alerts
// feed from /api/stream/alerts, target health from /metrics, and the
// request history from the roll-ups in database mode.
import { html, useEffect, useMemo, useRef, useState } from '../vendor/htm-preact-standalone.js';
import { api, ApiError } from '../lib/api.js';
import { Chart } from '../lib/chart.js';
import { useEventStream, useTick } from '../lib/stream.js';
import { msText, Notice, num } from '../lib/ui.js';

/** Seconds of series kept (15 minutes). */
const SPAN = 15 * 60;

/**
 * @typedef {{t: number[], rate: (number|null)[], p50: (number|null)[], p95: (number|null)[],
 *   p99: (number|null)[], err: (number|null)[]}} Series
 */

/** @returns {Series} */
function emptySeries() {
  return { t: [], rate: [], p50: [], p95: [], p99: [], err: [] };
}

/**
 * Drops points older than the span.
 * @param {Series} s
 * @param {number} now
 */
function trim(s, now) {
  let k = 0;
  while (k < s.t.length && s.t[k] < now - SPAN) k++;
  if (k) for (const key of /** @type {(keyof Series)[]} */ (Object.keys(s))) s[key].splice(0, k);
}

/**
 * The series and last summary, kept while the UI is open (leaving the
 * dashboard and coming back keeps the 15 minutes drawn so far).
 */
const shared = {
  series: emptySeries(),
  /** @type {any} */ last: null,
  /** @type {number} */ lastAt: 0,
  /** @type {Record<string, number>} */ routeRates: {},
  /** @type {Record<string, number>} */ upstreamRates: {},
  rate: 0,
  node: '',
  /** @type {Record<string, number>} */ nodes: {},
};

/**
 * The dashboard's model, fed by each summary of this node.
 */
function useLive() {
  const [tick, setTick] = useState(0);
  const model = useRef(shared);

  /** @param {any} s a summary */
  const onMetrics = (s) => {
    const m = model.current;
    m.nodes[s.node] = Date.now();
    if (m.node && s.node !== m.node) {
      setTick((n) => n + 1);
      return;
    }
    const now = Date.parse(s.timestamp) / 1000 || Date.now() / 1000;
    const ser = m.series;
    if (!m.last) {
      // Seed the chart with the server's 15-minute request-rate series.
      const step = s.requestRate.intervalSeconds;
      for (const p of s.requestRate.points) {
        const t = Date.parse(p.time) / 1000 + step;
        if (t >= now) continue;
        ser.t.push(t);
        ser.rate.push(p.perSecond);
        ser.p50.push(null);
        ser.p95.push(null);
        ser.p99.push(null);
        ser.err.push(p.requests ? (100 * p.errors) / p.requests : 0);
      }
    }
    let rate = 0;
    if (m.last) {
      const dt = Math.max(0.001, now - m.lastAt);
      rate = Math.max(0, (s.totalRequests - m.last.totalRequests) / dt);
      for (const [k, v] of Object.entries(s.routes)) {
        const before = m.last.routes[k]?.totalRequests ?? v.totalRequests;
        m.routeRates[k] = Math.max(0, (v.totalRequests - before) / dt);
      }
      for (const [k, v] of Object.entries(s.upstreams)) {
        const before = m.last.upstreams[k]?.totalRequests ?? v.totalRequests;
        m.upstreamRates[k] = Math.max(0, (v.totalRequests - before) / dt);
      }
    } else {
      const pts = s.requestRate.points;
      rate = pts.length ? pts[pts.length - 1].perSecond : 0;
    }
    if (!ser.t.length || now > ser.t[ser.t.length - 1]) {
      ser.t.push(now);
      ser.rate.push(rate);
      const has = s.requests > 0;
      ser.p50.push(has ? s.latency.p50Ms : null);
      ser.p95.push(has ? s.latency.p95Ms : null);
      ser.p99.push(has ? s.latency.p99Ms : null);
      ser.err.push(s.errorRate);
    }
    trim(ser, now);
    m.rate = rate;
    m.last = s;
    m.lastAt = now;
    setTick((n) => n + 1);
  };

  const stream = useEventStream('/api/stream/metrics?interval=1', {
    connected: (d) => {
      const m = model.current;
      if (m.node && m.node !== d.node) {
        // Another process answers now (a restart): start over.
        m.series = emptySeries();
        m.last = null;
      }
      m.node = d.node;
    },
    metrics: onMetrics,
  });
  return { stream, model: model.current, tick };
}

/**
 * @param {{stream: import('../lib/stream.js').StreamState, what: string, staleAfter?: number}} p
 *   `staleAfter`: seconds without an event that mean the stream is stuck
 *   (none for a stream that is quiet until something happens)
 */
export function StreamStatus({ stream, what, staleAfter }) {
  useTick(1000);
  const age = stream.lastEventAt ? (Date.now() - stream.lastEventAt) / 1000 : null;
  const stale = !!staleAfter && stream.status === 'live' && age !== null && age > staleAfter;
  const label = stale
    ? `stale: no update for ${Math.round(age)} s`
    : stream.status === 'live'
      ? 'live'
      : stream.status === 'connecting'
        ? 'connecting…'
        : stream.status === 'reconnecting'
          ? 'reconnecting…'
          : 'disconnected';
  const kind = stale || stream.status !== 'live' ? 'warn' : 'ok';
  return html`<p class="stream stream-${kind}" data-testid=${'stream-' + what}>
    <span class="dot" aria-hidden="true"></span>
    <span>${what}: <strong>${label}</strong></span>
    ${stream.node && html`<span class="muted"> · node ${stream.node}</span>`}
    ${stream.reconnects > 0 && html`<span class="muted"> · ${stream.reconnects} reconnect${stream.reconnects > 1 ? 's' : ''}</span>`}
    ${stream.missed > 0 && html`<span class="warn-text"> · ${stream.missed} update${stream.missed > 1 ? 's' : ''} dropped (client fell behind)</span>`}
  </p>`;
}

/**
 * @param {{label: string, value: string, testid: string, sub?: string}} p
 */
function Stat({ label, value, testid, sub }) {
  return html`<div class="stat" data-testid=${testid}>
    <div class="stat-label">${label}</div>
    <div class="stat-value">${value}</div>
    ${sub && html`<div class="stat-sub">${sub}</div>`}
  </div>`;
}

/** @param {{codes: Record<string, number>}} p */
function StatusMix({ codes }) {
  const total = Object.values(codes).reduce((a, b) => a + b, 0);
  /** @type {Record<string, number>} */
  const classes = { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, 'no answer': 0 };
  for (const [c, n] of Object.entries(codes)) {
    const k = c === '0' ? 'no answer' : `${c[0]}xx`;
    classes[k] = (classes[k] || 0) + n;
  }
  return html`<section class="card" aria-labelledby="mix-h">
    <h2 id="mix-h">Status codes <span class="muted small">(since start)</span></h2>
    ${total === 0
      ? html`<p class="muted">No requests yet.</p>`
      : html`<ul class="mix">
          ${Object.entries(classes).map(([k, n]) => {
            const pct = total ? (100 * n) / total : 0;
            return html`<li>
              <span class="mix-label">${k}</span>
              <span class="bar" aria-hidden="true"><span class=${'bar-fill mix-' + k[0]} style=${{ width: pct + '%' }}></span></span>
              <span class="mix-n">${n.toLocaleString('en')} (${pct.toFixed(1)} %)</span>
            </li>`;
          })}
        </ul>
        <p class="small muted">${Object.entries(codes)
          .map(([c, n]) => `${c === '0' ? 'no answer' : c}: ${n}`)
          .join(' · ')}</p>`}
  </section>`;
}

/** @typedef {{key: string, rate: number, requests: number, errorRate: number, p50: number, p99: number, total: number}} Row */

/**
 * A sortable table of routes or upstreams.
 * @param {{title: string, id: string, rows: Row[], keyLabel: string}} p
 */
function KeyTable({ title, id, rows, keyLabel }) {
  const [sort, setSort] = useState({ by: /** @type {keyof Row} */ ('rate'), desc: true });
  const sorted = [...rows].sort((a, b) => {
    const x = a[sort.by];
    const y = b[sort.by];
    const c = typeof x === 'string' ? x.localeCompare(String(y)) : Number(x) - Number(y);
    return sort.desc ? -c : c;
  });
  /** @type {[keyof Row, string][]} */
  const cols = [
    ['key', keyLabel],
    ['rate', 'Req/s'],
    ['requests', 'Requests (window)'],
    ['errorRate', 'Errors %'],
    ['p50', 'p50'],
    ['p99', 'p99'],
    ['total', 'Total'],
  ];
  return html`<section class="card" aria-labelledby=${id + '-h'}>
    <h2 id=${id + '-h'}>${title}</h2>
    ${rows.length === 0
      ? html`<p class="muted">No traffic yet.</p>`
      : html`<div class="table-wrap"><table class="data" data-testid=${id}>
          <thead><tr>
            ${cols.map(
              ([k, label]) => html`<th scope="col" aria-sort=${sort.by === k ? (sort.desc ? 'descending' : 'ascending') : 'none'}>
                <button type="button" class="sort" onClick=${() => setSort((s) => ({ by: k, desc: s.by === k ? !s.desc : k !== 'key' }))}>
                  ${label}<span aria-hidden="true">${sort.by === k ? (sort.desc ? ' ▼' : ' ▲') : ''}</span>
                </button>
              </th>`,
            )}
          </tr></thead>
          <tbody>
            ${sorted.map(
              (r) => html`<tr>
                <th scope="row">${r.key}</th>
                <td>${num(r.rate)}</td>
                <td>${r.requests.toLocaleString('en')}</td>
                <td class=${r.errorRate > 0 ? 'warn-text' : ''}>${num(r.errorRate)}</td>
                <td>${msText(r.p50)}</td>
                <td>${msText(r.p99)}</td>
                <td>${r.total.toLocaleString('en')}</td>
              </tr>`,
            )}
          </tbody>
        </table></div>`}
  </section>`;
}

/**
 * Parses Prometheus text for target health and breaker state.
 * @param {string} text
 */
export function parseHealth(text) {
  /** @type {Record<string, {targets: {url: string, healthy: boolean}[], breaker: string|null}>} */
  const out = {};
  const get = (/** @type {string} */ up) => (out[up] ||= { targets: [], breaker: null });
  const label = (/** @type {string} */ l, /** @type {string} */ name) => {
    const m = l.match(new RegExp(`${name}="((?:[^"\\\\]|\\\\.)*)"`));
    return m ? m[1].replace(/\\(.)/g, '$1') : '';
  };
  for (const line of text.split('\n')) {
    if (line.startsWith('flexgate_upstream_target_healthy{')) {
      const [l, v] = [line.slice(0, line.lastIndexOf('}') + 1), line.slice(line.lastIndexOf('}') + 1).trim()];
      get(label(l, 'upstream')).targets.push({ url: label(l, 'target'), healthy: Number(v) === 1 });
    } else if (line.startsWith('flexgate_circuit_breaker_state{')) {
      const [l, v] = [line.slice(0, line.lastIndexOf('}') + 1), line.slice(line.lastIndexOf('}') + 1).trim()];
      get(label(l, 'upstream')).breaker = ['closed', 'open', 'half-open'][Number(v)] || v;
    }
  }
  return out;
}

/** @param {{stats: Record<string, any>, rates: Record<string, number>}} p */
function Upstreams({ stats, rates }) {
  const [health, setHealth] = useState(/** @type {ReturnType<typeof parseHealth>|null} */ (null));
  const [err, setErr] = useState('');
  useEffect(() => {
    let live = true;
    const load = async () => {
      try {
        const r = await fetch('/metrics', { cache: 'no-store' });
        if (!r.ok) throw new Error(r.status === 401 ? 'GET /metrics needs the admin token here (admin.publicEndpoints: false)' : `GET /metrics: ${r.status}`);
        const h = parseHealth(await r.text());
        if (live) {
          setHealth(h);
          setErr('');
        }
      } catch (e) {
        if (live) setErr(e instanceof Error ? e.message : String(e));
      }
    };
    load();
    const t = setInterval(load, 5000);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, []);
  const names = [...new Set([...Object.keys(health || {}), ...Object.keys(stats)])].sort();
  return html`<section class="card" aria-labelledby="ups-h">
    <h2 id="ups-h">Upstreams</h2>
    ${err && html`<${Notice} kind="warn">Target health unavailable: ${err}<//>`}
    ${names.length === 0
      ? html`<p class="muted">No upstreams.</p>`
      : html`<div class="table-wrap"><table class="data" data-testid="upstreams-health">
          <thead><tr><th scope="col">Upstream</th><th scope="col">Breaker</th><th scope="col">Targets</th><th scope="col">Req/s</th><th scope="col">Errors %</th><th scope="col">p99</th></tr></thead>
          <tbody>
            ${names.map((n) => {
              const h = health?.[n];
              const s = stats[n];
              return html`<tr>
                <th scope="row">${n}</th>
                <td>${h?.breaker ? html`<span class=${'badge ' + (h.breaker === 'closed' ? 'ok' : 'bad')}>${h.breaker}</span>` : html`<span class="muted">none</span>`}</td>
                <td>${(h?.targets || []).map(
                  (t) => html`<div><span class=${'badge ' + (t.healthy ? 'ok' : 'bad')}>${t.healthy ? 'healthy' : 'down'}</span> <code>${t.url}</code></div>`,
                )}</td>
                <td>${num(rates[n] ?? 0)}</td>
                <td>${s ? num(s.errorRate) : '–'}</td>
                <td>${s ? msText(s.latency.p99Ms) : '–'}</td>
              </tr>`;
            })}
          </tbody>
        </table></div>`}
  </section>`;
}

function Alerts() {
  const [items, setItems] = useState(/** @type {any[]} */ ([]));
  const stream = useEventStream('/api/stream/alerts', {
    alert: (a) => setItems((xs) => [a, ...xs].slice(0, 100)),
  });
  return html`<section class="card" aria-labelledby="alerts-h">
    <h2 id="alerts-h">Alerts</h2>
    <${StreamStatus} stream=${stream} what="alerts" />
    ${items.length === 0
      ? html`<p class="muted">No events since this page opened.</p>`
      : html`<ol class="feed" role="log" aria-label="Gateway events, newest first" data-testid="alerts">
          ${items.map(
            (a) => html`<li>
              <time datetime=${a.time}>${new Date(a.time).toLocaleTimeString()}</time>
              <strong>${a.type}</strong>
              <span class="muted">${a.node}</span>
              <code class="feed-data">${JSON.stringify(a.data)}</code>
            </li>`,
          )}
        </ol>`}
  </section>`;
}

function History() {
  const [gran, setGran] = useState('hour');
  const [state, setState] = useState(/** @type {{data?: any, error?: string, off?: boolean}} */ ({}));
  useEffect(() => {
    let live = true;
    api('GET', `/api/metrics/history?granularity=${gran}`).then(
      (data) => live && setState({ data }),
      (e) => live && setState(e instanceof ApiError && e.status === 409 ? { off: true } : { error: e.message }),
    );
    return () => {
      live = false;
    };
  }, [gran]);
  const d = state.data;
  const chart = useMemo(() => {
    if (!d) return null;
    const xs = d.overall.map((/** @type {any} */ b) => Date.parse(b.bucket) / 1000);
    return [xs, d.overall.map((/** @type {any} */ b) => b.requests), d.overall.map((/** @type {any} */ b) => b.p99Ms), d.overall.map((/** @type {any} */ b) => b.errorRate)];
  }, [d]);
  return html`<section class="card" aria-labelledby="hist-h">
    <h2 id="hist-h">History</h2>
    ${state.off
      ? html`<p class="muted">Request history is kept in database mode (PostgreSQL, <code>history.enabled</code>); this gateway has none.</p>`
      : html`<div class="row">
            <label for="hist-range">Range</label>
            <select id="hist-range" value=${gran} onChange=${(/** @type {any} */ e) => setGran(e.currentTarget.value)}>
              <option value="hour">Last 24 hours, hourly</option>
              <option value="day">Last 30 days, daily</option>
            </select>
          </div>
          ${state.error && html`<${Notice} kind="error">${state.error}<//>`}
          ${d && !d.recording && html`<${Notice} kind="info">This node does not record history (history.enabled).<//>`}
          ${chart &&
          html`<${Chart} title="Requests per bucket (left); p99 ms and errors % (right)" label=${`Request history, ${d.overall.length} buckets`}
            series=${[
              { label: 'requests', color: '--c1' },
              { label: 'p99 ms', color: '--c4', scale: 'ms' },
              { label: 'errors %', color: '--c5', scale: 'ms' },
            ]} data=${chart} testid="history-chart" xRange=${[Date.parse(d.from) / 1000, Date.parse(d.to) / 1000]} />`}`}
  </section>`;
}

export function DashboardPage() {
  const { stream, model, tick } = useLive();
  const s = model.last;
  const ser = model.series;
  const rateData = useMemo(() => [ser.t.slice(), ser.rate.slice()], [tick]);
  const latData = useMemo(() => [ser.t.slice(), ser.p50.slice(), ser.p95.slice(), ser.p99.slice()], [tick]);
  const errData = useMemo(() => [ser.t.slice(), ser.err.slice()], [tick]);
  /** @type {(m: Record<string, any>, rates: Record<string, number>) => Row[]} */
  const rows = (m, rates) =>
    Object.entries(m || {}).map(([k, v]) => ({
      key: k,
      rate: rates[k] ?? 0,
      requests: v.requests,
      errorRate: v.errorRate,
      p50: v.latency.p50Ms,
      p99: v.latency.p99Ms,
      total: v.totalRequests,
    }));
  const others = Object.keys(model.nodes).filter((n) => n !== model.node);
  return html`<div class="page dashboard">
    <div class="page-head">
      <h1>Dashboard</h1>
      <${StreamStatus} stream=${stream} what="metrics" staleAfter=${5} />
    </div>
    ${others.length > 0 && html`<p class="muted small">Showing node ${model.node}; also seen: ${others.join(', ')}.</p>`}
    <div class="stats">
      <${Stat} label="Requests/s" value=${s ? num(model.rate) : '–'} testid="stat-rate" sub=${s ? `${s.totalRequests.toLocaleString('en')} since start` : ''} />
      <${Stat} label="p50" value=${s && s.requests ? msText(s.latency.p50Ms) : '–'} testid="stat-p50" />
      <${Stat} label="p95" value=${s && s.requests ? msText(s.latency.p95Ms) : '–'} testid="stat-p95" />
      <${Stat} label="p99" value=${s && s.requests ? msText(s.latency.p99Ms) : '–'} testid="stat-p99" sub=${s ? `over the last ${s.windowSeconds >= 120 ? Math.round(s.windowSeconds / 60) + ' min' : s.windowSeconds + ' s'}` : ''} />
      <${Stat} label="Error rate" value=${s ? `${num(s.errorRate)} %` : '–'} testid="stat-errors" sub=${s ? `${s.totalErrors.toLocaleString('en')} errors since start` : ''} />
    </div>
    <div class="charts">
      <${Chart} title="Requests per second (15 min)" label=${`Request rate over the last 15 minutes; now ${num(model.rate)} per second`}
        series=${[{ label: 'req/s', color: '--c1' }]} data=${rateData} testid="chart-rate" span=${SPAN} />
      <${Chart} title="Latency (ms)" label=${`Latency percentiles over the last 15 minutes; p99 now ${s ? msText(s.latency.p99Ms) : 'unknown'}`}
        series=${[
          { label: 'p50', color: '--c2' },
          { label: 'p95', color: '--c3' },
          { label: 'p99', color: '--c4' },
        ]} data=${latData} unit=" ms" testid="chart-latency" span=${SPAN} />
      <${Chart} title="Error rate (%)" label=${`Error rate over the last 15 minutes; now ${s ? num(s.errorRate) : 'unknown'} percent`}
        series=${[{ label: 'errors %', color: '--c5' }]} data=${errData} unit=" %" testid="chart-errors" span=${SPAN} />
    </div>
    <div class="grid2">
      <${StatusMix} codes=${s?.statusCodes || {}} />
      <${Alerts} />
    </div>
    <${KeyTable} title="Routes" id="routes-table" keyLabel="Route" rows=${rows(s?.routes, model.routeRates)} />
    <${Upstreams} stats=${s?.upstreams || {}} rates=${model.upstreamRates} />
    <${History} />
  </div>`;
}
