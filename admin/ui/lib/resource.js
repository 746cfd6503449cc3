// A config resource (routes, upstreams, webhooks): a list with search,
// enable/disable and delete, and a form covering every field the API
// takes, with the API's field errors next to the fields and `If-Match`
// conflicts explained.
import { html, useEffect, useState } from '../vendor/htm-preact-standalone.js';
import { api, ApiError, errText, fieldErrors } from './api.js';
import { Field, Notice } from './ui.js';

/**
 * @typedef {object} FieldSpec
 * @property {string} name the API's field name
 * @property {string} label
 * @property {'text'|'number'|'duration'|'size'|'bool'|'list'|'json'|'methods'|'select'|'secret'} kind
 * @property {string} [hint]
 * @property {boolean} [required]
 * @property {string[]} [options] for `select` ('' = the default)
 * @property {boolean} [dflt] for `bool`: the value when absent
 * @property {string} [placeholder]
 * @property {string} [group] fieldset legend
 */

/**
 * @typedef {object} ResourceSpec
 * @property {string} kind `route`
 * @property {string} plural `routes` (the API path and list field)
 * @property {string} title `Routes`
 * @property {string} keyField `id` or `name`
 * @property {FieldSpec[]} fields
 * @property {(item: any) => any[]} columns cells of a list row after the key
 * @property {string[]} headings of those cells
 * @property {boolean} [toggle] has `enabled`
 */

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE'];

/**
 * The form's text values of an item.
 * @param {FieldSpec[]} fields
 * @param {any} item
 */
export function toForm(fields, item) {
  /** @type {Record<string, any>} */
  const v = {};
  for (const f of fields) {
    const x = item?.[f.name];
    if (f.kind === 'bool') v[f.name] = x === undefined || x === null ? !!f.dflt : !!x;
    else if (f.kind === 'methods') v[f.name] = Array.isArray(x) ? x.map(String) : [];
    else if (f.kind === 'list') v[f.name] = Array.isArray(x) ? x.join(', ') : '';
    else if (f.kind === 'json') v[f.name] = x === undefined || x === null ? '' : JSON.stringify(x, null, 2);
    else v[f.name] = x === undefined || x === null ? '' : String(x);
  }
  return v;
}

/**
 * The API body of the form's values; problems found before sending go to
 * `errors`.
 * @param {FieldSpec[]} fields
 * @param {Record<string, any>} v
 * @param {any} original fields the form does not know are kept
 * @returns {{body: any, errors: Record<string, string>}}
 */
export function toBody(fields, v, original) {
  /** @type {Record<string, any>} */
  const body = { ...(original || {}) };
  /** @type {Record<string, string>} */
  const errors = {};
  for (const f of fields) {
    const x = v[f.name];
    delete body[f.name];
    switch (f.kind) {
      case 'bool':
        if (x !== !!f.dflt || f.name === 'enabled') body[f.name] = !!x;
        break;
      case 'methods':
        if (x.length) body[f.name] = x;
        break;
      case 'list': {
        const items = String(x)
          .split(/[,\n]/)
          .map((s) => s.trim())
          .filter(Boolean);
        if (items.length) body[f.name] = items;
        break;
      }
      case 'json':
        if (String(x).trim()) {
          try {
            body[f.name] = JSON.parse(x);
          } catch (e) {
            errors[f.name] = `not valid JSON: ${e instanceof Error ? e.message : e}`;
          }
        }
        break;
      case 'number':
        if (String(x).trim()) body[f.name] = /^-?\d+(\.\d+)?$/.test(String(x).trim()) ? Number(x) : String(x).trim();
        break;
      case 'duration':
      case 'size':
        if (String(x).trim()) body[f.name] = /^\d+$/.test(String(x).trim()) ? Number(x) : String(x).trim();
        break;
      default:
        if (String(x).trim()) body[f.name] = String(x).trim();
    }
  }
  return { body, errors };
}

