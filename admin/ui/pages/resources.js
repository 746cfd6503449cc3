import { html } from '../vendor/htm-preact-standalone.js';
export function RoutesPage() { return html`<h1>Routes</h1><p>Coming next.</p>`; }
export function UpstreamsPage() { return html`<h1>Upstreams</h1><p>Coming next.</p>`; }
