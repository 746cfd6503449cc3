import { html } from '../vendor/htm-preact-standalone.js';
export function SettingsPage() { return html`<h1>Settings</h1><p>Coming next.</p>`; }
