import { html } from '../vendor/htm-preact-standalone.js';
export function WebhooksPage() { return html`<h1>Webhooks</h1><p>Coming next.</p>`; }
