// The whole dynamic config as YAML; an import previewed with a dry run
// (the changes and a side-by-side diff) before it is applied; an export.
import { html, useEffect, useState } from '../vendor/htm-preact-standalone.js';
import { api, ApiError, errText } from '../lib/api.js';
import { Field, Notice, SideBySide } from '../lib/ui.js';

/** Drops the export's comment header (it names the export time). @param {string} y */
const body = (y) => y.replace(/^(#[^\n]*\n)+/, '');

export function ConfigPage() {
  const [current, setCurrent] = useState(/** @type {{text: string, version: number|null}|null} */ (null));
  const [draft, setDraft] = useState('');
  const [preview, setPreview] = useState(/** @type {any} */ (null));
  const [error, setError] = useState(/** @type {ApiError|null} */ (null));
  const [done, setDone] = useState('');
  const [busy, setBusy] = useState(false);

  const load = async () => {
    try {
      const r = await api('GET', '/api/config?format=yaml', { full: true, raw: true });
      setCurrent({ text: r.data, version: r.version });
      setDraft(r.data);
      setPreview(null);
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, 'error', errText(e)));
    }
  };
  useEffect(() => {
    load();
  }, []);

  /** @param {boolean} dry */
  const send = async (dry) => {
    setBusy(true);
    setError(null);
    setDone('');
    try {
      const r = await api('POST', `/api/config${dry ? '?dryRun=true' : ''}`, {
        text: draft,
        contentType: 'application/yaml',
        ifMatch: current?.version ?? undefined,
      });
      if (dry) setPreview(r);
      else {
        setDone(r.changes.length ? `Imported: ${r.changes.length} change(s); config version ${r.version}.` : 'Nothing to change.');
        await load();
      }
    } catch (e) {
      setPreview(null);
      setError(e instanceof ApiError ? e : new ApiError(0, 'error', errText(e)));
    } finally {
      setBusy(false);
    }
  };

  /** @param {Event} e */
  const pickFile = async (e) => {
    const input = /** @type {HTMLInputElement} */ (e.currentTarget);
    const f = input.files?.[0];
    if (f) {
      setDraft(await f.text());
      setPreview(null);
    }
  };

  return html`<div class="page">
    <div class="page-head">
      <h1>Config</h1>
      <div class="buttons">
        <a class="button-link" href="/api/config?format=yaml" download="flexgate-config.yaml">Export YAML</a>
        <a class="button-link" href="/api/config?format=json" download="flexgate-config.json">Export JSON</a>
      </div>
    </div>
    <p class="muted">The routes, upstreams, webhooks and settings the admin API manages${current?.version ? `, at config version ${current.version}` : ''}. Secrets show as ${'<redacted>'}; importing keeps them. Boot settings (listeners, admin, TLS, database) stay in the config file.</p>
    ${done && html`<${Notice} kind="ok">${done}<//>`}
    ${error &&
    html`<div class="notice notice-error" role="alert">
      ${error.code === 'version_conflict'
        ? html`<p><strong>Changed by someone else</strong> since this page loaded: ${error.message}</p>
            <button type="button" class="secondary" onClick=${load}>Reload the current config (discards the draft)</button>`
        : html`<p>${error.message}</p>`}
      ${error.details.length > 0 && html`<ul>${error.details.map((d) => html`<li><code>${d.path}</code>: ${d.message}</li>`)}</ul>`}
    </div>`}
    <section class="card" aria-labelledby="import-h">
      <h2 id="import-h">Edit and import</h2>
      <${Field} label="Config (YAML or JSON)" name="config" type="textarea" rows=${18} value=${draft}
        onInput=${(/** @type {string} */ v) => {
          setDraft(v);
          setPreview(null);
        }} />
      <div class="row">
        <label for="config-file">Or load a file</label>
        <input id="config-file" type="file" accept=".yaml,.yml,.json" onChange=${pickFile} />
      </div>
      <div class="buttons">
        <button type="button" disabled=${busy} onClick=${() => send(true)}>Preview changes (dry run)</button>
        <button type="button" class=${preview ? '' : 'secondary'} disabled=${busy || !preview} onClick=${() => send(false)}>Apply import</button>
        <button type="button" class="secondary" onClick=${load}>Reset to current</button>
      </div>
      ${!preview && html`<p class="small muted">Apply is enabled once a dry run has shown what would change.</p>`}
    </section>
    ${preview &&
    html`<section class="card" aria-labelledby="preview-h" data-testid="dry-run">
      <h2 id="preview-h">Dry run: ${preview.changes.length} change${preview.changes.length === 1 ? '' : 's'}</h2>
      ${preview.changes.length === 0
        ? html`<p>Nothing would change.</p>`
        : html`<ul>${preview.changes.map((/** @type {any} */ c) => html`<li><span class="badge">${c.action}</span> <code>${c.resource}</code></li>`)}</ul>`}
      ${preview.ignored.length > 0 && html`<${Notice} kind="warn">Not applied (boot settings, they need a restart): ${preview.ignored.join(', ')}<//>`}
      <${SideBySide} before=${body(current?.text || '')} after=${body(draft)} leftTitle="Current" rightTitle="Imported" label="Current config and the imported one, side by side" />
    </section>`}
  </div>`;
}
