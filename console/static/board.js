// The live alarm board: the open alarms the page was drawn with, kept current from the API's
// Server-Sent Events stream (/api/v1/alarms/stream). Each event carries the alarm as it now stands,
// so applying one is idempotent; after a dropped connection the browser (or we, when it gave up)
// reconnects from the last event id seen and the stream replays everything missed.
import {
  ApiError,
  KIND_NAMES,
  announce,
  api,
  background,
  clock,
  countdown,
  duration,
  el,
  pageData,
  position,
  words,
} from "./common.js";

const SEVERITY = { red: 0, amber: 1, warning: 2 };
const data = pageData("board-data");
const board = document.getElementById("board");
const canAct = board.dataset.canAct === "yes";
const rowsEl = document.getElementById("alarm-rows");
const emptyEl = document.getElementById("empty");
const connectionEl = document.getElementById("connection");
const lostEl = document.getElementById("lost");
const unclaimedEl = document.getElementById("unclaimed");
const statusEl = document.getElementById("action-status");
const countsEl = document.getElementById("counts");
const clockOffset = Date.parse(data.server_time) - Date.now(); // server time = Date.now() + offset
const now = () => Date.now() + clockOffset;

const alarms = new Map(); // id -> alarm (as the stream shows it)
const rows = new Map(); // id -> <tr>
const directory = { devices: {}, staff: {}, states: {}, visits: {} };
const asked = new Set(); // device ids whose names were fetched
let order = []; // ids, in board order
// Rows on screen. The once-a-second tick touches only these: a text changed off screen still costs a
// layout of the whole table, every second, for every open alarm. A row coming into view is brought
// up to date as it appears.
const onScreen = new Set();
const visibility =
  "IntersectionObserver" in window
    ? new IntersectionObserver((entries) => {
        for (const entry of entries) {
          const id = entry.target.dataset.alarm;
          if (!entry.isIntersecting) {
            onScreen.delete(id);
            continue;
          }
          onScreen.add(id);
          if (alarms.has(id)) tickRow(entry.target, alarms.get(id));
        }
      })
    : null;
let selected = null;
let lastEventId = data.cursor;

// Instrumentation the benchmark reads: when each alarm was first drawn, how long each event took.
const timings = { firstRender: null, drawn: [], applyMs: [] };
window.boardTimings = timings;

function mergeDirectory(more) {
  for (const key of Object.keys(directory)) Object.assign(directory[key], more[key] || {});
}

// ------------------------------------------------------------------ ordering

/** Nobody has taken it: never acknowledged, or it needs taking again (an acknowledged amber alert
 * that has since turned red). An escalation does not take it: someone still must. */
function unclaimed(a) {
  return !a.acknowledged_at || Boolean(a.ack_due_at);
}

function compare(a, b) {
  return (
    (SEVERITY[a.severity] ?? 9) - (SEVERITY[b.severity] ?? 9) ||
    Number(!unclaimed(a)) - Number(!unclaimed(b)) ||
    Date.parse(a.raised_at) - Date.parse(b.raised_at) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  );
}

// ------------------------------------------------------------------ one row

function who(a) {
  const device = directory.devices[a.device_id] || {};
  const staffId = a.wearer || device.staff_id;
  const staff = staffId ? directory.staff[staffId] : null;
  const name = staff ? staff.name : staffId || "Unassigned device";
  const group = staff ? words(staff.group) : "";
  return { name, group, device: a.device_id };
}

function where(a) {
  const device = directory.devices[a.device_id] || {};
  const visit = directory.visits[a.device_id];
  const state = directory.states[a.device_id];
  let pos = a.position;
  let at = a.occurred_at;
  if (state && state.position && (!pos || Date.parse(state.position.at) > Date.parse(at))) {
    pos = state.position;
    at = state.position.at;
  }
  const place = [a.site || device.site, device.name, visit && visit.note].filter(Boolean).join(" · ");
  return { place: place || "site not known", pos: position(pos, at) };
}

