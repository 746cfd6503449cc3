// The admin API from the browser: same origin, the session cookie
// (HttpOnly, SameSite=Strict, Path=/api). Same-origin fetches carry
// `Origin` and `Sec-Fetch-Site: same-origin`, which the API's CSRF rule
// asks of cookie-authenticated writes.

/** @typedef {{path: string, message: string}} FieldError */

/** An error answer of the API (`{error, message, status, details}`). */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {FieldError[]} [details]
   */
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    /** @type {FieldError[]} */
    this.details = details || [];
  }
}

/** @type {() => void} */
let onUnauthorized = () => {};

/**
 * What happens when a call answers 401 (the session ended).
 * @param {() => void} f
 */
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

/**
 * @typedef {object} CallOptions
 * @property {unknown} [body] JSON body
 * @property {string} [text] raw body (with `contentType`)
 * @property {string} [contentType]
 * @property {number|string} [ifMatch] config version the change is based on
 * @property {boolean} [quiet401] a 401 is the caller's business (sign-in)
 * @property {boolean} [raw] answer the Response's text instead of JSON
 * @property {boolean} [full] answer `{data, version}` (`X-Config-Version`)
 */

/**
 * Calls the API; resolves with the JSON body (or `null` for 204), rejects
 * with an {@link ApiError}.
 * @param {string} method
 * @param {string} path
 * @param {CallOptions} [opts]
 * @returns {Promise<any>}
 */
export async function api(method, path, opts = {}) {
  /** @type {Record<string, string>} */
  const headers = { Accept: 'application/json' };
  /** @type {BodyInit | undefined} */
  let body;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  } else if (opts.text !== undefined) {
    headers['Content-Type'] = opts.contentType || 'text/plain';
    body = opts.text;
  }
  if (opts.ifMatch !== undefined && opts.ifMatch !== null) headers['If-Match'] = `"${opts.ifMatch}"`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', `the gateway did not answer (${e instanceof Error ? e.message : e})`);
  }
  if (resp.status === 401 && !opts.quiet401) onUnauthorized();
  if (!resp.ok) {
    let err = { error: 'http_' + resp.status, message: `${resp.status} ${resp.statusText}`, details: [] };
    try {
      err = { ...err, ...(await resp.json()) };
    } catch {
      /* not JSON */
    }
    throw new ApiError(resp.status, err.error, err.message, err.details);
  }
  if (resp.status === 204) return null;
  const type = resp.headers.get('content-type') || '';
  const data = await (opts.raw || !type.includes('json') ? resp.text() : resp.json());
  if (opts.full) return { data, version: Number(resp.headers.get('x-config-version')) || null };
  return data;
}

/**
 * Maps an API field path (`routes[1].upstream`, `methods[0]`,
 * `rateLimit.max`) to the form field it belongs to (`upstream`,
 * `methods`, `rateLimit`).
 * @param {string} path
 */
export function fieldOf(path) {
  const p = path.replace(/^(routes|upstreams|webhooks)\[\d+\]\.?/, '');
  return p.split(/[.[]/)[0];
}

/**
 * The field errors of an error, by form field.
 * @param {unknown} e
 * @returns {Record<string, string>}
 */
export function fieldErrors(e) {
  /** @type {Record<string, string>} */
  const out = {};
  if (e instanceof ApiError) {
    for (const d of e.details) {
      const f = fieldOf(d.path);
      // "at line 1 column 32" points into the JSON the form sent, not at anything the user typed.
      const text = d.message.replace(/ at line \d+ column \d+$/, '');
      const msg = d.path && fieldOf(d.path) !== d.path ? `${d.path}: ${text}` : text;
      out[f] = out[f] ? `${out[f]}; ${msg}` : msg;
    }
  }
  return out;
}

/**
 * The message of anything thrown.
 * @param {unknown} e
 */
export function errText(e) {
  return e instanceof Error ? e.message : String(e);
}
