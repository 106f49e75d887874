// Redaction review and correction. Over the playing video, the boxes the automatic redaction hid in
// each frame (from the version's per-frame record, read through the API); a timeline of every
// track; tracks turned off or on, boxes drawn over a time range, sound muted or toned on a waveform;
// a preview; and the correction saved as a NEW version through the redaction API, followed to the end.
// Opened for a subject access request, each track offers "this is the requester": that person left
// visible with the request as the reason, every other face masked (the API's exclusions).
import { api, el, pageData } from "./common.js";
import { Player, contentUrl } from "./player.js";

const data = pageData("review-data");
const $ = (id) => document.getElementById(id);
const video = $("video");
const overlay = $("overlay");
const timeline = $("timeline");
const wave = $("waveform");
const COLOURS = ["#4cc3ff", "#ff9f43", "#7bed9f", "#ff6b81", "#a29bfe", "#ffd32a", "#1dd1a1", "#f368e0"];
const UNCERTAIN_SCORE = 0.5;
// A toned range of the saved version is this sine at the edit's frequency, a mute silence, a mute
// winning where both are (redaction/audio.py): the preview plays the same.
const TONE_HZ = 1000;
const TONE_LEVEL = 0.2;

const done = data.versions.filter((v) => v.status === "done" && v.result && v.record);
const state = {
  base: done[0] || null,
  record: null, // {fps, width, height, frames, record}
  fps: 25,
  tracks: new Map(), // id -> {frames: Int8Array (0 none, 1 masked, 2 uncertain), first, last}
  excluded: new Map(), // track -> reason (whole life)
  requester: new Set(), // tracks marked as the subject access requester (left visible, the request the reason)
  regions: [], // {start, end, x, y, w, h, shape, follow, label}
  audio: [], // {start, end, mode, tone_hz}
  waveform: null,
  drawn: 0,
  drag: null,
  pendingBox: null,
};

const colour = (track) => COLOURS[track % COLOURS.length];
const parseRate = (text) => {
  const [n, d] = String(text).split("/").map(Number);
  return d ? n / d : n;
};
const frameAt = (t) => Math.max(0, Math.min(state.record ? state.record.frames - 1 : 0, Math.floor(t * state.fps + 1e-6)));
const round2 = (x) => Math.round(x * 100) / 100;
const uncertain = (note) => note.kind !== "detected" || (note.score !== undefined && note.score < UNCERTAIN_SCORE);

// ------------------------------------------------------------------ the player and the record

const player = new Player({
  video,
  select: $("source"),
  reasonForm: $("reason-form"),
  reasonInput: $("reason"),
  reasonCancel: $("reason-cancel"),
  note: $("player-note"),
  clipId: data.clip.id,
  onSource: (current) => {
    if (current.original) return;
    const version = done.find((v) => v.result.id === current.id);
    if (version && version !== state.base) loadBase(version);
  },
});

async function loadBase(version) {
  state.base = version;
  player.say(`Reading the record of version ${version.version}…`);
  const rec = await api("GET", `/api/v1/evidence/${encodeURIComponent(version.record.id)}/content`);
  state.record = rec;
  state.fps = parseRate(rec.fps);
  indexTracks(rec);
  const spec = version.spec || {};
  state.excluded = new Map((spec.exclusions || []).map((e) => [e.track, e.reason]));
  const sar = data.subject_access;
  state.requester = new Set(sar ? [...state.excluded].filter(([, why]) => why === sar.reason).map(([t]) => t) : []);
  state.regions = (spec.manual_regions || []).map((r) => ({ ...r }));
  state.audio = (spec.audio_edits || []).map((a) => ({ start: a.start, end: a.end, mode: a.mode || "mute", tone_hz: a.tone_hz || TONE_HZ }));
  $("note").value = "";
  renderTracks();
  renderEdits();
  resize();
  overlay.dataset.ready = "1";
  player.say(`Version ${version.version}: ${state.tracks.size} track(s) found in ${rec.frames} frames.`);
  loadWaveform(version.result.id);
}

