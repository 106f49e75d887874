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

const alarmsById = new Map((data.alarms || []).map((a) => [a.id, a]));
const trails = { ...(data.trails || {}) };
const positions = new Map((data.positions || []).map((p) => [p.device_id, p]));

function draw() {
  drawDevices([...positions.values()]);
  drawAlarms([...alarmsById.values()], trails);
}

draw();
fit([...alarmsById.values()], trails, [...positions.values()]);
drawGrid();
mapEl.dataset.ready = "yes";

if (data.mode === "overview") {
  // Live from the board's stream (``GET /api/v1/alarms/stream``): a new or changed alarm, and each
  // point of an open alarm's trail (a ``moved`` change), is drawn as it arrives. Devices with no
  // alarm open are not on the stream: their last known positions are fetched every 30 s.
  const updated = document.getElementById("map-updated");
  let lastEventId = Number(data.cursor || 0);
  let source = null;
  let lostAt = null;
  let redraw = null;
  const asked = new Set();

  function soon() {
    if (!redraw) redraw = window.requestAnimationFrame(() => ((redraw = null), draw()));
  }

  async function lookUp(deviceId) {
    if (asked.has(deviceId)) return;
    asked.add(deviceId);
    try {
      const response = await background(`/board/directory.json?device=${encodeURIComponent(deviceId)}`);
      if (!response.ok) return;
      const found = await response.json();
      Object.assign(directory.devices, found.devices);
      Object.assign(directory.staff, found.staff);
      soon();
    } catch {
      asked.delete(deviceId);
    }
  }

  function onEvent(event) {
    const id = Number(event.lastEventId);
    if (id && id <= lastEventId) return; // replayed after a reconnect: already drawn
    if (id) lastEventId = id;
    const change = JSON.parse(event.data);
    const a = change.alarm;
    if (change.change === "moved") {
      if (!alarmsById.has(a.id) || !change.position) return; // resolved meanwhile: its trail has ended
      const trail = trails[a.id] || (a.position ? [{ ...a.position, at: a.occurred_at }] : []);
      trail.push(change.position);
      trails[a.id] = trail;
      const known = positions.get(a.device_id) || { device_id: a.device_id, staff_id: a.wearer, site: a.site };
      positions.set(a.device_id, { ...known, position: change.position });
    } else if (a.status === "resolved") {
      alarmsById.delete(a.id);
      delete trails[a.id];
    } else {
      alarmsById.set(a.id, a);
      if (!trails[a.id] && a.position) trails[a.id] = [{ ...a.position, at: a.occurred_at }];
      if (!directory.devices[a.device_id]) lookUp(a.device_id);
    }
    mapEl.dataset.lastEvent = String(lastEventId);
    mapEl.dataset.trailPoints = String(Object.values(trails).reduce((n, t) => n + t.length, 0));
    updated.textContent = `Live · last change ${clock(change.at)}`;
    soon();
  }

  function connect() {
    source = new EventSource(`/api/v1/alarms/stream?after=${encodeURIComponent(lastEventId)}`);
    source.addEventListener("open", () => {
      mapEl.dataset.connection = "live";
      if (lostAt) updated.textContent = `Live again at ${clock(new Date().toISOString())}: caught up on what was missed.`;
      else if (!updated.textContent) updated.textContent = "Live";
      lostAt = null;
    });
    source.addEventListener("alarm", onEvent);
    source.addEventListener("error", () => {
      mapEl.dataset.connection = "lost";
      if (!lostAt) {
        lostAt = Date.now();
        updated.textContent = `Connection lost at ${clock(new Date().toISOString())}: changes are NOT arriving. Reconnecting…`;
      }
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        window.setTimeout(connect, 3000); // from the last change drawn: nothing is missed
      }
    });
  }

  async function refreshDevices() {
    try {
      const response = await background("/map/data.json");
      if (!response.ok) return;
      const fresh = await response.json();
      for (const p of fresh.positions) {
        const known = positions.get(p.device_id);
        // A fix that came on the stream may be newer than the page's read of the devices.
        if (!known || !known.position || Date.parse(p.position.at) >= Date.parse(known.position.at)) positions.set(p.device_id, p);
      }
      soon();
    } catch {
      // The next round tries again; alarms keep arriving on the stream meanwhile.
    }
  }

  connect();
  window.setInterval(refreshDevices, 30000);
  updated.textContent = `Live · drawn at ${clock(data.server_time)}`;
}
