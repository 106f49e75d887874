// One subject access request: search footage (only what the person may see), link a clip to the
// request, make a redaction version that leaves only the requester visible (their tracks excluded,
// other people's speech muted), and build the package. Every action is an API call.
import { ApiError, api, el, moment } from "./common.js";

const say = (node, text, bad = false) => {
  node.textContent = text;
  node.classList.toggle("error", bad);
};
const failure = (error) => (error instanceof ApiError ? `Not done: ${error.message}` : "Not done: the service could not be reached.");
const wait = (ms) => new Promise((resolve) => window.setTimeout(resolve, ms));
const utc = (local) => (local ? `${local}${local.length === 16 ? ":00" : ""}Z` : "");

const search = document.getElementById("search-form");
if (search) {
  search.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = search.querySelector(".form-status");
    const params = new URLSearchParams({ start: utc(search.elements.start.value), end: utc(search.elements.end.value) });
    for (const name of ["wearer", "site"]) if (search.elements[name].value.trim()) params.set(name, search.elements[name].value.trim());
    say(status, "Searching…");
    try {
      const found = await api("GET", `/api/v1/subject-access-requests/${encodeURIComponent(search.dataset.request)}/candidates?${params}`);
      const table = document.getElementById("candidates");
      const body = table.querySelector("tbody");
      body.replaceChildren(
        ...found.map((clip) =>
          el(
            "tr",
            { dataset: { candidate: clip.id } },
            el("th", { scope: "row" }, clip.filename || clip.id, el("br"), el("small", {}, clip.id)),
            el("td", {}, clip.wearer || "–"),
            el("td", {}, clip.source_device_id || "–"),
            el("td", {}, moment(clip.captured_start), " to ", moment(clip.captured_stop)),
            el("td", {}, el("button", { type: "button", class: "add-clip", dataset: { clip: clip.id } }, "Add to this request")),
          ),
        ),
      );
      table.hidden = found.length === 0;
      say(status, found.length ? `${found.length} clips recorded in the window.` : "No clip you may see was recorded in the window.");
    } catch (error) {
      say(status, failure(error), true);
    }
  });
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.add-clip");
    if (!button) return;
    button.disabled = true;
    try {
      await api("POST", `/api/v1/incidents/${encodeURIComponent(search.dataset.incident)}/links`, {
        kind: "evidence",
        target_id: button.dataset.clip,
        reason: "footage of the person who made this subject access request",
      });
      window.location.reload();
    } catch (error) {
      button.replaceWith(el("span", { class: "error" }, failure(error)));
    }
  });
}

function ranges(text) {
  return text
    .split(",")
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => {
      const [start, end] = part.split("-").map((x) => Number(x.trim()));
      return { start, end, mode: "mute" };
    });
}

for (const form of document.querySelectorAll("form.version-form")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = form.querySelector(".form-status");
    const bar = form.querySelector("progress");
    const reason = `the person who asked for this footage (subject access request, ${form.dataset.reference})`;
    const tracks = form.elements.tracks.value.split(",").map((t) => t.trim()).filter(Boolean).map(Number);
    const spec = {
      exclusions: tracks.map((track) => ({ track, reason })),
      audio_edits: ranges(form.elements.mute.value),
      note: `Subject access request ${form.dataset.reference}: every face but the requester's hidden`,
    };
    say(status, "Asking for the version…");
    try {
      let job = await api("POST", `/api/v1/evidence/${encodeURIComponent(form.dataset.clip)}/redactions`, spec);
      bar.hidden = false;
      while (job.status !== "done") {
        if (job.status === "failed") throw new ApiError(500, job.error || "the redaction failed", job);
        bar.value = Math.round(100 * (job.progress || 0));
        say(status, `Version ${job.version}: ${job.status}, ${Math.round(100 * (job.progress || 0))} %…`);
        await wait(500);
        job = await api("GET", `/api/v1/redaction-jobs/${encodeURIComponent(job.id)}`);
      }
      say(status, `Version ${job.version} is ready.`);
      window.setTimeout(() => window.location.reload(), 600);
    } catch (error) {
      say(status, failure(error), true);
    }
  });
}

const pack = document.getElementById("package-form");
if (pack) {
  pack.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = pack.querySelector(".form-status");
    const bar = pack.querySelector("progress");
    // The version of each clip listed on this page, by its own id: the package holds exactly that one.
    const clips = [...document.querySelectorAll("article.clip")].map((a) => a.dataset.redacted || a.dataset.clip);
    say(status, "Asking for the package…");
    try {
      // The requester's version leaves their own face visible: the package says why it is handed out.
      const reason = "answering the subject access request of the person this footage shows";
      let job = await api("POST", `/api/v1/incidents/${encodeURIComponent(pack.dataset.incident)}/exports`, { item_ids: clips, reason });
      bar.hidden = false;
      while (job.status !== "ready") {
        if (job.status === "failed") throw new ApiError(500, job.error || "the build failed", job);
        const total = job.media_bytes_total || 0;
        bar.value = total ? Math.floor((100 * job.media_bytes_done) / total) : 0;
        say(status, `Building: ${bar.value} %…`);
        await wait(400);
        job = await api("GET", `/api/v1/exports/${encodeURIComponent(job.id)}`);
      }
      await api("PATCH", `/api/v1/subject-access-requests/${encodeURIComponent(pack.dataset.request)}`, { export_id: job.id });
      say(status, "Package ready.");
      window.location.reload();
    } catch (error) {
      say(status, failure(error), true);
    }
  });
}