function indexTracks(rec) {
  state.tracks = new Map();
  rec.record.forEach((notes, i) => {
    for (const n of notes) {
      if (n.source !== "auto") continue;
      let t = state.tracks.get(n.track);
      if (!t) {
        t = { frames: new Int8Array(rec.frames), first: i, last: i };
        state.tracks.set(n.track, t);
      }
      t.frames[i] = uncertain(n) ? 2 : 1;
      t.last = i;
    }
  });
}

// ------------------------------------------------------------------ drawing over the video

function resize() {
  const rect = video.getBoundingClientRect();
  overlay.width = Math.max(1, Math.round(rect.width));
  overlay.height = Math.max(1, Math.round(rect.height));
  timeline.width = Math.max(1, Math.round(timeline.getBoundingClientRect().width));
  timeline.height = 16 * (state.tracks.size + 2) + 4;
  wave.width = Math.max(1, Math.round(wave.getBoundingClientRect().width));
  draw();
}

function scale() {
  return state.record ? overlay.width / state.record.width : 1;
}

function regionBoxAt(region, t) {
  const ks = [[region.start, region.x, region.y, region.w, region.h], ...(region.keyframes || [])];
  if (region.follow || ks.length === 1) return [region.x, region.y, region.w, region.h];
  for (let k = 0; k < ks.length - 1; k++) {
    const [t0, ...a] = ks[k];
    const [t1, ...b] = ks[k + 1];
    if (t <= t1) {
      const u = t1 > t0 ? Math.max(0, (t - t0) / (t1 - t0)) : 1;
      return a.map((v, i) => v + (b[i] - v) * u);
    }
  }
  return ks[ks.length - 1].slice(1);
}

const LABEL_HEIGHT = 16; // a 12px label on a dark band, 2px each side

// Where a box's label goes: above its top edge where the picture has room, else just inside it (a box
// touching the top edge would otherwise have its label cut off), and never past the picture's sides.
function labelPlace(x, y, textWidth, width) {
  const top = y >= LABEL_HEIGHT ? y - LABEL_HEIGHT : Math.max(0, y) + 2;
  const left = Math.max(0, Math.min(x, width - textWidth - 4));
  return [left, top];
}

function drawLabel(ctx, text, x, y, placed) {
  const colour = ctx.fillStyle;
  const w = ctx.measureText(text).width;
  const [left, top] = labelPlace(x, y, w, ctx.canvas.width);
  placed.push({ text, left, top, width: w + 4, height: LABEL_HEIGHT - 2, box_top: y });
  ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
  ctx.fillRect(left, top, w + 4, LABEL_HEIGHT - 2);
  ctx.fillStyle = colour;
  ctx.textBaseline = "top";
  ctx.fillText(text, left + 2, top + 1);
  ctx.textBaseline = "alphabetic";
}

