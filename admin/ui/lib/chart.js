// A uPlot time-series chart: created once, fed new data on every render,
// resized with its box, redrawn in the other palette when the system
// theme changes.
import { html, useEffect, useRef, useState } from '../vendor/htm-preact-standalone.js';
import uPlot from '../vendor/uPlot.esm.js';

/** @param {string} name */
function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
}

/** Re-renders when the system switches between light and dark. */
function useScheme() {
  const mq = window.matchMedia('(prefers-color-scheme: dark)');
  const [dark, setDark] = useState(mq.matches);
  useEffect(() => {
    const f = () => setDark(mq.matches);
    mq.addEventListener('change', f);
    return () => mq.removeEventListener('change', f);
  }, []);
  return dark;
}

/**
 * @param {{title: string, label: string, series: {label: string, color: string, scale?: string}[],
 *   data: (number|null)[][], unit?: string, testid?: string, height?: number, time?: boolean, span?: number,
 *   xRange?: [number, number]}} p
 *   `span`: seconds always shown on the x axis, up to the newest point;
 *   `xRange`: the x axis' fixed [min, max] instead;
 *   `data[0]`: x values (Unix seconds), then one array per series;
 *   `color`: a CSS custom property name (`--c1`).
 */
export function Chart({ title, label, series, data, unit = '', testid, height = 170, time = true, span = 0, xRange }) {
  const box = useRef(/** @type {HTMLDivElement|null} */ (null));
  const plot = useRef(/** @type {uPlot|null} */ (null));
  const dark = useScheme();
  const xRangeRef = useRef(/** @type {[number, number]|undefined} */ (xRange));
  xRangeRef.current = xRange;

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const axis = cssVar('--muted');
    // One y axis per scale: the first on the left, the second on the right.
    const scales = [...new Set(series.map((s) => s.scale || 'y'))];
    const grid = cssVar('--grid');
    /** @type {uPlot.Options} */
    const opts = {
      width: Math.max(200, el.clientWidth),
      height,
      scales: {
        // The x range is always set from the data (uPlot pads a single
        // point by years otherwise).
        x: {
          time,
          range: (/** @type {uPlot} */ u) => {
            if (xRangeRef.current) return xRangeRef.current;
            const xs = /** @type {number[]} */ (u.data[0] || []);
            const last = xs.length ? xs[xs.length - 1] : Date.now() / 1000;
            const first = xs.length ? xs[0] : last - 60;
            return span ? [last - span, last] : [Math.min(first, last - 60), last];
          },
        },
      },
      series: [
        { label: time ? 'Time' : 'x' },
        ...series.map((s) => ({
          label: s.label,
          scale: s.scale || 'y',
          stroke: cssVar(s.color),
          width: 2,
          value: (/** @type {uPlot} */ _u, /** @type {number|null} */ v) => (v === null || v === undefined ? '–' : `${v.toFixed(2)}${unit}`),
        })),
      ],
      axes: [
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } },
        ...scales.map((sc, i) =>
          i === 0
            ? { scale: sc, stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, size: 56 }
            : { scale: sc, side: 1, stroke: axis, grid: { show: false }, ticks: { stroke: grid, width: 1 }, size: 56 },
        ),
      ],
      legend: { show: true, live: true },
      cursor: { drag: { x: false, y: false } },
    };
    const u = new uPlot(opts, /** @type {uPlot.AlignedData} */ (data), el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [dark]);

  useEffect(() => {
    plot.current?.setData(/** @type {uPlot.AlignedData} */ (data));
  }, [data]);

  const points = data[0]?.length || 0;
  return html`<figure class="chart" data-testid=${testid} data-points=${points}>
    <figcaption>${title}</figcaption>
    <div ref=${box} class="chart-box" role="img" aria-label=${label}></div>
  </figure>`;
}
