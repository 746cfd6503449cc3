// Routes and upstreams: every field the API takes (RouteConfig,
// UpstreamConfig in GET /api/openapi.json).
import { html, useEffect, useState } from '../vendor/htm-preact-standalone.js';
import { api } from '../lib/api.js';
import { ResourcePage } from '../lib/resource.js';

const DURATION = 'milliseconds, or with a unit: 500ms, 30s, 2m';

/** @param {string[]} upstreams @returns {import('../lib/resource.js').ResourceSpec} */
export function routeSpec(upstreams) {
  return {
    kind: 'route',
    plural: 'routes',
    title: 'Routes',
    keyField: 'id',
    toggle: true,
    headings: ['Path', 'Host', 'Methods', 'Upstream / target', 'Auth', 'Enabled'],
    columns: (r) => [
      html`<code>${r.path}</code>`,
      r.host || html`<span class="muted">any</span>`,
      (r.methods || []).join(', ') || html`<span class="muted">any</span>`,
      r.upstream || r.targetUrl,
      r.auth || 'none',
      r.enabled === false ? html`<span class="badge bad">disabled</span>` : html`<span class="badge ok">enabled</span>`,
    ],
    fields: [
      { name: 'id', label: 'Id', kind: 'text', hint: 'generated when empty (route-…)' },
      { name: 'name', label: 'Name', kind: 'text' },
      { name: 'path', label: 'Path', kind: 'text', required: true, placeholder: '/api/*', hint: 'exact, /prefix/*, or with {param}' },
      { name: 'host', label: 'Host', kind: 'text', placeholder: 'api.example.com or *.example.com' },
      { name: 'methods', label: 'Methods (none checked: any)', kind: 'methods' },
      { name: 'upstream', label: 'Upstream', kind: 'select', options: ['', ...upstreams], hint: 'or a target URL' },
      { name: 'targetUrl', label: 'Target URL', kind: 'text', placeholder: 'http://10.0.0.5:8080' },
      { name: 'enabled', label: 'Enabled', kind: 'bool', dflt: true },
      { name: 'priority', label: 'Priority', kind: 'number' },
      { name: 'stripPrefix', label: 'Strip the path prefix', kind: 'bool', group: 'Forwarding' },
      { name: 'rewrite', label: 'Rewrite path to', kind: 'text', group: 'Forwarding' },
      { name: 'timeout', label: 'Timeout', kind: 'duration', hint: DURATION, group: 'Forwarding' },
      { name: 'maxBodySize', label: 'Largest request body', kind: 'size', hint: 'bytes, or 512kb, 10mb', group: 'Forwarding' },
      { name: 'retryNonIdempotent', label: 'Retry non-idempotent methods', kind: 'bool', group: 'Forwarding' },
      { name: 'websocket', label: 'WebSocket upgrades', kind: 'bool', group: 'Forwarding' },
      { name: 'requestHeaders', label: 'Request headers (JSON)', kind: 'json', placeholder: '{"add": {"X-A": "1"}, "remove": ["X-B"]}', group: 'Forwarding' },
      { name: 'responseHeaders', label: 'Response headers (JSON)', kind: 'json', placeholder: '{"add": {}, "remove": []}', group: 'Forwarding' },
      { name: 'auth', label: 'Authentication', kind: 'select', options: ['', 'none', 'optional', 'required', 'jwt'], group: 'Access' },
      { name: 'scopes', label: 'Scopes a key needs', kind: 'list', hint: 'comma-separated', group: 'Access' },
      { name: 'allowIps', label: 'Allowed client addresses', kind: 'list', hint: 'CIDRs, comma-separated', group: 'Access' },
      { name: 'denyIps', label: 'Denied client addresses', kind: 'list', hint: 'CIDRs, comma-separated', group: 'Access' },
      { name: 'rateLimit', label: 'Rate limit (JSON)', kind: 'json', placeholder: '{"requests": 100, "window": "60s", "by": "ip"}', group: 'Protection' },
      { name: 'maxInFlight', label: 'Most requests in flight', kind: 'number', group: 'Protection' },
      { name: 'criticality', label: 'Criticality under overload', kind: 'select', options: ['', 'low', 'normal', 'high'], group: 'Protection' },
    ],
  };
}