function draw() {
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  if (!state.record) return;
  const t = video.currentTime;
  const i = frameAt(t);
  const s = scale();
  const preview = $("preview").checked;
  ctx.lineWidth = 2;
  ctx.font = "12px system-ui, sans-serif";
  const placed = []; // where each label went, kept on the canvas for whoever checks the drawing
  for (const n of state.record.record[i] || []) {
    if (n.source !== "auto") continue;
    const [x, y, w, h] = n.box.map((v) => v * s);
    const off = state.excluded.has(n.track);
    if (preview && !off) {
      ctx.fillStyle = "#000";
      ctx.fillRect(x, y, w, h);
    }
    ctx.setLineDash(uncertain(n) || off ? [6, 4] : []);
    ctx.strokeStyle = off ? "#9aa5b1" : colour(n.track);
    ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = ctx.strokeStyle;
    const visible = state.requester.has(n.track) ? " (the requester, left visible)" : " (left visible)";
    drawLabel(ctx, `track ${n.track}${off ? visible : ""}${uncertain(n) ? " ?" : ""}`, x, y, placed);
  }
  ctx.setLineDash([]);
  state.regions.forEach((r, k) => {
    if (t < r.start || t > r.end) return;
    const [x, y, w, h] = regionBoxAt(r, t).map((v) => v * s);
    if (preview) {
      ctx.fillStyle = "#000";
      ctx.fillRect(x, y, w, h);
    }
    ctx.strokeStyle = "#ffd32a";
    ctx.setLineDash([2, 3]);
    ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = "#ffd32a";
    drawLabel(ctx, `box ${k + 1}${r.follow ? " (followed)" : ""}`, x, y, placed);
  });
  ctx.setLineDash([]);
  if (state.drag && state.drag.w) {
    ctx.strokeStyle = "#ffd32a";
    ctx.strokeRect(state.drag.x * s, state.drag.y * s, state.drag.w * s, state.drag.h * s);
  }
  if (state.pendingBox) {
    const b = state.pendingBox;
    ctx.strokeStyle = "#ffd32a";
    ctx.strokeRect(b.x * s, b.y * s, b.w * s, b.h * s);
  }
  state.drawn += 1;
  overlay.dataset.frame = String(i);
  overlay.dataset.drawn = String(state.drawn);
  overlay.dataset.labels = JSON.stringify(placed);
  $("frame-label").textContent = `frame ${i + 1} of ${state.record.frames} · ${t.toFixed(2)} s`;
  if (preview) previewSound(t);
  drawTimeline();
  drawWave();
}

function onFrame(_now, meta) {
  draw();
  if (meta && state.record) overlay.dataset.mediaTime = String(meta.mediaTime);
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
}
if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
for (const name of ["seeked", "timeupdate", "loadeddata", "pause"]) video.addEventListener(name, draw);
window.addEventListener("resize", resize);
video.addEventListener("loadedmetadata", resize);
$("preview").addEventListener("change", () => {
  if (!$("preview").checked) {
    video.muted = false;
    playTone(null);
  }
  draw();
});
for (const name of ["pause", "ended", "seeking"]) video.addEventListener(name, () => $("preview").checked && previewSound(video.currentTime));

// ------------------------------------------------------------------ the preview's sound

let toneOut = null; // {context, oscillator, gain}, made when first needed

// The tone through Web Audio, silent until a toned range plays; the clip's own sound is muted there.
function playTone(hz) {
  if (hz === null && !toneOut) return;
  if (!toneOut) {
    const context = new AudioContext();
    const oscillator = context.createOscillator();
    const gain = context.createGain();
    gain.gain.value = 0;
    oscillator.connect(gain).connect(context.destination);
    oscillator.start();
    toneOut = { context, oscillator, gain };
  }
  const { context, oscillator, gain } = toneOut;
  if (hz !== null) {
    oscillator.frequency.setValueAtTime(hz, context.currentTime);
    context.resume().catch(() => {});
  }
  gain.gain.setValueAtTime(hz === null ? 0 : TONE_LEVEL, context.currentTime);
  video.dataset.previewSound = hz === null ? (video.muted ? "silent" : "clip") : `tone ${hz} Hz`;
}

// What the saved version plays at ``t``: the clip, silence (a mute, which beats a tone), or a tone.
function previewSound(t) {
  const inside = state.audio.filter((a) => t >= a.start && t < a.end);
  video.muted = inside.length > 0;
  const tone = inside.some((a) => a.mode !== "tone") ? null : inside[inside.length - 1];
  playTone(tone && !video.paused && !video.seeking ? tone.tone_hz || TONE_HZ : null);
}

// ------------------------------------------------------------------ the timeline

