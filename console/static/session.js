// The idle timeout, kept honest: something the person does (a key, the mouse) tells the service
// they are still here, at most once a minute; two minutes before the session would end for lack of
// that, a warning says so. The live stream alone never keeps a session open.
import { clock } from "./common.js";

const WARN_BEFORE_MS = 2 * 60 * 1000;
const TOUCH_EVERY_MS = 60 * 1000;

let idleEndsAt = Date.parse(document.body.dataset.idleEndsAt || "");
let lastTouch = Date.now();
let pending = false;
const warning = document.getElementById("session-warning");

async function touch() {
  if (pending) return;
  pending = true;
  try {
    const response = await fetch("/session/keepalive", {
      method: "POST",
      credentials: "same-origin",
      redirect: "manual",
      headers: { "X-CSRF-Token": document.body.dataset.csrf || "" },
    });
    if (response.ok) {
      const body = await response.json();
      idleEndsAt = Date.parse(body.idle_ends_at);
      lastTouch = Date.now();
    }
  } finally {
    pending = false;
  }
}

function activity() {
  if (Date.now() - lastTouch > TOUCH_EVERY_MS || idleEndsAt - Date.now() < WARN_BEFORE_MS) touch();
}

for (const name of ["keydown", "pointerdown", "wheel"]) {
  window.addEventListener(name, activity, { passive: true, capture: true });
}

function check() {
  if (!warning || Number.isNaN(idleEndsAt)) return;
  const left = idleEndsAt - Date.now();
  if (left <= 0) {
    warning.hidden = false;
    warning.classList.add("bad");
    warning.replaceChildren("You were signed out after a time with no activity. ");
    const link = document.createElement("a");
    link.href = "/sign-in?next=" + encodeURIComponent(location.pathname);
    link.textContent = "Sign in again";
    warning.append(link);
  } else if (left < WARN_BEFORE_MS) {
    warning.hidden = false;
    warning.textContent = `Your session ends at ${clock(new Date(idleEndsAt).toISOString())} unless you press a key or move the mouse.`;
  } else {
    warning.hidden = true;
  }
}

window.setInterval(check, 5000);
check();
