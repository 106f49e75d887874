// The custody page's verification: asks for one with POST /api/v1/custody/verify as the signed-in
// person (a job: the one already running, if any, is the answer), shows its progress while it runs
// and what it found when done, finding by finding (text only, never parsed as HTML). And the release
// of an item held for review, with the reader's reason (POST /api/v1/evidence/{id}/quarantine-release).
import { ApiError, api, el, moment } from "./common.js";

const result = document.getElementById("verify-result");

async function run(body, button) {
  const buttons = [...document.querySelectorAll("#verify-item, #verify-all, #verify-ledger")];
  buttons.forEach((b) => (b.disabled = true));
  result.replaceChildren(el("p", {}, "Verifying… (", button.textContent, ")"));
  result.dataset.state = "running";
  try {
    let report = await api("POST", "/api/v1/custody/verify", body);
    while (report.status === "running") {
      result.replaceChildren(el("p", {}, "Verifying… (", button.textContent, "): ", report.progress || "waiting to start"));
      await new Promise((resolve) => setTimeout(resolve, 1000));
      report = await api("GET", `/api/v1/custody/verify/${encodeURIComponent(report.id)}`);
    }
    if (report.status === "failed") throw new ApiError(500, report.error || "the verification failed");
    const what = report.item_id ? `the ledger and item ${report.item_id}` : report.objects_checked ? "the ledger and every stored object" : "the ledger";
    const when = moment(report.finished_at);
    const head = report.ok
      ? el("p", { class: "verified-ok" }, `Intact: ${what} verified (${report.entries_checked} custody entries) at `, when, ".")
      : el("p", { class: "finding" }, `${report.problems.length} finding(s) in ${what} at `, when, ":");
    const list = el("ul", { id: "verify-findings" }, report.problems.map((p) => el("li", { class: "finding" }, el("strong", {}, p.kind.replaceAll("_", " ")), ` at ${p.where}: ${p.detail}`)));
    result.replaceChildren(head, list);
    result.dataset.state = report.ok ? "ok" : "problems";
  } catch (error) {
    result.replaceChildren(el("p", { class: "error" }, error instanceof ApiError ? `Not done: ${error.message}` : "Not done: the service could not be reached."));
    result.dataset.state = "error";
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

const one = document.getElementById("verify-item");
if (one) one.addEventListener("click", () => run({ item_id: one.dataset.item, check_objects: true }, one));
const all = document.getElementById("verify-all");
if (all) all.addEventListener("click", () => run({ check_objects: true }, all));
const ledger = document.getElementById("verify-ledger");
if (ledger) ledger.addEventListener("click", () => run({ check_objects: false }, ledger));

const releaseForm = document.getElementById("release-form");
if (releaseForm) {
  releaseForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = document.getElementById("release-result");
    const button = document.getElementById("release-item");
    // One line: a reason on the record holds no line breaks.
    const reason = document.getElementById("release-reason").value.replace(/\s+/g, " ").trim();
    button.disabled = true;
    try {
      const path = `/api/v1/evidence/${encodeURIComponent(releaseForm.dataset.item)}/quarantine-release`;
      const done = await api("POST", path, { reason });
      out.replaceChildren(el("p", { class: "verified-ok" }, `Released: custody entry #${done.custody_entry} records it.`));
      out.dataset.state = "released";
      window.location.reload();
    } catch (error) {
      out.replaceChildren(el("p", { class: "error" }, error instanceof ApiError ? `Not released: ${error.message}` : "Not released: the service could not be reached."));
      out.dataset.state = "error";
      button.disabled = false;
    }
  });
}