function drawTimeline() {
  const ctx = timeline.getContext("2d");
  const W = timeline.width;
  ctx.clearRect(0, 0, W, timeline.height);
  if (!state.record) return;
  const n = state.record.frames;
  const left = 70;
  const x = (f) => left + ((W - left) * f) / n;
  ctx.font = "11px system-ui, sans-serif";
  let row = 0;
  for (const [id, t] of [...state.tracks.entries()].sort((a, b) => a[0] - b[0])) {
    const y = 2 + row * 16;
    ctx.fillStyle = "#c8d1da";
    ctx.fillText(`track ${id}`, 2, y + 11);
    const off = state.excluded.has(id);
    for (let f = 0; f < n; f++) {
      if (!t.frames[f]) continue;
      ctx.fillStyle = off ? "#5c6670" : colour(id);
      ctx.globalAlpha = t.frames[f] === 2 ? 0.4 : 1;
      ctx.fillRect(x(f), y, Math.max(1, x(f + 1) - x(f)), 12);
    }
    ctx.globalAlpha = 1;
    row += 1;
  }
  const fps = state.fps;
  let y = 2 + row * 16;
  ctx.fillStyle = "#c8d1da";
  ctx.fillText("boxes", 2, y + 11);
  ctx.fillStyle = "#ffd32a";
  for (const r of state.regions) ctx.fillRect(x(r.start * fps), y, Math.max(2, x(r.end * fps) - x(r.start * fps)), 12);
  y += 16;
  ctx.fillStyle = "#c8d1da";
  ctx.fillText("sound", 2, y + 11);
  for (const a of state.audio) {
    ctx.fillStyle = a.mode === "tone" ? "#4cc3ff" : "#ff6b81";
    ctx.fillRect(x(a.start * fps), y, Math.max(2, x(a.end * fps) - x(a.start * fps)), 12);
  }
  ctx.fillStyle = "#fff";
  ctx.fillRect(x(video.currentTime * fps), 0, 2, timeline.height);
}

timeline.addEventListener("click", (event) => {
  if (!state.record) return;
  const rect = timeline.getBoundingClientRect();
  const left = (70 * rect.width) / timeline.width;
  const u = (event.clientX - rect.left - left) / (rect.width - left);
  if (u >= 0) video.currentTime = Math.max(0, Math.min(1, u)) * (state.record.frames / state.fps);
});

// ------------------------------------------------------------------ tracks on and off

// What the version will do with a track, as the overlay says it: masked, or left visible (unticked).
const trackSays = (id) =>
  `Track ${id}: ${state.excluded.has(id) ? "left visible" : "masked"}${state.requester.has(id) ? " (the requester)" : ""}`;

// "This is the requester": the first track marked masks every other (what the person who asked may
// see is themselves only), each further one is the requester too (a face the tracker lost and found
// again); "not the requester" masks it again. The request, by its incident's reference, is the
// reason each is left visible, and the version's note says what it is for.
function markRequester(id) {
  const sar = data.subject_access;
  if (state.requester.has(id)) {
    state.requester.delete(id);
    state.excluded.delete(id);
    player.say(`Track ${id} is masked again.`);
  } else {
    if (!state.requester.size) state.excluded.clear();
    state.requester.add(id);
    state.excluded.set(id, sar.reason);
    if (!$("note").value.trim()) $("note").value = sar.note;
    const others = state.tracks.size - state.requester.size;
    player.say(
      `Track ${id} is the requester: left visible; ${others} other track(s) masked. ` +
        "Mute other people's speech on the waveform.",
    );
  }
  renderTracks();
  draw();
  $(`requester-${id}`)?.focus(); // the list is drawn again: the focus stays on the track's button
}

function renderTracks() {
  const list = $("tracks");
  list.replaceChildren();
  for (const [id, t] of [...state.tracks.entries()].sort((a, b) => a[0] - b[0])) {
    const box = el("input", { type: "checkbox", id: `track-${id}`, "data-track": id });
    box.checked = !state.excluded.has(id);
    const label = el("label", { for: `track-${id}` }, trackSays(id));
    box.addEventListener("change", () => {
      state.requester.delete(id);
      if (box.checked) state.excluded.delete(id);
      else state.excluded.set(id, null);
      label.textContent = trackSays(id);
      draw();
    });
    const sw = el("span", { class: "swatch" });
    sw.style.background = colour(id);
    const uncertainFrames = t.frames.reduce((a, v) => a + (v === 2 ? 1 : 0), 0);
    list.append(
      el(
        "li",
        {},
        box,
        sw,
        label,
        el(
          "small",
          {},
          `${(t.first / state.fps).toFixed(2)}–${((t.last + 1) / state.fps).toFixed(2)} s` +
            (uncertainFrames ? `, uncertain in ${uncertainFrames} frame(s)` : ""),
        ),
        el("button", { type: "button", class: "link", onclick: () => (video.currentTime = t.first / state.fps + 0.001) }, "go to"),
        data.subject_access
          ? el(
              "button",
              { type: "button", class: "requester", id: `requester-${id}`, "aria-pressed": state.requester.has(id) ? "true" : "false", onclick: () => markRequester(id) },
              state.requester.has(id) ? "Not the requester" : "This is the requester",
            )
          : null,
      ),
    );
  }
  if (!state.tracks.size) list.append(el("li", {}, "No faces were found automatically."));
}

