// Shared pieces: navigation, labelled form fields with their API error,
// notices, a side-by-side diff, formatting.
import { html, useEffect, useState } from '../vendor/htm-preact-standalone.js';

export const BASE = '/admin';

/** @type {Set<() => void>} */
const listeners = new Set();

/**
 * Goes to a page of the UI (`/admin/...`).
 * @param {string} path
 * @param {boolean} [replace]
 */
export function navigate(path, replace = false) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  listeners.forEach((f) => f());
}

/** The current location, re-rendering on navigation. */
export function useLocation() {
  const [, set] = useState(0);
  useEffect(() => {
    const f = () => set((n) => n + 1);
    listeners.add(f);
    window.addEventListener('popstate', f);
    return () => {
      listeners.delete(f);
      window.removeEventListener('popstate', f);
    };
  }, []);
  return { path: location.pathname, search: new URLSearchParams(location.search) };
}

/**
 * A link inside the UI (no page load).
 * @param {{href: string, children?: any, class?: string, current?: boolean}} props
 */
export function Link({ href, children, current, ...rest }) {
  /** @param {MouseEvent} e */
  const click = (e) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${click} aria-current=${current ? 'page' : undefined} ...${rest}>${children}</a>`;
}

let ids = 0;
/** A unique element id. @param {string} prefix */
export function useId(prefix) {
  const [id] = useState(() => `${prefix}-${++ids}`);
  return id;
}

/**
 * A labelled input with its hint and the API's error next to it.
 * @param {{label: string, name: string, value: any, onInput: (v: any) => void,
 *   type?: string, error?: string, hint?: string, required?: boolean,
 *   options?: string[], rows?: number, placeholder?: string, autocomplete?: string,
 *   disabled?: boolean, emptyLabel?: string}} p `emptyLabel`: the text of the option '' of `options`
 */
export function Field(p) {
  const id = useId('f-' + p.name);
  const errId = id + '-err';
  const hintId = id + '-hint';
  const described = [p.error ? errId : '', p.hint ? hintId : ''].filter(Boolean).join(' ') || undefined;
  const common = {
    id,
    name: p.name,
    'aria-invalid': p.error ? 'true' : undefined,
    'aria-describedby': described,
    required: p.required,
    disabled: p.disabled,
  };
  let control;
  if (p.type === 'checkbox') {
    control = html`<input type="checkbox" ...${common} checked=${!!p.value}
      onChange=${(/** @type {any} */ e) => p.onInput(e.currentTarget.checked)} />`;
    return html`<div class="field field-check ${p.error ? 'has-error' : ''}">
      ${control}<label for=${id}>${p.label}</label>
      ${p.hint && html`<small id=${hintId} class="hint">${p.hint}</small>`}
      ${p.error && html`<p id=${errId} class="field-error" role="alert">${p.error}</p>`}
    </div>`;
  }
  if (p.options) {
    control = html`<select ...${common} value=${p.value ?? ''}
      onChange=${(/** @type {any} */ e) => p.onInput(e.currentTarget.value)}>
      ${p.options.map((o) => html`<option value=${o}>${o === '' ? p.emptyLabel || '(default)' : o}</option>`)}
    </select>`;
  } else if (p.type === 'textarea') {
    control = html`<textarea ...${common} rows=${p.rows || 4} value=${p.value ?? ''} placeholder=${p.placeholder}
      spellcheck="false" onInput=${(/** @type {any} */ e) => p.onInput(e.currentTarget.value)}></textarea>`;
  } else {
    control = html`<input type=${p.type || 'text'} ...${common} value=${p.value ?? ''} placeholder=${p.placeholder}
      autocomplete=${p.autocomplete || 'off'} onInput=${(/** @type {any} */ e) => p.onInput(e.currentTarget.value)} />`;
  }
  return html`<div class="field ${p.error ? 'has-error' : ''}">
    <label for=${id} class=${p.required ? 'req' : undefined}>${p.label}</label>
    ${control}
    ${p.hint && html`<small id=${hintId} class="hint">${p.hint}</small>`}
    ${p.error && html`<p id=${errId} class="field-error" role="alert">${p.error}</p>`}
  </div>`;
}

/**
 * A message: `error` is announced at once, `ok`/`info` politely.
 * @param {{kind?: 'error'|'ok'|'info'|'warn', children?: any}} p
 */
export function Notice({ kind = 'info', children }) {
  if (!children) return null;
  return html`<div class="notice notice-${kind}" role=${kind === 'error' ? 'alert' : 'status'}>${children}</div>`;
}

/**
 * Lines of `a` and `b` aligned (longest common subsequence).
 * @param {string[]} a
 * @param {string[]} b
 * @returns {{left: string|null, right: string|null, kind: 'same'|'del'|'add'|'change'}[]}
 */
export function diffLines(a, b) {
  const n = a.length;
  const m = b.length;
  if (n * m > 4_000_000) {
    return [...a.map((l) => ({ left: l, right: null, kind: /** @type {'del'} */ ('del') })), ...b.map((l) => ({ left: null, right: l, kind: /** @type {'add'} */ ('add') }))];
  }
  const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      dp[i][j] = a[i] === b[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
    }
  }
  /** @type {{left: string|null, right: string|null, kind: 'same'|'del'|'add'|'change'}[]} */
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      out.push({ left: a[i], right: b[j], kind: 'same' });
      i++;
      j++;
    } else if (j < m && (i === n || dp[i][j + 1] >= dp[i + 1][j])) {
      out.push({ left: null, right: b[j], kind: 'add' });
      j++;
    } else {
      out.push({ left: a[i], right: null, kind: 'del' });
      i++;
    }
  }
  // Pair a run of deletions with the additions right after it.
  /** @type {typeof out} */
  const paired = [];
  for (let k = 0; k < out.length; ) {
    if (out[k].kind !== 'del') {
      paired.push(out[k++]);
      continue;
    }
    const dels = [];
    while (k < out.length && out[k].kind === 'del') dels.push(out[k++]);
    const adds = [];
    while (k < out.length && out[k].kind === 'add') adds.push(out[k++]);
    for (let x = 0; x < Math.max(dels.length, adds.length); x++) {
      const l = dels[x]?.left ?? null;
      const r = adds[x]?.right ?? null;
      paired.push({ left: l, right: r, kind: l !== null && r !== null ? 'change' : l !== null ? 'del' : 'add' });
    }
  }
  return paired;
}

/** Pretty JSON, `(none)` for null/undefined. @param {unknown} v */
export function pretty(v) {
  return v === null || v === undefined ? '' : JSON.stringify(v, null, 2);
}

/**
 * Two texts side by side, changed lines marked (with a text marker, not
 * only colour).
 * @param {{before: string, after: string, leftTitle?: string, rightTitle?: string, label: string}} p
 */
export function SideBySide({ before, after, leftTitle = 'Before', rightTitle = 'After', label }) {
  const rows = diffLines(before ? before.split('\n') : [], after ? after.split('\n') : []);
  return html`<div class="diff" role="region" aria-label=${label} tabindex="0">
    <table>
      <thead><tr><th scope="col">${leftTitle}</th><th scope="col">${rightTitle}</th></tr></thead>
      <tbody>
        ${rows.map(
          (r) => html`<tr class="d-${r.kind}">
            <td class=${r.left === null ? 'empty' : ''}><span class="mark" aria-hidden="true">${r.left === null ? '' : r.kind === 'same' ? ' ' : '−'}</span>${r.left ?? ''}</td>
            <td class=${r.right === null ? 'empty' : ''}><span class="mark" aria-hidden="true">${r.right === null ? '' : r.kind === 'same' ? ' ' : '+'}</span>${r.right ?? ''}</td>
          </tr>`,
        )}
      </tbody>
    </table>
  </div>`;
}

/** @param {number} n */
export function num(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  if (Math.abs(n) >= 100) return Math.round(n).toLocaleString('en');
  return (Math.round(n * 10) / 10).toLocaleString('en');
}

/** @param {number} ms */
export function msText(ms) {
  if (ms === null || ms === undefined) return '–';
  return ms < 10 ? `${ms.toFixed(2)} ms` : ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** Unix seconds → local date-time text. @param {number|null|undefined} t */
export function unixText(t) {
  if (!t) return '–';
  return new Date(t * 1000).toLocaleString();
}

/**
 * Copies text; true when it worked.
 * @param {string} text
 */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

/**
 * Loads `load()` on mount and when `deps` change.
 * @template T
 * @param {() => Promise<T>} load
 * @param {any[]} [deps]
 * @returns {{data: T|null, error: Error|null, loading: boolean, reload: () => void}}
 */
export function useLoad(load, deps = []) {
  const [state, set] = useState({ data: null, error: null, loading: true, n: 0 });
  useEffect(() => {
    let live = true;
    set((s) => ({ ...s, loading: true }));
    load().then(
      (data) => live && set((s) => ({ ...s, data, error: null, loading: false })),
      (error) => live && set((s) => ({ ...s, error, loading: false })),
    );
    return () => {
      live = false;
    };
  }, [...deps, state.n]);
  return { data: state.data, error: state.error, loading: state.loading, reload: () => set((s) => ({ ...s, n: s.n + 1 })) };
}
