// The incident pages' own behaviour: opening an incident (the time typed is the reader's own clock,
// its zone named beside the field and in full in its tooltip, and sent as the UTC instant the page
// says it is) and then going to it; the link form names the kind of what was chosen (an evidence
// item or an alarm). Everything goes through the API with the CSRF token.
import { ApiError, api, localZone, moment, zoneNameAt } from "./common.js";

const wallClock = (d) =>
  `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}` +
  `T${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;

/** A datetime-local field's value ("2026-07-01T10:00") read in the reader's zone: the instant, or why
 * there is none. A time the clocks skip (spring forward) is refused; one they pass twice (fall back)
 * is taken as the first, and the page says so with the instant sent. */
export function localInstant(value) {
  if (!value) return { at: null, problem: null, twice: false };
  const at = new Date(value); // a date-time without an offset is the reader's local time
  const typed = value.slice(0, 16);
  if (Number.isNaN(at.getTime())) return { at: null, problem: "not a date and time", twice: false };
  if (wallClock(at) !== typed) {
    return { at: null, problem: `${typed.replace("T", " ")} does not exist in ${localZone()} (the clocks went forward)`, twice: false };
  }
  const later = new Date(at.getTime() + 3600_000);
  return { at, problem: null, twice: wallClock(later) === typed };
}

const link = document.getElementById("link-form");
if (link) {
  const target = link.querySelector("#link-target");
  const kind = link.querySelector("#link-kind");
  const sync = () => {
    const chosen = target.selectedOptions[0];
    kind.value = (chosen && chosen.dataset.kind) || "evidence";
  };
  target.addEventListener("change", sync);
  sync();
}

// Beside a local-time field: its zone's short name for the time typed (or now), the zone in full as
// the tooltip, and the UTC instant that will be sent.
function sayZone(field) {
  const zone = document.getElementById(`${field.id}-zone`);
  const sent = document.getElementById(`${field.id}-sent`);
  const read = localInstant(field.value);
  const name = zoneNameAt(read.at || new Date());
  if (zone) {
    zone.textContent = `(${name})`;
    zone.title = `Your clock's time zone: ${localZone()}, ${name} on that date`;
  }
  field.title = `Typed in your clock's time zone, ${localZone()}`;
  field.setCustomValidity(read.problem || "");
  if (!sent) return read;
  sent.classList.toggle("error", !!read.problem);
  if (read.problem) sent.textContent = `Not a time: ${read.problem}.`;
  else if (!read.at) sent.textContent = `In your clock (${localZone()}); sent as UTC.`;
  else {
    const twice = read.twice ? ` (the clocks pass ${field.value.slice(11, 16)} twice that night: the first, ${name})` : "";
    sent.replaceChildren(`${field.value.replace("T", " ")} ${name}${twice} is sent as `, moment(read.at.toISOString()), ".");
  }
  return read;
}

const create = document.getElementById("new-incident");
if (create) {
  const localTimes = [...create.querySelectorAll("[data-type=local-time]")];
  for (const field of localTimes) {
    field.addEventListener("input", () => sayZone(field));
    sayZone(field);
  }
  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = create.querySelector(".form-status");
    const button = create.querySelector("button[type=submit]");
    const body = {};
    for (const field of create.elements) {
      if (!field.name) continue;
      let value = field.value;
      if (field.dataset.type === "local-time") {
        const read = sayZone(field);
        if (read.problem) {
          status.classList.add("error");
          status.textContent = `Not done: ${read.problem}.`;
          field.focus();
          return;
        }
        value = read.at ? read.at.toISOString() : ""; // UTC, with its "Z": an instant, not a wall clock
      }
      if (value === "" && field.dataset.optional !== undefined) continue;
      body[field.name] = value;
    }
    button.disabled = true;
    status.classList.remove("error");
    status.textContent = "Opening…";
    try {
      const made = await api("POST", "/api/v1/incidents", body);
      status.textContent = `Opened ${made.reference}.`;
      window.location.assign(create.dataset.go + encodeURIComponent(made.reference));
    } catch (error) {
      status.classList.add("error");
      status.textContent = error instanceof ApiError ? `Not done: ${error.message}` : "Not done: the service could not be reached.";
      button.disabled = false;
    }
  });
}