// ------------------------------------------------------------------ drawing a box

$("draw").addEventListener("click", () => {
  if (!state.record) return;
  video.pause();
  $("stage").classList.toggle("drawing");
  player.say($("stage").classList.contains("drawing") ? "Drag over the picture to draw a box." : "");
});

function framePoint(event) {
  const rect = overlay.getBoundingClientRect();
  const k = state.record.width / rect.width;
  return [Math.max(0, (event.clientX - rect.left) * k), Math.max(0, (event.clientY - rect.top) * k)];
}

overlay.addEventListener("pointerdown", (event) => {
  if (!$("stage").classList.contains("drawing")) return;
  const [x, y] = framePoint(event);
  state.drag = { x0: x, y0: y, x, y, w: 0, h: 0 };
  overlay.setPointerCapture(event.pointerId);
});
overlay.addEventListener("pointermove", (event) => {
  if (!state.drag) return;
  const [x, y] = framePoint(event);
  const d = state.drag;
  Object.assign(d, { x: Math.min(d.x0, x), y: Math.min(d.y0, y), w: Math.abs(x - d.x0), h: Math.abs(y - d.y0) });
  draw();
});
overlay.addEventListener("pointerup", () => {
  const d = state.drag;
  state.drag = null;
  $("stage").classList.remove("drawing");
  if (!d || d.w < 4 || d.h < 4) return draw();
  state.pendingBox = { x: Math.round(d.x), y: Math.round(d.y), w: Math.round(d.w), h: Math.round(d.h) };
  const t = video.currentTime;
  $("box-start").value = round2(t);
  $("box-end").value = round2(Math.min(state.record.frames / state.fps, t + 1));
  $("box-form").hidden = false;
  player.say("Choose the time range the box hides, then add it.");
  draw();
});

$("box-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const start = Number($("box-start").value);
  const end = Number($("box-end").value);
  if (!(end >= start)) return player.say("The box's range ends before it starts.");
  state.regions.push({
    start,
    end,
    ...state.pendingBox,
    shape: "rect",
    follow: $("box-follow").checked,
    keyframes: [],
    label: $("box-label").value.trim() || null,
  });
  state.pendingBox = null;
  $("box-form").hidden = true;
  player.say(`Box ${state.regions.length} added.`);
  renderEdits();
  draw();
});
$("box-cancel").addEventListener("click", () => {
  state.pendingBox = null;
  $("box-form").hidden = true;
  draw();
});

// ------------------------------------------------------------------ sound

async function loadWaveform(id) {
  try {
    state.waveform = await api("GET", `/api/v1/evidence/${encodeURIComponent(id)}/waveform?buckets=600`);
    wave.dataset.ready = "1";
  } catch (error) {
    state.waveform = null;
    player.say(`No waveform: ${error.message}`);
  }
  drawWave();
}

function duration() {
  return state.record ? state.record.frames / state.fps : video.duration || 0;
}