function whatText(a) {
  const kind = KIND_NAMES[a.kind] || words(a.kind);
  if (a.kind === "amber" && a.severity === "amber" && a.amber_deadline) {
    return { kind, detail: `turns red in ${countdown(Date.parse(a.amber_deadline) - now())}` };
  }
  const detail = [];
  if (a.kind === "amber" && a.severity === "red") detail.push("timer ran out");
  if (a.reason) detail.push(words(a.reason));
  if (a.cancel_requested_at) detail.push("wearer asked to cancel");
  if (a.condition_cleared_at) detail.push("condition cleared");
  if (a.note) detail.push(`“${a.note}”`);
  return { kind, detail: detail.join(" · ") };
}

function stateText(a) {
  if (a.status === "escalated") {
    const why = a.escalation_reason === "ack_timeout" ? "nobody took it in time" : `by ${actor(a.escalated_by)}`;
    return a.acknowledged_by && !a.ack_due_at ? `Escalated ${why}; taken by ${actor(a.acknowledged_by)}` : `Escalated: ${why}`;
  }
  if (a.status === "acknowledged" && !a.ack_due_at) return `Taken by ${actor(a.acknowledged_by)} at ${clock(a.acknowledged_at)}`;
  if (a.ack_due_at) return `Nobody has it: escalates in ${countdown(Date.parse(a.ack_due_at) - now())}`;
  return "Nobody has it";
}

function actor(text) {
  return String(text || "").replace(/^user:/, "");
}

function sinceText(a) {
  return `${duration(now() - Date.parse(a.raised_at))} (${clock(a.raised_at)})`;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function buildRow(a) {
  const tr = el("tr", { tabindex: "-1", "data-alarm": a.id });
  const kind = el("strong", { class: "kind" });
  const detail = el("span", { class: "detail" });
  const link = el("a", { href: `/alarms/${encodeURIComponent(a.id)}`, class: "open", tabindex: "-1" }, kind);
  tr.append(
    el("td", { class: "what" }, el("span", { class: "sev" }), link, detail),
    el("td", { class: "who" }, el("span", { class: "name" }), el("span", { class: "sub" })),
    el("td", { class: "where" }, el("span", { class: "place" }), el("span", { class: "sub pos" })),
    el("td", { class: "since" }),
    el("td", { class: "state" }),
  );
  if (canAct) {
    tr.append(
      el(
        "td",
        { class: "actions" },
        el("button", { type: "button", "data-act": "acknowledge", class: "primary" }, "Acknowledge"),
        el("button", { type: "button", "data-act": "escalate" }, "Escalate"),
        el("button", { type: "button", "data-act": "resolve" }, "Resolve"),
      ),
    );
  }
  tr.parts = {
    sev: tr.querySelector(".sev"),
    kind,
    detail,
    name: tr.querySelector(".who .name"),
    whoSub: tr.querySelector(".who .sub"),
    place: tr.querySelector(".where .place"),
    pos: tr.querySelector(".where .pos"),
    since: tr.querySelector(".since"),
    state: tr.querySelector(".state"),
    ack: tr.querySelector('[data-act="acknowledge"]'),
    escalate: tr.querySelector('[data-act="escalate"]'),
  };
  tr.addEventListener("click", (event) => {
    if (event.target.closest("button,a")) return;
    select(a.id, true);
  });
  if (visibility) visibility.observe(tr);
  return tr;
}

function fillRow(tr, a) {
  const what = whatText(a);
  const w = who(a);
  const place = where(a);
  const p = tr.parts;
  tr.dataset.severity = a.severity;
  tr.dataset.status = a.status;
  tr.classList.toggle("unclaimed", unclaimed(a));
  setText(p.sev, a.severity.toUpperCase());
  setText(p.kind, what.kind);
  setText(p.detail, what.detail);
  setText(p.name, w.name);
  setText(p.whoSub, [w.group, w.device].filter(Boolean).join(" · "));
  setText(p.place, place.place);
  setText(p.pos, place.pos);
  setText(p.since, sinceText(a));
  setText(p.state, stateText(a));
  const label = `${a.severity} ${what.kind}${what.detail ? ", " + what.detail : ""}: ${w.name}, ${place.place}; ${stateText(a)}; since ${clock(a.raised_at)}`;
  if (tr.getAttribute("aria-label") !== label) tr.setAttribute("aria-label", label);
  if (canAct) {
    p.ack.disabled = Boolean(a.acknowledged_at) && !a.ack_due_at;
    p.escalate.disabled = a.status === "escalated";
  }
}

/** Once a second: only what the clock changes (age, an amber countdown, time left to escalation). */
function tickRow(tr, a) {
  const p = tr.parts;
  setText(p.since, sinceText(a));
  if (a.kind === "amber" && a.severity === "amber" && a.amber_deadline) setText(p.detail, whatText(a).detail);
  if (a.ack_due_at) setText(p.state, stateText(a));
}

// ------------------------------------------------------------------ the list

function place(id) {
  const a = alarms.get(id);
  const tr = rows.get(id);
  order = order.filter((x) => x !== id);
  let lo = 0;
  let hi = order.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compare(alarms.get(order[mid]), a) < 0) lo = mid + 1;
    else hi = mid;
  }
  order.splice(lo, 0, id);
  const next = order[lo + 1] ? rows.get(order[lo + 1]) : null;
  if (tr.nextSibling !== next || tr.parentNode !== rowsEl) rowsEl.insertBefore(tr, next);
}

