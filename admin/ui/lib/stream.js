// Server-Sent Events with their state shown, never hidden: connecting,
// live, reconnecting (with the number of reconnects), lagged (updates the
// server dropped because this client fell behind), stale (no event for a
// while), closed.
import { useEffect, useRef, useState } from '../vendor/htm-preact-standalone.js';
import { api } from './api.js';

/**
 * @typedef {object} StreamState
 * @property {'connecting'|'live'|'reconnecting'|'closed'} status
 * @property {number} reconnects
 * @property {number} missed updates the server dropped (`lagged`)
 * @property {number} lastEventAt ms since the epoch (0: none yet)
 * @property {string} node the node answering (from `connected`)
 */

/**
 * Opens `url` as an EventSource while the component lives; `handlers`
 * get each named event's parsed data.
 * @param {string} url
 * @param {Record<string, (data: any) => void>} handlers
 * @returns {StreamState}
 */
export function useEventStream(url, handlers) {
  const [state, setState] = useState(
    /** @type {StreamState} */ ({ status: 'connecting', reconnects: 0, missed: 0, lastEventAt: 0, node: '' }),
  );
  const h = useRef(handlers);
  h.current = handlers;
  useEffect(() => {
    let closed = false;
    /** @type {EventSource | null} */
    let es = null;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let retry;
    const open = () => {
      es = new EventSource(url);
      es.addEventListener('open', () => setState((s) => ({ ...s, status: 'live' })));
      es.addEventListener('error', () => {
        if (closed || !es) return;
        if (es.readyState === EventSource.CLOSED) {
          // The browser gave up (an error status such as 401 or 503).
          // Whether the session ended is asked once (a 401 goes to
          // sign-in; retrying with a dead cookie would count as failed
          // sign-ins); otherwise try again in a few seconds.
          setState((s) => ({ ...s, status: 'closed' }));
          api('GET', '/api/metrics')
            .then(() => 0, (/** @type {any} */ e) => e.status)
            .then((status) => {
              if (closed || status === 401) return;
              retry = setTimeout(() => {
                setState((s) => ({ ...s, status: 'reconnecting', reconnects: s.reconnects + 1 }));
                open();
              }, 3000);
            });
        } else {
          setState((s) => ({ ...s, status: 'reconnecting', reconnects: s.reconnects + 1 }));
        }
      });
      es.addEventListener('connected', (ev) => {
        const d = JSON.parse(/** @type {MessageEvent} */ (ev).data);
        setState((s) => ({ ...s, status: 'live', node: d.node, lastEventAt: Date.now() }));
        h.current.connected?.(d);
      });
      es.addEventListener('lagged', (ev) => {
        const d = JSON.parse(/** @type {MessageEvent} */ (ev).data);
        setState((s) => ({ ...s, missed: s.missed + (d.missed || 0), lastEventAt: Date.now() }));
        h.current.lagged?.(d);
      });
      for (const name of Object.keys(h.current)) {
        if (name === 'connected' || name === 'lagged') continue;
        es.addEventListener(name, (ev) => {
          setState((s) => (s.status === 'live' ? { ...s, lastEventAt: Date.now() } : { ...s, status: 'live', lastEventAt: Date.now() }));
          h.current[name]?.(JSON.parse(/** @type {MessageEvent} */ (ev).data));
        });
      }
    };
    open();
    return () => {
      closed = true;
      clearTimeout(retry);
      es?.close();
    };
  }, [url]);
  return state;
}

/**
 * Re-renders every `ms` milliseconds (for "updated 3 s ago").
 * @param {number} ms
 */
export function useTick(ms) {
  const [, set] = useState(0);
  useEffect(() => {
    const t = setInterval(() => set((n) => n + 1), ms);
    return () => clearInterval(t);
  }, [ms]);
}
