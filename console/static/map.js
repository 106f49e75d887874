// The map: open alarms (with accuracy circles and trails) and devices' last known positions.
// Leaflet comes from an installed package. With a tile source configured (EVIDENCE_MAP_TILE_URL)
// it is drawn on those tiles; without one, the same positions are drawn on a plain plotted view
// (no background, a scale bar and a latitude/longitude grid), so the map works with no internet.
import { KIND_NAMES, background, clock, el, pageData, words } from "./common.js";

const data = pageData("map-data");
const L = window.L;
const COLOURS = { red: "#ff4d4d", amber: "#f0a020", warning: "#6aa7d8" };
const mapEl = document.getElementById("map");
const directory = data.directory || { devices: {}, staff: {}, states: {}, visits: {} };

const map = L.map(mapEl, { zoomControl: true, attributionControl: Boolean(data.tiles && data.tiles.url) });
if (data.tiles && data.tiles.url) {
  L.tileLayer(data.tiles.url, { attribution: data.tiles.attribution || "", maxZoom: 19 }).addTo(map);
} else {
  mapEl.classList.add("plain");
}
L.control.scale({ imperial: false }).addTo(map);

const grid = L.layerGroup().addTo(map);
function drawGrid() {
  if (data.tiles && data.tiles.url) return;
  grid.clearLayers();
  const b = map.getBounds();
  const span = Math.max(b.getNorth() - b.getSouth(), b.getEast() - b.getWest());
  const step = [10, 5, 1, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001].find((s) => span / s >= 4) || 0.0001;
  const style = { color: "#2f3d4a", weight: 1, interactive: false };
  for (let lat = Math.floor(b.getSouth() / step) * step; lat <= b.getNorth(); lat += step) {
    grid.addLayer(L.polyline([[lat, b.getWest()], [lat, b.getEast()]], style));
  }
  for (let lon = Math.floor(b.getWest() / step) * step; lon <= b.getEast(); lon += step) {
    grid.addLayer(L.polyline([[b.getSouth(), lon], [b.getNorth(), lon]], style));
  }
}
map.on("moveend zoomend", drawGrid);

const layers = { devices: L.layerGroup().addTo(map), alarms: L.layerGroup().addTo(map) };

function wearerName(a) {
  const device = directory.devices[a.device_id] || {};
  const staffId = a.wearer || device.staff_id;
  return (staffId && directory.staff[staffId] && directory.staff[staffId].name) || staffId || a.device_id;
}

function tooltip(parts) {
  // Leaflet would parse a string tooltip as HTML: give it a text-only element instead.
  return el("span", {}, ...parts.flatMap((p, i) => (i ? [el("br"), p] : [p])));
}

function drawDevices(positions) {
  layers.devices.clearLayers();
  for (const p of positions) {
    if (!p.position) continue;
    const at = [p.position.lat, p.position.lon];
    if (p.position.accuracy_m) {
      layers.devices.addLayer(L.circle(at, { radius: p.position.accuracy_m, color: "#8896a3", weight: 1, fillOpacity: 0.05, interactive: false }));
    }
    layers.devices.addLayer(
      L.circleMarker(at, { radius: 4, color: "#c9d4de", weight: 1, fillColor: "#8896a3", fillOpacity: 0.9 }).bindTooltip(
        tooltip([`${p.device_id}${p.staff_id ? " · " + p.staff_id : ""}`, `${p.presence || ""} · fix ${clock(p.position.at)}`]),
      ),
    );
  }
}

const alarmMarkers = new Map();

const SEVERITY = { red: 0, amber: 1, warning: 2 };

