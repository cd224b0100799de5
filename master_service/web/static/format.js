// Human-readable units for the dashboard. Every function returns "—" for missing values
// so callers never have to special-case null.

export const DASH = "—";

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/** Percent with one decimal below 10 % and none above: "4.2 %", "37 %". */
export function percent(v) {
  if (!isNum(v)) return DASH;
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} %`;
}

/** Bytes in binary units (RAM and disk sizes are conventionally GiB). */
export function bytes(v) {
  if (!isNum(v)) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? Math.round(v) : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** Throughput in decimal units, as network tools show it: "830 B/s", "1.2 MB/s". */
export function rate(v) {
  if (!isNum(v)) return DASH;
  const units = ["B/s", "kB/s", "MB/s", "GB/s"];
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${i === 0 ? Math.round(v) : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** Degrees Celsius, or "—" when the board has no sensor. */
export function celsius(v) {
  return isNum(v) ? `${v.toFixed(1)} °C` : DASH;
}

/** Load average with two decimals. */
export function load(v) {
  return isNum(v) ? v.toFixed(2) : DASH;
}

/** A clock frequency: "1500 MHz". */
export function mhz(v) {
  return isNum(v) ? `${Math.round(v)} MHz` : DASH;
}

/** A plain count: "142". */
export function count(v) {
  return isNum(v) ? String(Math.round(v)) : DASH;
}

/** A duration as its two most significant units: "3 d 4 h", "5 min 2 s", "12 s". */
export function duration(s) {
  if (!isNum(s)) return DASH;
  s = Math.max(0, Math.floor(s));
  const parts = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
  const out = [];
  for (const [size, unit] of parts) {
    if (s >= size || (unit === "s" && out.length === 0)) {
      out.push(`${Math.floor(s / size)} ${unit}`);
      s %= size;
    }
    if (out.length === 2) break;
  }
  // "3 d 0 h" reads worse than "3 d".
  return out.filter((p, i) => i === 0 || !p.startsWith("0 ")).join(" ");
}

/** "12 s ago", "4 min ago", or "never". */
export function ago(s) {
  if (!isNum(s)) return "never";
  if (s < 1.5) return "just now";
  return `${duration(s).split(" ").slice(0, 2).join(" ")} ago`;
}

/** Wall-clock time for "last updated" and chart tooltips. */
export function clock(ts, withDate = false) {
  const d = new Date(ts * 1000);
  const opts = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  if (withDate) Object.assign(opts, { weekday: "short", day: "numeric", month: "short" });
  return d.toLocaleString(undefined, opts);
}

/** A rule's value or threshold: up to one decimal, "—" when absent: "81.5", "90". */
export function num(v) {
  if (!isNum(v)) return DASH;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}