/**
 * One field of a resource form.
 * @param {{f: FieldSpec, value: any, set: (v: any) => void, error?: string, locked?: boolean}} p
 */
function SpecField({ f, value, set, error, locked }) {
  if (f.kind === 'methods') {
    return html`<fieldset class=${error ? 'has-error' : ''} aria-describedby=${error ? `err-${f.name}` : undefined}>
      <legend>${f.label}</legend>
      <div class="buttons">
        ${METHODS.map(
          (m) => html`<label class="check"><input type="checkbox" name=${'method-' + m} checked=${value.includes(m)}
            onChange=${(/** @type {any} */ e) => set(e.currentTarget.checked ? [...value, m] : value.filter((/** @type {string} */ x) => x !== m))} /> ${m}</label>`,
        )}
      </div>
      ${f.hint && html`<small class="hint">${f.hint}</small>`}
      ${error && html`<p id=${`err-${f.name}`} class="field-error" role="alert">${error}</p>`}
    </fieldset>`;
  }
  const type =
    f.kind === 'bool' ? 'checkbox' : f.kind === 'json' ? 'textarea' : f.kind === 'secret' ? 'password' : f.kind === 'number' ? 'text' : 'text';
  return html`<${Field} label=${f.label} name=${f.name} type=${type} value=${value} onInput=${set} error=${error}
    hint=${f.hint} required=${f.required} options=${f.kind === 'select' ? f.options : undefined}
    placeholder=${f.placeholder} rows=${f.kind === 'json' ? 4 : undefined} disabled=${locked} />`;
}

/**
 * @param {{spec: ResourceSpec, item: any, version: number|null, onDone: (msg: string) => void,
 *   onCancel: () => void}} p `item` null: a new entry
 */