function drawAlarms(alarms, trails) {
  alarms = [...alarms].sort((a, b) => (SEVERITY[a.severity] ?? 9) - (SEVERITY[b.severity] ?? 9) || Date.parse(a.raised_at) - Date.parse(b.raised_at));
  layers.alarms.clearLayers();
  alarmMarkers.clear();
  for (const a of alarms) {
    const colour = COLOURS[a.severity] || "#fff";
    const trail = (trails && trails[a.id]) || (a.position ? [{ ...a.position, at: a.occurred_at }] : []);
    if (!trail.length) continue;
    const latest = trail[trail.length - 1];
    if (trail.length > 1) {
      layers.alarms.addLayer(L.polyline(trail.map((p) => [p.lat, p.lon]), { color: colour, weight: 3, opacity: 0.8, dashArray: "6 4" }));
      for (const p of trail.slice(0, -1)) {
        layers.alarms.addLayer(L.circleMarker([p.lat, p.lon], { radius: 3, color: colour, weight: 1, fillOpacity: 0.6 }).bindTooltip(tooltip([clock(p.at)])));
      }
    }
    if (latest.accuracy_m) {
      layers.alarms.addLayer(L.circle([latest.lat, latest.lon], { radius: latest.accuracy_m, color: colour, weight: 2, fillOpacity: 0.15 }));
    }
    const marker = L.circleMarker([latest.lat, latest.lon], { radius: 9, color: "#fff", weight: 2, fillColor: colour, fillOpacity: 1 }).bindTooltip(
      tooltip([
        `${KIND_NAMES[a.kind] || words(a.kind)}: ${wearerName(a)}`,
        `${words(a.status)} · fix ${clock(latest.at)}${latest.accuracy_m ? ` ±${Math.round(latest.accuracy_m)} m` : ""}`,
      ]),
      { permanent: data.mode === "alarm" || alarms.length <= 6, direction: "right" },
    );
    if (data.mode !== "alarm") marker.on("click", () => window.location.assign(`/alarms/${encodeURIComponent(a.id)}`));
    layers.alarms.addLayer(marker);
    alarmMarkers.set(a.id, { marker, latest });
  }
  const list = document.getElementById("map-alarms");
  if (list) {
    list.replaceChildren(
      ...alarms.map((a) => {
        const item = alarmMarkers.get(a.id);
        const button = el("button", { type: "button", class: "link" }, `${a.severity.toUpperCase()} ${KIND_NAMES[a.kind] || words(a.kind)}: ${wearerName(a)}`);
        button.addEventListener("click", () => item && map.setView([item.latest.lat, item.latest.lon], Math.max(map.getZoom(), 16)));
        return el("li", {}, button, " ", el("a", { href: `/alarms/${encodeURIComponent(a.id)}` }, "open"), item ? "" : " (no position)");
      }),
    );
    if (!alarms.length) list.append(el("li", {}, "None."));
  }
}

function fit(alarms, trails, positions) {
  const points = [];
  for (const a of alarms) for (const p of (trails && trails[a.id]) || (a.position ? [a.position] : [])) points.push([p.lat, p.lon]);
  if (!points.length) for (const p of positions) if (p.position) points.push([p.position.lat, p.position.lon]);
  if (points.length) map.fitBounds(L.latLngBounds(points).pad(0.3), { maxZoom: 17 });
  else map.setView([52.5, -1.5], 6);
}

let current = data;
drawDevices(current.positions || []);
drawAlarms(current.alarms || [], current.trails);
fit(current.alarms || [], current.trails, current.positions || []);
drawGrid();
mapEl.dataset.ready = "yes";

if (data.mode === "overview") {
  const updated = document.getElementById("map-updated");
  async function refresh() {
    try {
      const response = await background("/map/data.json");
      if (!response.ok) throw new Error(String(response.status));
      current = await response.json();
      Object.assign(directory.devices, current.directory.devices);
      Object.assign(directory.staff, current.directory.staff);
      drawDevices(current.positions);
      drawAlarms(current.alarms, current.trails);
      updated.textContent = `Updated ${clock(new Date().toISOString())}`;
    } catch {
      updated.textContent = `Could not update at ${clock(new Date().toISOString())}: showing older positions.`;
    }
  }
  // New and changed alarms show at once (the live stream); positions and trails every 10 s.
  const source = new EventSource(`/api/v1/alarms/stream?after=${encodeURIComponent(data.cursor || 0)}`);
  let pending = null;
  source.addEventListener("alarm", () => {
    if (!pending) pending = window.setTimeout(() => ((pending = null), refresh()), 300);
  });
  window.setInterval(refresh, 10000);
  updated.textContent = `Updated ${clock(data.server_time)}`;
}
