// Small helpers every page shares. Text from people and devices is only ever put into the page as
// text (textContent, attribute values), never parsed as HTML.

export const csrfToken = () => document.body.dataset.csrf || "";

/** Build an element: el("td", {class: "x", "aria-label": "…"}, "text", childNode, …). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** The JSON a page was rendered with (a non-executed <script type="application/json">). */
export function pageData(id) {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent) : null;
}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** A request the page makes by itself (a timer's refresh): it does not count as the person being
 * there, so an unattended screen still reaches its idle timeout. */
export function background(path) {
  return fetch(path, { credentials: "same-origin", redirect: "manual", headers: { "X-Console-Background": "1" } });
}

// The Idempotency-Key of each POST that has had no answer yet, by its path and body. A form sent
// again (a second click, a retry after the network failed) carries the key of the first, so the
// service answers with what the first made instead of making it twice. The session's CSRF token
// cannot be the key: it is the same for every form of the session, so a second, deliberate request
// with the same fields (another package of the same incident) would get the first one's answer, and
// two different requests under it would be refused. A key is dropped once the request is settled:
// what is sent after that is a new request, with a new key.
const unanswered = new Map();

function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes); // available without HTTPS, unlike crypto.randomUUID
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Call the API as the signed-in person: the session cookie goes by itself, the CSRF token with it. */
export async function api(method, path, body) {
  const headers = { "X-CSRF-Token": csrfToken(), Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", redirect: "manual" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const request = `${method} ${path}\n${init.body || ""}`;
  if (method === "POST") {
    if (!unanswered.has(request)) unanswered.set(request, newKey());
    headers["Idempotency-Key"] = unanswered.get(request);
  }
  const response = await fetch(path, init); // a network failure throws here and keeps the key
  let data = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) data = await response.json().catch(() => null);
  // Kept for a retry: a failure of the service (it may have made the thing before failing) and the
  // first request still being answered; any other answer settles the request.
  const unsettled = response.status >= 500 || (data && data.reason === "idempotency_key_in_use");
  if (!unsettled) unanswered.delete(request);
  if (!response.ok) {
    throw new ApiError(response.status, describeError(response.status, data), data);
  }
  return data;
}

function describeError(status, data) {
  // Every error is the one envelope {"error": a sentence, "reason": a stable code, "detail": ...}.
  if (status === 0 || status === 401) return "You are signed out. Sign in again to carry on.";
  if (status === 403 && (!data || data.reason === "forbidden")) return "Your role may not do this.";
  if (data && data.reason === "invalid_request" && Array.isArray(data.detail) && data.detail[0] && data.detail[0].msg) {
    return data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  if (data && typeof data.error === "string") return data.error;
  return `The service answered ${status}.`;
}

// The reader's own clock, always with its zone's name ("14:02:03 GMT", "2 Dec, 15:02:03 CET",
// "09:02:03 GMT-5"): a time shown in local time says so, beside pages that write UTC.
const timeFormat = new Intl.DateTimeFormat("en-GB", {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  timeZoneName: "short",
});
const dateTimeFormat = new Intl.DateTimeFormat("en-GB", {
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  timeZoneName: "short",
});

/** The reader's time zone by its name ("Europe/London"), as the browser has it. */
export const localZone = () => timeFormat.resolvedOptions().timeZone || "local time";

/** The short name of the reader's zone at the moment ``d`` ("GMT", "BST", "CET", "GMT-5"): summer
 * and winter differ, so a typed time is named by its own date's, not today's. */
export function zoneNameAt(d) {
  const part = timeFormat.formatToParts(d).find((p) => p.type === "timeZoneName");
  return part ? part.value : localZone();
}

/** A moment in the reader's own clock with its zone's name: "14:02:03 GMT" today, else "2 Dec, 14:02:03 GMT". */
export function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? timeFormat.format(d) : dateTimeFormat.format(d);
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const two = (n) => String(n).padStart(2, "0");

/** A moment as the workspace's pages write it (console/times.py's ``when``): "22 Nov 2026 10:00:00 UTC",
 * in a <time> that keeps the exact time; a dash for none. */
export function moment(iso) {
  const d = iso ? new Date(iso) : null;
  if (!d || Number.isNaN(d.getTime())) return iso || "—";
  const shown = `${two(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())} UTC`;
  return el("time", { datetime: d.toISOString() }, shown);
}

/** "4 s", "3 min 05 s", "2 h 10 min". */
export function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${String(m % 60).padStart(2, "0")} min`;
}

export function countdown(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export function words(text) {
  return String(text || "").replaceAll("_", " ");
}

export const KIND_NAMES = {
  sos: "SOS",
  amber: "Amber alert",
  man_down: "Man down",
  missed_checkin: "Missed check-in",
  low_battery: "Low battery",
  device_offline: "Device offline",
};

export function position(p, at) {
  if (!p) return "no position";
  const acc = p.accuracy_m !== null && p.accuracy_m !== undefined ? ` ±${Math.round(p.accuracy_m)} m` : "";
  const when = at ? ` · ${clock(at)}` : "";
  return `${Number(p.lat).toFixed(5)}, ${Number(p.lon).toFixed(5)}${acc}${when}`;
}

/** Polite announcements for screen readers (and a visible status line). */
export function announce(message, urgent = false) {
  const region = document.getElementById(urgent ? "announce-urgent" : "announce");
  if (!region) return;
  region.textContent = "";
  window.setTimeout(() => {
    region.textContent = message;
  }, 30);
}
