import { html } from '../vendor/htm-preact-standalone.js';
export function KeysPage() { return html`<h1>Keys</h1><p>Coming next.</p>`; }
