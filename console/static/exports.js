// The exports page: build a package of the chosen items and follow its progress, give a named
// recipient a download link (its address is shown once, with the package's hash and the key's
// fingerprint to pass on apart from it), revoke a link. Every action is an API call with the
// session's CSRF token; the page is drawn again from the server after each change.
import { ApiError, api, el, moment } from "./common.js";

const say = (node, text, bad = false) => {
  node.textContent = text;
  node.classList.toggle("error", bad);
};
const failure = (error) => (error instanceof ApiError ? `Not done: ${error.message}` : "Not done: the service could not be reached.");
const wait = (ms) => new Promise((resolve) => window.setTimeout(resolve, ms));

async function follow(exportId, status, bar) {
  bar.hidden = false;
  for (;;) {
    const job = await api("GET", `/api/v1/exports/${encodeURIComponent(exportId)}`);
    const total = job.media_bytes_total || 0;
    const share = total ? Math.floor((100 * job.media_bytes_done) / total) : job.status === "ready" ? 100 : 0;
    bar.value = share;
    if (job.status === "failed") throw new ApiError(500, job.error || "the build failed", job);
    if (job.status === "ready") return job;
    say(status, `Building: ${share} % of the media checked and laid out…`);
    await wait(400);
  }
}

const build = document.getElementById("build-form");
if (build) {
  build.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = document.getElementById("build-status");
    const button = document.getElementById("build");
    // A clip goes in as the redacted copy chosen for it (its id in the clip's place), else its latest.
    const version = (id) => build.querySelector(`select.version[data-clip="${CSS.escape(id)}"]`)?.value;
    const items = [...build.querySelectorAll('input[name="item"]:checked')].map((box) => version(box.value) || box.value);
    if (!items.length) return say(status, "Choose at least one item.", true);
    const originals = document.getElementById("include-originals");
    const body = { item_ids: items, include_originals: Boolean(originals && originals.checked) };
    // The reason covers original footage and any version that leaves someone visible.
    const reason = document.getElementById("originals-reason");
    if (reason && (body.include_originals || reason.value.trim())) body.reason = reason.value;
    button.disabled = true;
    say(status, "Asking for the package…");
    try {
      const job = await api("POST", `/api/v1/incidents/${encodeURIComponent(build.dataset.incident)}/exports`, body);
      const done = await follow(job.id, status, document.getElementById("build-progress"));
      say(status, `Package ready: SHA-256 ${done.package_sha256}.`);
      window.setTimeout(() => window.location.reload(), 800);
    } catch (error) {
      say(status, failure(error), true);
      button.disabled = false;
    }
  });
}

function shownOnce(form, link) {
  form.querySelector(".secret")?.remove();
  const box = el(
    "div",
    { class: "secret", role: "status" },
    el("p", {}, el("strong", {}, `Link for ${link.recipient}, until `, moment(link.expires_at), ". Copy it now: it is shown once.")),
    el("code", { class: "link-url" }, link.url),
    el("p", {}, "Package SHA-256 (the recipient checks the file with sha256sum):"),
    el("code", { class: "link-sha256" }, link.package_sha256 || ""),
    el("p", {}, "Key fingerprint (send it apart from the link):"),
    el("code", { class: "link-fingerprint" }, link.key_fingerprint),
    el("p", {}, el("a", { href: "", class: "button" }, "Done: show the link in the list")),
  );
  form.append(box);
}

for (const form of document.querySelectorAll("form.link-form")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = form.querySelector(".form-status");
    const body = {
      recipient: form.elements.recipient.value,
      expires_in_hours: Number(form.elements.expires_in_hours.value),
    };
    if (form.elements.purpose.value.trim()) body.purpose = form.elements.purpose.value;
    say(status, "Creating the link…");
    try {
      const link = await api("POST", `/api/v1/exports/${encodeURIComponent(form.dataset.export)}/links`, body);
      say(status, "Link created.");
      shownOnce(form, link);
    } catch (error) {
      say(status, failure(error), true);
    }
  });
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.revoke");
  if (!button) return;
  if (button.dataset.armed === undefined) {
    // A second press confirms: the link stops working at once and cannot be brought back.
    button.dataset.armed = "";
    button.textContent = `Confirm: revoke ${button.dataset.recipient}'s link`;
    return;
  }
  button.disabled = true;
  try {
    await api("DELETE", `/api/v1/exports/${encodeURIComponent(button.dataset.export)}/links/${encodeURIComponent(button.dataset.link)}`);
    window.location.reload();
  } catch (error) {
    button.replaceWith(el("span", { class: "error" }, failure(error)));
  }
});