function upsert(a) {
  const known = alarms.has(a.id);
  if (a.status === "resolved") {
    if (known) remove(a.id);
    return false;
  }
  alarms.set(a.id, a);
  let tr = rows.get(a.id);
  if (!tr) {
    tr = buildRow(a);
    rows.set(a.id, tr);
  }
  fillRow(tr, a);
  place(a.id);
  if (!directory.devices[a.device_id]) lookUp(a.device_id);
  return !known;
}

function remove(id) {
  const tr = rows.get(id);
  const index = order.indexOf(id);
  alarms.delete(id);
  rows.delete(id);
  onScreen.delete(id);
  if (tr && visibility) visibility.unobserve(tr);
  order = order.filter((x) => x !== id);
  if (tr) tr.remove();
  if (selected === id) {
    selected = null;
    const next = order[Math.min(index, order.length - 1)];
    if (next) select(next, document.activeElement === document.body || document.activeElement === tr);
  }
}

async function lookUp(deviceId) {
  if (asked.has(deviceId)) return;
  asked.add(deviceId);
  try {
    const response = await background(`/board/directory.json?device=${encodeURIComponent(deviceId)}`);
    if (!response.ok) return;
    mergeDirectory(await response.json());
    for (const [id, a] of alarms) if (a.device_id === deviceId) fillRow(rows.get(id), a);
  } catch {
    asked.delete(deviceId);
  }
}

async function refreshStates() {
  const ids = [...new Set([...alarms.values()].map((a) => a.device_id))].slice(0, 200);
  if (!ids.length) return;
  try {
    const query = ids.map((d) => `device=${encodeURIComponent(d)}`).join("&");
    const response = await background(`/board/directory.json?${query}`);
    if (!response.ok) return;
    mergeDirectory(await response.json());
    for (const [id, a] of alarms) fillRow(rows.get(id), a); // newer positions and visits
  } catch {
    /* the next refresh tries again */
  }
}

function select(id, focus) {
  if (selected && rows.get(selected)) {
    rows.get(selected).classList.remove("selected");
    rows.get(selected).tabIndex = -1;
  }
  selected = id;
  const tr = id ? rows.get(id) : null;
  if (!tr) return;
  tr.classList.add("selected");
  tr.tabIndex = 0;
  if (focus) tr.focus();
}