/** @type {import('../lib/resource.js').ResourceSpec} */
export const upstreamSpec = {
  kind: 'upstream',
  plural: 'upstreams',
  title: 'Upstreams',
  keyField: 'name',
  headings: ['Targets', 'Balancing', 'Retries', 'Breaker', 'Health check'],
  columns: (u) => [
    html`${u.url ? html`<code>${u.url}</code>` : (u.targets || []).map((/** @type {any} */ t) => html`<div><code>${t.url}</code>${t.weight ? ` ×${t.weight}` : ''}</div>`)}`,
    u.loadBalancing || 'roundRobin',
    u.retries ?? 0,
    u.circuitBreaker ? 'on' : html`<span class="muted">off</span>`,
    u.healthCheck ? u.healthCheck.path || '/health' : html`<span class="muted">off</span>`,
  ],
  fields: [
    { name: 'name', label: 'Name', kind: 'text', required: true },
    { name: 'url', label: 'URL (one target)', kind: 'text', placeholder: 'http://10.0.0.5:8080' },
    { name: 'targets', label: 'Targets (JSON, instead of URL)', kind: 'json', placeholder: '[{"url": "http://10.0.0.5:8080", "weight": 2}]' },
    { name: 'loadBalancing', label: 'Load balancing', kind: 'select', options: ['', 'roundRobin', 'weighted', 'consistentHash', 'leastConnections', 'p2c', 'random'] },
    { name: 'hashKey', label: 'Hash key', kind: 'text', hint: 'consistentHash: clientIp or header:<Name>' },
    { name: 'hostHeader', label: 'Host header', kind: 'select', options: ['', 'upstream', 'client'] },
    { name: 'timeout', label: 'Timeout', kind: 'duration', hint: DURATION, group: 'Timeouts and retries' },
    { name: 'connectTimeout', label: 'Connect timeout', kind: 'duration', group: 'Timeouts and retries' },
    { name: 'readTimeout', label: 'Read timeout', kind: 'duration', group: 'Timeouts and retries' },
    { name: 'writeTimeout', label: 'Write timeout', kind: 'duration', group: 'Timeouts and retries' },
    { name: 'idleTimeout', label: 'Idle keep-alive timeout', kind: 'duration', group: 'Timeouts and retries' },
    { name: 'retries', label: 'Retries', kind: 'number', hint: '0–10', group: 'Timeouts and retries' },
    { name: 'retryBackoff', label: 'Retry backoff', kind: 'duration', group: 'Timeouts and retries' },
    { name: 'circuitBreaker', label: 'Circuit breaker (JSON)', kind: 'json', placeholder: '{"enabled": true, "failureThreshold": 50, "openDuration": "30s"}', group: 'Health' },
    { name: 'healthCheck', label: 'Health check (JSON)', kind: 'json', placeholder: '{"enabled": true, "path": "/health", "interval": "10s"}', group: 'Health' },
    { name: 'passive', label: 'Passive ejection (JSON)', kind: 'json', placeholder: '{"maxFailures": 3, "ejectDuration": "10s"}', group: 'Health' },
  ],
};

export function RoutesPage() {
  const [ups, setUps] = useState(/** @type {string[]|null} */ (null));
  useEffect(() => {
    api('GET', '/api/upstreams').then(
      (r) => setUps(r.upstreams.map((/** @type {any} */ u) => u.name)),
      () => setUps([]),
    );
  }, []);
  if (!ups) return html`<p role="status">Loading…</p>`;
  return html`<${ResourcePage} spec=${routeSpec(ups)} />`;
}

export function UpstreamsPage() {
  return html`<${ResourcePage} spec=${upstreamSpec} />`;
}
