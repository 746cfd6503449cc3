import { html } from '../vendor/htm-preact-standalone.js';
export function ConfigPage() { return html`<h1>Config</h1><p>Coming next.</p>`; }