function drawWave() {
  const ctx = wave.getContext("2d");
  const W = wave.width;
  const H = wave.height;
  ctx.clearRect(0, 0, W, H);
  const d = duration();
  if (!d) return;
  const x = (t) => (W * t) / d;
  for (const a of state.audio) {
    ctx.fillStyle = a.mode === "tone" ? "rgba(76,195,255,.35)" : "rgba(255,107,129,.35)";
    ctx.fillRect(x(a.start), 0, x(a.end) - x(a.start), H);
  }
  if (state.select) {
    ctx.fillStyle = "rgba(255,255,255,.2)";
    ctx.fillRect(x(state.select[0]), 0, x(state.select[1]) - x(state.select[0]), H);
  }
  const w = state.waveform;
  if (w && w.peaks.length) {
    ctx.fillStyle = "#7bed9f";
    const step = w.seconds_per_bucket;
    w.peaks.forEach((p, k) => {
      const h = Math.max(1, p * (H - 4));
      ctx.fillRect(x(k * step), (H - h) / 2, Math.max(1, x(step) - 0.5), h);
    });
  } else {
    ctx.fillStyle = "#9aa5b1";
    ctx.fillText(w && !w.has_audio ? "This clip has no sound." : "Reading the sound…", 8, H / 2);
  }
  ctx.fillStyle = "#fff";
  ctx.fillRect(x(video.currentTime), 0, 2, H);
}

function waveTime(event) {
  const rect = wave.getBoundingClientRect();
  return Math.max(0, Math.min(1, (event.clientX - rect.left) / rect.width)) * duration();
}
wave.addEventListener("pointerdown", (event) => {
  state.waveDrag = waveTime(event);
  wave.setPointerCapture(event.pointerId);
});
wave.addEventListener("pointermove", (event) => {
  if (state.waveDrag === undefined || state.waveDrag === null) return;
  const t = waveTime(event);
  state.select = [Math.min(t, state.waveDrag), Math.max(t, state.waveDrag)];
  drawWave();
});
wave.addEventListener("pointerup", (event) => {
  const t0 = state.waveDrag;
  state.waveDrag = null;
  const t = waveTime(event);
  if (Math.abs(t - t0) < 0.05) {
    state.select = null;
    video.currentTime = t;
    return;
  }
  state.select = [Math.min(t, t0), Math.max(t, t0)];
  $("audio-start").value = round2(state.select[0]);
  $("audio-end").value = round2(state.select[1]);
  drawWave();
});

$("audio-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const start = Number($("audio-start").value);
  const end = Number($("audio-end").value);
  if (!(end > start)) return player.say("The sound range ends before it starts.");
  state.audio.push({ start, end, mode: $("audio-mode").value, tone_hz: TONE_HZ });
  state.select = null;
  renderEdits();
  draw();
});

// ------------------------------------------------------------------ the lists of edits

function renderEdits() {
  const regions = $("regions");
  regions.replaceChildren(
    ...state.regions.map((r, k) =>
      el(
        "li",
        { "data-region": k },
        `Box ${k + 1}: ${r.start.toFixed(2)}–${r.end.toFixed(2)} s at ${Math.round(r.x)},${Math.round(r.y)} ${Math.round(r.w)}×${Math.round(r.h)}` +
          (r.follow ? ", followed" : "") +
          (r.label ? ` (${r.label})` : ""),
        el("button", { type: "button", class: "link", onclick: () => { state.regions.splice(k, 1); renderEdits(); draw(); } }, "remove"),
      ),
    ),
  );
  const audio = $("audio-edits");
  audio.replaceChildren(
    ...state.audio.map((a, k) =>
      el(
        "li",
        { "data-audio": k },
        `Sound ${a.mode === "tone" ? "toned" : "muted"}: ${a.start.toFixed(2)}–${a.end.toFixed(2)} s`,
        el("button", { type: "button", class: "link", onclick: () => { state.audio.splice(k, 1); renderEdits(); draw(); } }, "remove"),
      ),
    ),
  );
  if (!state.regions.length && !state.audio.length) regions.append(el("li", {}, "None."));
}

// ------------------------------------------------------------------ saving a new version

