// Forms that act through the API: <form data-api="POST /api/v1/users"> sends its fields as JSON
// with the session's CSRF token, and says what happened in its status line. The path may name
// fields, /api/v1/devices/{id}, filled from the form. data-show="token,mqtt_password" shows those
// fields of the answer once (a secret the service keeps only as a hash); data-reload reloads the
// page after a success. Fields: data-type="bool" (a checkbox or "true"/"false"), data-type="int";
// data-optional fields that are left empty are not sent, data-empty="null" ones send null; data-const="value" sends a fixed value.
import { ApiError, api, el } from "./common.js";

function collect(form) {
  const body = {};
  for (const field of form.elements) {
    if (!field.name || field.disabled || field.dataset.path === "only") continue;
    if ((field.type === "radio" || field.type === "checkbox") && field.dataset.type !== "bool" && !field.checked) continue;
    let value = field.dataset.const !== undefined ? field.dataset.const : field.value;
    if (field.dataset.type === "bool") value = field.type === "checkbox" ? field.checked : value === "true";
    else if (field.dataset.type === "int") value = value === "" ? null : Number(value);
    if ((value === "" || value === null) && field.dataset.optional !== undefined) continue;
    if (value === "" && field.dataset.empty === "null") value = null;
    body[field.name] = value;
  }
  return body;
}

function target(form) {
  const [method, template] = form.dataset.api.split(" ");
  const path = template.replace(/\{(\w+)\}/g, (_, name) => encodeURIComponent(form.elements[name].value));
  return { method, path };
}

function showOnce(form, answer) {
  const names = form.dataset.show.split(",");
  const box = el("div", { class: "secret", role: "status" });
  box.append(el("p", {}, el("strong", {}, "Shown once: copy it now. The service keeps only a hash.")));
  for (const name of names) {
    if (answer[name] === undefined || answer[name] === null) continue;
    box.append(el("p", {}, name.replaceAll("_", " ")), el("code", { "data-secret": name }, String(answer[name])));
  }
  form.querySelector(".secret")?.remove();
  form.append(box);
}

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-api]");
  if (!form) return;
  event.preventDefault();
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  const status = form.querySelector(".form-status") || form.appendChild(el("p", { class: "form-status", role: "status" }));
  const buttons = [...form.querySelectorAll("button")];
  buttons.forEach((b) => (b.disabled = true));
  status.classList.remove("error");
  status.textContent = "Sending…";
  try {
    const { method, path } = target(form);
    const answer = await api(method, path, method === "DELETE" ? undefined : collect(form));
    status.textContent = form.dataset.done || "Done.";
    if (form.dataset.show) showOnce(form, answer || {});
    if (form.dataset.reload !== undefined) window.setTimeout(() => window.location.reload(), 600);
    else if (form.dataset.reset !== undefined) form.reset();
  } catch (error) {
    status.classList.add("error");
    status.textContent = error instanceof ApiError ? `Not done: ${error.message}` : "Not done: the service could not be reached.";
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
});