function summary() {
  const counts = { red: 0, amber: 0, warning: 0 };
  let waiting = 0;
  for (const a of alarms.values()) {
    counts[a.severity] = (counts[a.severity] || 0) + 1;
    if (a.severity === "red" && unclaimed(a)) waiting += 1;
  }
  setText(countsEl, `${counts.red} red · ${counts.amber} amber · ${counts.warning} warning`);
  emptyEl.hidden = alarms.size > 0;
  unclaimedEl.hidden = waiting === 0;
  setText(unclaimedEl, waiting === 1 ? "1 red alarm nobody has taken" : `${waiting} red alarms nobody has taken`);
  document.body.classList.toggle("red-waiting", waiting > 0);
  sound.wanted(waiting > 0);
}

function tick() {
  if (!visibility) {
    for (const [id, a] of alarms) tickRow(rows.get(id), a);
    return;
  }
  for (const id of onScreen) if (alarms.has(id)) tickRow(rows.get(id), alarms.get(id));
}

// ------------------------------------------------------------------ sound

const sound = {
  on: localStorage.getItem("board-sound") !== "off",
  context: null,
  timer: null,
  want: false,
  button: document.getElementById("sound"),
  arm() {
    if (!this.context) {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (Context) this.context = new Context();
    }
    if (this.context && this.context.state === "suspended") this.context.resume();
    this.show();
  },
  toggle() {
    this.on = !this.on;
    localStorage.setItem("board-sound", this.on ? "on" : "off");
    if (this.on) this.arm();
    this.wanted(this.want);
    this.show();
  },
  show() {
    const live = this.on && this.context && this.context.state === "running";
    this.button.setAttribute("aria-pressed", String(this.on));
    this.button.textContent = !this.on ? "Sound off" : live ? "Sound on" : "Sound on (press any key)";
  },
  wanted(want) {
    this.want = want;
    const play = want && this.on;
    document.body.dataset.alarmSound = play ? "on" : "off";
    if (play && !this.timer) {
      this.beep();
      this.timer = window.setInterval(() => this.beep(), 2500);
    } else if (!play && this.timer) {
      window.clearInterval(this.timer);
      this.timer = null;
    }
  },
  beep() {
    const ctx = this.context;
    if (!ctx || ctx.state !== "running") return;
    for (const [start, freq] of [[0, 880], [0.22, 660]]) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, ctx.currentTime + start);
      gain.gain.exponentialRampToValueAtTime(0.4, ctx.currentTime + start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + start + 0.18);
      osc.connect(gain).connect(ctx.destination);
      osc.start(ctx.currentTime + start);
      osc.stop(ctx.currentTime + start + 0.2);
    }
  },
};
sound.button.addEventListener("click", () => sound.toggle());
for (const name of ["keydown", "pointerdown"]) {
  window.addEventListener(name, () => sound.on && sound.arm(), { capture: true });
}
if (sound.on) sound.arm();

// ------------------------------------------------------------------ the live stream

let source = null;
let lostAt = null;
let retryTimer = null;

function connect() {
  if (retryTimer) {
    window.clearTimeout(retryTimer);
    retryTimer = null;
  }
  source = new EventSource(`/api/v1/alarms/stream?after=${encodeURIComponent(lastEventId)}`);
  source.addEventListener("open", () => {
    connectionEl.dataset.state = "live";
    setText(connectionEl, "Live");
    if (lostAt) {
      lostEl.hidden = false;
      lostEl.classList.remove("bad");
      setText(lostEl, `Connection back at ${clock(new Date().toISOString())} after ${duration(Date.now() - lostAt)}: the board caught up on everything it missed.`);
      announce("Connection back; the board caught up.");
      window.setTimeout(() => {
        if (!lostAt) lostEl.hidden = true;
      }, 8000);
      lostAt = null;
    }
  });
  source.addEventListener("alarm", onEvent);
  source.addEventListener("error", () => {
    if (!lostAt) {
      lostAt = Date.now();
      connectionEl.dataset.state = "lost";
      setText(connectionEl, "Connection lost");
      lostEl.hidden = false;
      lostEl.classList.add("bad");
      setText(lostEl, `Connection to the service lost at ${clock(new Date().toISOString())}: new alarms are NOT arriving. Reconnecting…`);
      announce("Connection to the service lost. New alarms are not arriving.", true);
    }
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (an error answer): signed out, or try again from the last id seen.
      source.close();
      background("/api/v1/me")
        .then((r) => {
          if (r.status === 401) {
            connectionEl.dataset.state = "lost";
            setText(connectionEl, "Signed out");
            lostEl.replaceChildren("You are signed out: new alarms are NOT arriving. ");
            lostEl.append(el("a", { href: "/sign-in?next=/board" }, "Sign in again"));
          } else {
            retryTimer = window.setTimeout(connect, 3000);
          }
        })
        .catch(() => {
          retryTimer = window.setTimeout(connect, 3000);
        });
    }
  });
}

