// The incident pages' own behaviour: opening an incident (the time typed is the browser's local
// time, sent as an exact instant) and then going to it; the link form names the kind of what was
// chosen (an evidence item or an alarm). Everything goes through the API with the CSRF token.
import { ApiError, api } from "./common.js";

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

const create = document.getElementById("new-incident");
if (create) {
  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = create.querySelector(".form-status");
    const button = create.querySelector("button[type=submit]");
    const body = {};
    for (const field of create.elements) {
      if (!field.name) continue;
      let value = field.value;
      if (field.dataset.type === "local-time") value = value ? new Date(value).toISOString() : "";
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
