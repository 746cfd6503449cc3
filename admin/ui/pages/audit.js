import { html } from '../vendor/htm-preact-standalone.js';
export function AuditPage() { return html`<h1>Audit</h1><p>Coming next.</p>`; }