function onEvent(event) {
  const started = performance.now();
  const id = Number(event.lastEventId);
  if (id && id <= lastEventId) return; // replayed after a reconnect: already applied
  if (id) lastEventId = id;
  const change = JSON.parse(event.data);
  const a = change.alarm;
  const wasOpen = alarms.has(a.id);
  if (change.change === "moved") {
    // A new point of an open alarm's trail: the row's position, never the alarm back on the board.
    if (!wasOpen || !change.position) return;
    directory.states[a.device_id] = { ...(directory.states[a.device_id] || {}), position: change.position };
    fillRow(rows.get(a.id), alarms.get(a.id));
    return;
  }
  const isNew = upsert(a);
  if (isNew) {
    timings.drawn.push({ id: a.id, event_id: a.source_event_id, at: performance.timeOrigin + performance.now() });
    if (timings.drawn.length > 20000) timings.drawn.splice(0, 10000);
  }
  summary();
  timings.applyMs.push(performance.now() - started);
  if (timings.applyMs.length > 20000) timings.applyMs.splice(0, 10000);
  if (isNew && a.severity === "red") {
    announce(`New red alarm: ${KIND_NAMES[a.kind] || a.kind}, ${who(a).name}, ${where(a).place}`, true);
  } else if (change.change === "turned_red") {
    announce(`Amber alert turned red: ${who(a).name}`, true);
  } else if (change.change === "acknowledged" && wasOpen) {
    announce(`${who(a).name}'s alarm taken by ${actor(a.acknowledged_by)}`);
  }
  if (!selected && order.length) select(order[0], false);
}

// ------------------------------------------------------------------ acting on an alarm

const dialog = document.getElementById("act-dialog");
const form = document.getElementById("act-form");
const outcomeSet = document.getElementById("outcome-set");
const note = document.getElementById("act-note");
const actError = document.getElementById("act-error");
let dialogFor = null;

function say(text, bad = false) {
  statusEl.classList.toggle("error", bad);
  setText(statusEl, text);
}

async function act(id, action, body) {
  const a = alarms.get(id);
  const name = a ? who(a).name : "the alarm";
  try {
    const updated = await api("POST", `/api/v1/alarms/${encodeURIComponent(id)}/${action}`, body);
    upsert(updated);
    summary();
    const done = { acknowledge: "Acknowledged", escalate: "Escalated", resolve: "Resolved" }[action];
    say(`${done}: ${name}.`);
    return true;
  } catch (error) {
    const message = error instanceof ApiError ? error.message : "The service could not be reached.";
    say(`Not done (${name}): ${message}`, true);
    announce(`Not done: ${message}`, true);
    return false;
  }
}