function Editor({ spec, item, version, onDone, onCancel }) {
  const editing = !!item;
  const [values, setValues] = useState(() => toForm(spec.fields, item));
  const [errors, setErrors] = useState(/** @type {Record<string, string>} */ ({}));
  const [message, setMessage] = useState(/** @type {ApiError|null} */ (null));
  const [conflict, setConflict] = useState(/** @type {ApiError|null} */ (null));
  const [busy, setBusy] = useState(false);
  const [base, setBase] = useState(version);

  /** @param {number|null} pin */
  const save = async (pin) => {
    const { body, errors: local } = toBody(spec.fields, values, item);
    setErrors(local);
    setMessage(null);
    setConflict(null);
    if (Object.keys(local).length) return;
    setBusy(true);
    try {
      const key = item?.[spec.keyField];
      const r = editing
        ? await api('PUT', `/api/${spec.plural}/${encodeURIComponent(key)}`, { body, ifMatch: pin })
        : await api('POST', `/api/${spec.plural}`, { body, ifMatch: pin });
      const saved = r[spec.kind];
      onDone(`${editing ? 'Saved' : 'Created'} ${spec.kind} ${saved?.[spec.keyField] ?? ''} (config version ${r.version}).`);
    } catch (e) {
      if (e instanceof ApiError && e.code === 'version_conflict') setConflict(e);
      else {
        const fe = fieldErrors(e);
        const known = new Set(spec.fields.map((f) => f.name));
        setErrors(Object.fromEntries(Object.entries(fe).filter(([k]) => known.has(k))));
        const unplaced = Object.keys(fe).some((k) => !known.has(k));
        if (!Object.keys(fe).length || unplaced) setMessage(e instanceof ApiError ? e : new ApiError(0, 'error', String(e)));
        else setMessage(new ApiError(422, 'invalid', 'Some fields need a change: see the messages next to them.'));
      }
    } finally {
      setBusy(false);
    }
  };

  /** Their version of the entry replaces the form. */
  const reload = async () => {
    try {
      const r = await api('GET', `/api/${spec.plural}/${encodeURIComponent(item[spec.keyField])}`);
      setValues(toForm(spec.fields, r[spec.kind]));
      setBase(r.version);
      setConflict(null);
      setMessage(null);
    } catch (e) {
      setMessage(e instanceof ApiError ? e : new ApiError(0, 'error', String(e)));
    }
  };

  /** Mine replaces theirs: saved against the version now current. */
  const overwrite = async () => {
    try {
      const r = await api('GET', `/api/${spec.plural}`);
      setBase(r.version);
      await save(r.version);
    } catch (e) {
      setMessage(e instanceof ApiError ? e : new ApiError(0, 'error', String(e)));
    }
  };

  /** @type {Record<string, FieldSpec[]>} */
  const groups = {};
  for (const f of spec.fields) (groups[f.group || ''] ||= []).push(f);
  const title = editing ? `Edit ${spec.kind} ${item[spec.keyField]}` : `New ${spec.kind}`;
  return html`<form class="card editor" aria-labelledby="editor-h" noValidate
      onSubmit=${(/** @type {Event} */ e) => {
        e.preventDefault();
        save(base);
      }}>
    <h2 id="editor-h">${title}</h2>
    ${conflict &&
    html`<div class="notice notice-warn" role="alert" data-testid="conflict">
      <p><strong>Changed by someone else.</strong> This ${spec.kind} (or the config) changed after you opened it: ${conflict.message}</p>
      <div class="buttons">
        ${editing && html`<button type="button" class="secondary" onClick=${reload}>Reload theirs (discard my edits)</button>`}
        <button type="button" onClick=${overwrite}>Overwrite with mine</button>
      </div>
    </div>`}
    ${message && html`<${Notice} kind="error">${message.message}<//>`}
    ${Object.entries(groups).map(
      ([g, fs]) => html`${g ? html`<h3>${g}</h3>` : ''}<div class="form-grid">
        ${fs.map(
          (f) => html`<${SpecField} f=${f} value=${values[f.name]} error=${errors[f.name]}
            locked=${editing && f.name === spec.keyField}
            set=${(/** @type {any} */ v) => setValues((s) => ({ ...s, [f.name]: v }))} />`,
        )}
      </div>`,
    )}
    <div class="buttons">
      <button type="submit" disabled=${busy}>${busy ? 'Saving…' : editing ? 'Save' : `Create ${spec.kind}`}</button>
      <button type="button" class="secondary" onClick=${onCancel}>Cancel</button>
      ${base !== null && html`<span class="muted small">based on config version ${base}</span>`}
    </div>
  </form>`;
}

/** @param {{spec: ResourceSpec, extra?: (item: any) => any}} p */
export function ResourcePage({ spec, extra }) {
  const [list, setList] = useState(/** @type {{version: number, items: any[]}|null} */ (null));
  const [loadError, setLoadError] = useState('');
  const [query, setQuery] = useState('');
  const [editing, setEditing] = useState(/** @type {{item: any, version: number|null}|null} */ (null));
  const [done, setDone] = useState('');
  const [actionError, setActionError] = useState('');

  const load = async () => {
    try {
      const r = await api('GET', `/api/${spec.plural}`);
      setList({ version: r.version, items: r[spec.plural] });
      setLoadError('');
    } catch (e) {
      setLoadError(errText(e));
    }
  };
  useEffect(() => {
    load();
  }, [spec.plural]);

  /** @param {any} item */
  const edit = async (item) => {
    setDone('');
    try {
      const r = await api('GET', `/api/${spec.plural}/${encodeURIComponent(item[spec.keyField])}`);
      setEditing({ item: r[spec.kind], version: r.version });
    } catch (e) {
      setActionError(errText(e));
    }
  };

  /** @param {any} item */
  const toggle = async (item) => {
    setActionError('');
    const key = item[spec.keyField];
    const enabled = item.enabled === false;
    try {
      await api('PUT', `/api/${spec.plural}/${encodeURIComponent(key)}`, { body: { ...item, enabled }, ifMatch: list?.version });
      setDone(`${enabled ? 'Enabled' : 'Disabled'} ${spec.kind} ${key}.`);
    } catch (e) {
      setActionError(
        e instanceof ApiError && e.code === 'version_conflict'
          ? `Changed by someone else since this list was loaded (${e.message}). The list is reloaded: check and try again.`
          : errText(e),
      );
    }
    load();
  };

  /** @param {any} item */
  const remove = async (item) => {
    const key = item[spec.keyField];
    if (!window.confirm(`Delete ${spec.kind} ${key}? This cannot be undone (the audit log keeps its last state).`)) return;
    setActionError('');
    try {
      await api('DELETE', `/api/${spec.plural}/${encodeURIComponent(key)}`, { ifMatch: list?.version });
      setDone(`Deleted ${spec.kind} ${key}.`);
    } catch (e) {
      setActionError(
        e instanceof ApiError && e.code === 'version_conflict'
          ? `Changed by someone else since this list was loaded (${e.message}). The list is reloaded: check and try again.`
          : errText(e),
      );
    }
    load();
  };

  const q = query.trim().toLowerCase();
  const items = (list?.items || []).filter((i) => !q || JSON.stringify(i).toLowerCase().includes(q));
  return html`<div class="page">
    <div class="page-head">
      <h1>${spec.title}</h1>
      ${!editing && html`<button type="button" onClick=${() => { setDone(''); setEditing({ item: null, version: list?.version ?? null }); }}>New ${spec.kind}</button>`}
    </div>
    ${done && html`<${Notice} kind="ok">${done}<//>`}
    ${actionError && html`<${Notice} kind="error">${actionError}<//>`}
    ${loadError && html`<${Notice} kind="error">${loadError}<//>`}
    ${editing &&
    html`<${Editor} key=${editing.item?.[spec.keyField] || 'new'} spec=${spec} item=${editing.item} version=${editing.version}
      onCancel=${() => setEditing(null)}
      onDone=${(/** @type {string} */ msg) => {
        setEditing(null);
        setDone(msg);
        load();
      }} />`}
    <section class="card" aria-labelledby="list-h">
      <h2 id="list-h">${items.length} ${spec.plural}${list ? html` <span class="muted small">(config version ${list.version})</span>` : ''}</h2>
      <div class="row">
        <label for="search">Search</label>
        <input id="search" type="search" value=${query} onInput=${(/** @type {any} */ e) => setQuery(e.currentTarget.value)} />
      </div>
      <div class="table-wrap"><table class="data" data-testid=${spec.plural + '-list'}>
        <thead><tr>
          <th scope="col">${spec.keyField}</th>
          ${spec.headings.map((h) => html`<th scope="col">${h}</th>`)}
          <th scope="col">Actions</th>
        </tr></thead>
        <tbody>
          ${items.map((item) => {
            const key = item[spec.keyField];
            return html`<tr data-key=${key}>
              <th scope="row">${key}</th>
              ${spec.columns(item).map((c) => html`<td>${c}</td>`)}
              <td><div class="buttons">
                <button type="button" class="secondary" onClick=${() => edit(item)} aria-label=${`Edit ${spec.kind} ${key}`}>Edit</button>
                ${spec.toggle &&
                html`<button type="button" class="secondary" onClick=${() => toggle(item)}
                  aria-label=${`${item.enabled === false ? 'Enable' : 'Disable'} ${spec.kind} ${key}`}>${item.enabled === false ? 'Enable' : 'Disable'}</button>`}
                <button type="button" class="danger" onClick=${() => remove(item)} aria-label=${`Delete ${spec.kind} ${key}`}>Delete</button>
                ${extra && extra(item)}
              </div></td>
            </tr>`;
          })}
        </tbody>
      </table></div>
    </section>
  </div>`;
}