function spec() {
  const reason = $("exclusion-reason").value.trim();
  const exclusions = [];
  for (const [track, had] of state.excluded) {
    const why = had || reason;
    if (!why || why.length < 10) throw new Error("Say why the people you leave visible are not hidden (10 characters or more).");
    exclusions.push({ track, reason: why });
  }
  return {
    settings: (state.base && state.base.spec && state.base.spec.settings) || {},
    manual_regions: state.regions.map(({ start, end, x, y, w, h, shape, follow, keyframes, label }) => ({
      start, end, x, y, w, h, shape: shape || "rect", follow: !!follow, keyframes: keyframes || [], label: label || null,
    })),
    exclusions,
    audio_edits: state.audio.map(({ start, end, mode, tone_hz }) => ({ start, end, mode, ...(mode === "tone" ? { tone_hz } : {}) })),
    note: $("note").value.trim() || null,
  };
}

$("save-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  let body;
  try {
    body = spec();
  } catch (error) {
    $("job-state").textContent = error.message;
    return;
  }
  $("save").disabled = true;
  const based = state.base ? `?based_on=${encodeURIComponent(state.base.job_id)}` : "";
  try {
    const job = await api("POST", `/api/v1/evidence/${encodeURIComponent(data.clip.id)}/redactions${based}`, body);
    follow(job);
  } catch (error) {
    $("job-state").textContent = error.message;
    $("save").disabled = false;
  }
});

async function follow(job) {
  const bar = $("job-progress");
  const line = $("job-state");
  bar.hidden = false;
  line.dataset.job = job.id;
  for (;;) {
    bar.value = job.progress || 0;
    line.dataset.status = job.status;
    const frames = job.frames_total ? ` (${job.frames_done} of ${job.frames_total} frames)` : "";
    line.textContent = `Version ${job.version}: ${job.status}${frames}.`;
    if (job.status === "done" || job.status === "failed") break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    try {
      job = await api("GET", `/api/v1/redaction-jobs/${encodeURIComponent(job.id)}`);
    } catch (error) {
      line.textContent = `Lost track of version ${job.version}: ${error.message}`;
      $("save").disabled = false;
      return;
    }
  }
  $("save").disabled = false;
  if (job.status === "failed") {
    line.textContent = `Version ${job.version} failed: ${job.error || "no reason given"}.`;
    return;
  }
  line.replaceChildren(
    `Version ${job.version} is ready. `,
    el("a", { href: `/footage/${encodeURIComponent(data.clip.id)}/review`, id: "open-new" }, "Review it"),
  );
  const entry = { version: job.version, status: "done", result: { id: job.result_item_id }, job_id: job.id };
  addCompareOption(entry, true);
}

// ------------------------------------------------------------------ versions side by side

function addCompareOption(v, select) {
  for (const id of ["compare-a", "compare-b"]) {
    $(id).append(el("option", { value: v.result.id }, `Version ${v.version}`));
  }
  if (select) $("compare-b").value = v.result.id;
}
done
  .slice()
  .reverse()
  .forEach((v) => addCompareOption(v, false));
if (done.length) {
  $("compare-a").value = done[done.length > 1 ? 1 : 0].result.id;
  $("compare-b").value = done[0].result.id;
}

$("compare").addEventListener("click", () => {
  const a = $("video-a");
  const b = $("video-b");
  a.src = contentUrl($("compare-a").value);
  b.src = contentUrl($("compare-b").value);
  $("caption-a").textContent = $("compare-a").selectedOptions[0]?.textContent || "";
  $("caption-b").textContent = $("compare-b").selectedOptions[0]?.textContent || "";
  $("compare-stage").hidden = false;
});
// The right follows the left: play, pause and seek together.
$("video-a").addEventListener("play", () => $("video-b").play().catch(() => {}));
$("video-a").addEventListener("pause", () => $("video-b").pause());
$("video-a").addEventListener("seeked", () => ($("video-b").currentTime = $("video-a").currentTime));

// ------------------------------------------------------------------ start

if (state.base) {
  player.show(state.base.result.id);
  loadBase(state.base).catch((error) => player.say(`Could not read the record: ${error.message}`));
} else {
  player.say("No finished redaction version to review yet.");
}