function openDialog(id, action) {
  if (!canAct || !alarms.has(id)) return;
  dialogFor = { id, action };
  const a = alarms.get(id);
  setText(document.getElementById("act-title"), action === "resolve" ? "Resolve alarm" : "Escalate alarm");
  setText(document.getElementById("act-which"), `${KIND_NAMES[a.kind] || a.kind}: ${who(a).name}, ${where(a).place}`);
  setText(document.getElementById("act-send"), action === "resolve" ? "Resolve" : "Escalate");
  outcomeSet.hidden = action !== "resolve";
  outcomeSet.disabled = action !== "resolve";
  for (const input of outcomeSet.querySelectorAll("input")) input.checked = false;
  note.value = "";
  actError.hidden = true;
  dialog.showModal();
  (action === "resolve" ? outcomeSet.querySelector("input") : note).focus();
}

dialog.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit(document.getElementById("act-send"));
  } else if (!outcomeSet.hidden && document.activeElement !== note && ["1", "2", "3"].includes(event.key)) {
    event.preventDefault();
    const input = outcomeSet.querySelectorAll("input")[Number(event.key) - 1];
    input.checked = true;
    input.focus();
  }
});

form.addEventListener("submit", async (event) => {
  const submitter = event.submitter;
  if (!submitter || submitter.value !== "send" || !dialogFor) return;
  event.preventDefault();
  const { id, action } = dialogFor;
  const body = { note: note.value };
  if (action === "resolve") {
    const chosen = outcomeSet.querySelector("input:checked");
    if (!chosen) {
      actError.hidden = false;
      setText(actError, "Choose an outcome (1, 2 or 3).");
      return;
    }
    body.outcome = chosen.value;
  }
  const ok = await act(id, action, body);
  if (ok) dialog.close();
  else {
    actError.hidden = false;
    setText(actError, statusEl.textContent);
  }
});

dialog.addEventListener("close", () => {
  const id = dialogFor && dialogFor.id;
  dialogFor = null;
  if (id && rows.get(id)) select(id, true);
  else if (selected) select(selected, true);
});

rowsEl.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-act]");
  if (!button) return;
  const id = button.closest("tr").dataset.alarm;
  select(id, false);
  if (button.dataset.act === "acknowledge") act(id, "acknowledge");
  else openDialog(id, button.dataset.act);
});

function move(step) {
  if (!order.length) return;
  const index = selected ? order.indexOf(selected) : -1;
  const next = Math.max(0, Math.min(order.length - 1, index + step));
  select(order[next], true);
}

document.addEventListener("keydown", (event) => {
  if (dialog.open || document.getElementById("help").open) return;
  if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  const handled = {
    ArrowDown: () => move(1),
    j: () => move(1),
    ArrowUp: () => move(-1),
    k: () => move(-1),
    Home: () => move(-order.length),
    End: () => move(order.length),
    a: () => selected && canAct && act(selected, "acknowledge"),
    e: () => selected && openDialog(selected, "escalate"),
    r: () => selected && openDialog(selected, "resolve"),
    s: () => sound.toggle(),
    "?": () => document.getElementById("help").showModal(),
    Enter: () => {
      if (!selected || event.target.closest("button, a")) return false;
      window.location.assign(`/alarms/${encodeURIComponent(selected)}`);
    },
  }[key.length === 1 ? key.toLowerCase() : key];
  if (handled && handled() !== false) event.preventDefault();
});
document.getElementById("help-open").addEventListener("click", () => document.getElementById("help").showModal());

// ------------------------------------------------------------------ how well the room answers

async function refreshPerformance() {
  // The figures beside the board, as the performance page renders them (parsed, never run).
  try {
    const response = await background("/performance");
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("table.perf");
    const shown = document.querySelector(".side table.perf");
    if (fresh && shown) shown.replaceWith(document.importNode(fresh, true));
  } catch {
    /* the next refresh tries again */
  }
}

// ------------------------------------------------------------------ start

mergeDirectory(data.directory);
for (const key of Object.keys(data.directory.devices || {})) asked.add(key);
for (const a of data.alarms) upsert(a);
summary();
if (order.length) select(order[0], false);
timings.firstRender = performance.now();
performance.mark("board-drawn");
connect();
window.setInterval(tick, 1000);
window.setInterval(refreshStates, 15000);
window.setInterval(refreshPerformance, 60000);
