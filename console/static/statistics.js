// The statistics page: draws GET /api/v1/statistics (anonymised, rounded counts) as SVG bar charts
// of our own, a table of the same figures beside them, and points the CSV links at the same period.
import { ApiError, api, el } from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#58a6ff", "#f0a020", "#3fb950", "#d2a8ff", "#ff7b72", "#79c0ff", "#e3b341", "#56d4dd", "#a5d6ff"];
const words = (t) => String(t ?? "").replaceAll("_", " ");

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

/** Bars for each value of the first dimension, stacked by the second (if any). */
function chart(rows, dims) {
  const [x, stack] = dims;
  const xs = [...new Set(rows.map((r) => r[x]))].sort();
  const keys = stack ? [...new Set(rows.map((r) => r[stack]))].sort() : ["count"];
  const totals = xs.map((v) => rows.filter((r) => r[x] === v).reduce((n, r) => n + (r.count || 0), 0));
  const max = Math.max(1, ...totals);
  const W = 560, H = 260, left = 36, bottom = 44, top = 12;
  const band = (W - left - 8) / Math.max(1, xs.length);
  const scale = (H - bottom - top) / max;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, "aria-hidden": "true" });
  for (const t of [0, 0.5, 1]) {
    const y = H - bottom - t * max * scale;
    root.append(svg("line", { x1: left, x2: W - 4, y1: y, y2: y, stroke: "#2f3d4a" }));
    root.append(svg("text", { x: left - 4, y: y + 4, "text-anchor": "end", class: "axis" }, Math.round(t * max)));
  }
  xs.forEach((v, i) => {
    let y = H - bottom;
    const x0 = left + i * band + band * 0.15;
    keys.forEach((k, j) => {
      const n = stack ? rows.filter((r) => r[x] === v && r[stack] === k).reduce((s, r) => s + (r.count || 0), 0) : totals[i];
      if (!n) return;
      const h = n * scale;
      y -= h;
      const bar = svg("rect", { x: x0, y, width: band * 0.7, height: h, fill: COLOURS[j % COLOURS.length] });
      bar.append(svg("title", {}, `${words(v)}${stack ? " · " + words(k) : ""}: ${n}`));
      root.append(bar);
    });
    root.append(svg("text", { x: x0 + band * 0.35, y: H - bottom - totals[i] * scale - 3, "text-anchor": "middle", class: "value" }, totals[i]));
    root.append(svg("text", { x: x0 + band * 0.35, y: H - bottom + 14, "text-anchor": "middle", class: "bar-label" }, words(v).slice(0, 14)));
  });
  return { node: root, keys: stack ? keys : [] };
}

function table(data) {
  const dims = data.dimensions;
  return el(
    "table",
    { class: "list" },
    el("caption", {}, dims.map(words).join(" × ")),
    el("thead", {}, el("tr", {}, dims.map((d) => el("th", { scope: "col" }, words(d))), el("th", { scope: "col" }, "incidents"))),
    el("tbody", {}, data.rows.map((r) => el("tr", {}, dims.map((d) => el("td", {}, words(r[d]))), el("td", {}, r.count)))),
    el("tfoot", {}, el("tr", {}, el("th", { scope: "row", colspan: dims.length }, "total"), el("td", {}, data.total_suppressed ? `fewer than ${data.disclosure.suppressed_below}` : data.total))),
  );
}

function period() {
  const q = new URLSearchParams();
  const since = document.getElementById("s-since").value;
  const until = document.getElementById("s-until").value;
  if (since) q.set("since", new Date(`${since}-01T00:00:00`).toISOString());
  if (until) q.set("until", new Date(`${until}-01T00:00:00`).toISOString());
  return q;
}

async function draw() {
  const tables = document.getElementById("stats-tables");
  const note = document.getElementById("stats-note");
  tables.replaceChildren();
  note.textContent = "";
  for (const section of document.querySelectorAll(".chart")) {
    const dims = section.dataset.by.split(",");
    const q = period();
    dims.forEach((d) => q.append("by", d));
    const plot = section.querySelector(".plot");
    try {
      const data = await api("GET", `/api/v1/statistics?${q}`);
      const { node, keys } = chart(data.rows, dims);
      plot.replaceChildren(data.rows.length ? node : el("p", { class: "quiet" }, "Nothing to show: no count large enough to publish."));
      const legend = section.querySelector(".legend");
      if (legend) legend.replaceChildren(...keys.map((k, j) => el("li", {}, el("span", { class: "swatch", style: null, "data-colour": j }), words(k))));
      legend?.querySelectorAll(".swatch").forEach((s) => (s.style.background = COLOURS[Number(s.dataset.colour) % COLOURS.length]));
      section.querySelector("a.csv").href = `/api/v1/statistics?${q}&format=csv`;
      tables.append(table(data));
      note.textContent = data.disclosure.note;
      section.dataset.ready = "yes";
    } catch (error) {
      plot.replaceChildren(el("p", { class: "error" }, error instanceof ApiError ? error.message : "The service could not be reached."));
      section.dataset.ready = "error";
    }
  }
  document.body.dataset.statsReady = "yes";
}

document.getElementById("stats-period").addEventListener("submit", (event) => {
  event.preventDefault();
  draw();
});
draw();
