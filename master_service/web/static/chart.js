// Small SVG charts written for this page: a sparkline for node cards and a time-series chart
// with axes and a hover read-out for the node page. No dependencies, so the dashboard works
// on a Pi with no internet access.

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

const valid = (p) => p[1] !== null && Number.isFinite(p[1]);

/**
 * Split points into runs without gaps: a null value, or a time jump larger than a few steps
 * (a node that was off), ends a run so the line is not drawn across missing data.
 */
function runs(points, step) {
  const out = [];
  let run = [];
  let prevTs = null;
  for (const p of points) {
    const gap = prevTs !== null && step > 0 && p[0] - prevTs > step * 2.5;
    if (!valid(p) || gap) { if (run.length) out.push(run); run = []; }
    if (valid(p)) run.push(p);
    prevTs = p[0];
  }
  if (run.length) out.push(run);
  return out;
}

/** Typical spacing of points, used when the server did not say which step it chose. */
function guessStep(points) {
  const diffs = [];
  for (let i = 1; i < points.length; i++) diffs.push(points[i][0] - points[i - 1][0]);
  diffs.sort((a, b) => a - b);
  return diffs.length ? diffs[Math.floor(diffs.length / 2)] : 0;
}

function pathFor(points, step, x, y) {
  return runs(points, step)
    .map((run) => {
      // A lone point still deserves a visible mark: draw a tiny horizontal stroke.
      if (run.length === 1) run = [run[0], [run[0][0], run[0][1]]];
      return run.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    })
    .join("");
}

/** Draw (or redraw) a CPU sparkline into an existing <svg>; 0–100 % on a 100×24 box. */
export function drawSparkline(svg, points, since, until) {
  const pts = points.filter(valid);
  svg.dataset.points = String(pts.length);
  svg.replaceChildren();
  if (!pts.length) return;
  const span = Math.max(1, until - since);
  const x = (t) => ((t - since) / span) * 100;
  const y = (v) => 23 - (Math.min(100, Math.max(0, v)) / 100) * 22;
  const step = guessStep(points);
  const line = pathFor(points, step, x, y);
  // The area under each run, closed down to the baseline.
  const area = runs(points, step)
    .map((r) => `M${x(r[0][0]).toFixed(1)},24` + r.map((p) => `L${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("") + `L${x(r[r.length - 1][0]).toFixed(1)},24Z`)
    .join("");
  svg.append(svgEl("path", { d: area, class: "spark-area" }), svgEl("path", { d: line, class: "spark-line" }));
}

/** Round numbers for an axis: 1, 2 or 5 times a power of ten. */
function niceTicks(min, max, count) {
  const raw = (max - min) / count || 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  const lo = Math.floor(min / step + 1e-9) * step, hi = Math.ceil(max / step - 1e-9) * step;
  for (let v = lo; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
  return { ticks, lo, hi };
}

const TIME_STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800];

/** Tick times aligned to the local clock (so "14:00", not "13:47"). */
function timeTicks(since, until, maxTicks) {
  const step = TIME_STEPS.find((s) => (until - since) / s <= maxTicks) || 172800;
  const tz = new Date(since * 1000).getTimezoneOffset() * 60;
  const ticks = [];
  for (let t = Math.ceil((since - tz) / step) * step + tz; t <= until; t += step) ticks.push(t);
  return { ticks, step };
}

/** "14:00" within a day; "Mon 23" at midnights on longer spans. */
function timeLabel(ts, span) {
  const d = new Date(ts * 1000);
  if (span > 86400 && d.getHours() === 0 && d.getMinutes() === 0) {
    return `${d.toLocaleDateString(undefined, { weekday: "short" })} ${d.getDate()}`;
  }
  return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

function nearest(points, ts) {
  let lo = 0, hi = points.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid][0] < ts) lo = mid + 1; else hi = mid;
  }
  if (lo > 0 && Math.abs(points[lo - 1][0] - ts) < Math.abs(points[lo][0] - ts)) lo--;
  return points[lo];
}

const resizer = new ResizeObserver((entries) => {
  // Redraw only when the width really changed; a redraw never changes the width, so no loop.
  for (const e of entries) {
    const box = e.target;
    if (box._chart && Math.round(e.contentRect.width) !== box._w) renderChart(box, box._chart);
  }
});

/**
 * Render a time-series chart into `box` (a div.chart).
 * opts: {series: [{name, cls, points}], format(v), axisFormat?(v), yMin?, yMax?, since, until, step?, label}
 * Fixed yMin/yMax (e.g. 0–100 %) keep charts comparable; otherwise the range follows the data.
 */
export function renderChart(box, opts) {
  const first = !box._chart;
  box._chart = opts;
  if (first) resizer.observe(box);
  box._w = Math.round(box.clientWidth);
  const W = Math.max(240, box._w || 600);
  const H = 190, L = 58, R = 12, T = 10, B = 24;
  const { series, format, since, until } = opts;
  const all = series.flatMap((s) => s.points.filter(valid).map((p) => p[1]));
  box.dataset.points = String(all.length);

  let lo = opts.yMin ?? Math.min(...all, 0);
  let hi = opts.yMax ?? Math.max(...all, 1);
  if (opts.yMax === undefined && all.length) hi = Math.max(...all) * 1.1 || 1;
  if (opts.yMin === undefined && all.length && Math.min(...all) > 0) lo = Math.max(0, Math.min(...all) - (hi - Math.min(...all)) * 0.2);
  const yt = niceTicks(lo, hi, 4);
  if (opts.yMin === undefined) lo = yt.lo;
  if (opts.yMax === undefined) hi = yt.hi;

  const x = (t) => L + ((t - since) / Math.max(1, until - since)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (H - T - B);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });

  const grid = svgEl("g", { class: "grid" });
  for (const v of yt.ticks.filter((v) => v >= lo && v <= hi)) {
    grid.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const t = svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" });
    t.textContent = (opts.axisFormat || format)(v);
    grid.append(t);
  }
  const tt = timeTicks(since, until, Math.floor((W - L - R) / 80));
  for (const ts of tt.ticks) {
    grid.append(svgEl("line", { x1: x(ts), x2: x(ts), y1: T, y2: H - B, class: "v" }));
    const t = svgEl("text", { x: x(ts), y: H - 6, "text-anchor": "middle" });
    t.textContent = timeLabel(ts, until - since);
    grid.append(t);
  }
  svg.append(grid);

  for (const s of series) {
    // Buckets can be sparser than the step (a node reporting every 30 s into 12 s buckets):
    // only a spacing well beyond the usual one is a gap.
    const step = Math.max(opts.step || 0, guessStep(s.points));
    svg.append(svgEl("path", { d: pathFor(s.points, step, x, y), class: `line ${s.cls}` }));
  }

  // Hover read-out: a cursor line and one dot per series, values in a tooltip.
  const cursor = svgEl("line", { y1: T, y2: H - B, class: "cursor", visibility: "hidden" });
  const dots = series.map((s) => svgEl("circle", { r: 3.5, class: `dot ${s.cls}`, visibility: "hidden" }));
  svg.append(cursor, ...dots);
  const tip = document.createElement("div");
  tip.className = "tip";
  tip.hidden = true;

  const move = (ev) => {
    const rect = svg.getBoundingClientRect();
    const px = ((ev.clientX - rect.left) / rect.width) * W;
    const ts = since + ((px - L) / (W - L - R)) * (until - since);
    const lines = [];
    let shownTs = null;
    series.forEach((s, i) => {
      const pts = s.points.filter(valid);
      const p = pts.length ? nearest(pts, ts) : null;
      dots[i].setAttribute("visibility", p ? "visible" : "hidden");
      if (!p) return;
      dots[i].setAttribute("cx", x(p[0]));
      dots[i].setAttribute("cy", y(p[1]));
      shownTs ??= p[0];
      lines.push(`${series.length > 1 ? s.name + " " : ""}${format(p[1])}`);
    });
    if (shownTs === null) return;
    cursor.setAttribute("x1", x(shownTs));
    cursor.setAttribute("x2", x(shownTs));
    cursor.setAttribute("visibility", "visible");
    tip.textContent = `${new Date(shownTs * 1000).toLocaleString(undefined, { weekday: "short", hour: "2-digit", minute: "2-digit" })} · ${lines.join(" · ")}`;
    tip.hidden = false;
    const left = (x(shownTs) / W) * rect.width;
    tip.style.left = `${Math.min(Math.max(left, 70), rect.width - 70)}px`;
  };
  const leave = () => {
    tip.hidden = true;
    cursor.setAttribute("visibility", "hidden");
    dots.forEach((d) => d.setAttribute("visibility", "hidden"));
  };
  svg.addEventListener("pointermove", move);
  svg.addEventListener("pointerdown", move);
  svg.addEventListener("pointerleave", leave);

  // Legend with min/max/last, which also serves readers who cannot hover.
  const legend = document.createElement("ul");
  legend.className = "legend";
  const summary = [];
  for (const s of series) {
    const vals = s.points.filter(valid).map((p) => p[1]);
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = `swatch ${s.cls}`;
    const stats = vals.length
      ? `last ${format(vals[vals.length - 1])} · min ${format(Math.min(...vals))} · max ${format(Math.max(...vals))}`
      : "no data in this window";
    li.append(sw, `${s.name}: ${stats}`);
    legend.append(li);
    summary.push(`${s.name} ${stats}`);
  }
  svg.setAttribute("aria-label", `${opts.label}: ${summary.join("; ")}`);
  box.replaceChildren(svg, tip, legend);
}
