// The clip player both footage screens share: a <video> over the API's content route (HTTP Range,
// so seeking fetches only what it needs; every read is a custody entry). The redacted copy plays
// first; the original only after the person says why, and that reason travels with every read.

export const contentUrl = (id, reason) =>
  `/api/v1/evidence/${encodeURIComponent(id)}/content` + (reason ? `?reason=${encodeURIComponent(reason)}` : "");

export class Player {
  constructor({ video, select, reasonForm, reasonInput, reasonCancel, note, clipId, onSource }) {
    Object.assign(this, { video, select, reasonForm, reasonInput, note, clipId, onSource });
    this.reason = null;
    this.current = null;
    this.previous = select ? select.value : null;
    if (select) select.addEventListener("change", () => this.choose(select.value));
    if (reasonForm) {
      reasonForm.addEventListener("submit", (event) => {
        event.preventDefault();
        const text = reasonInput.value.trim();
        if (text.length < 10) {
          this.say("Say why in 10 characters or more.");
          reasonInput.focus();
          return;
        }
        this.reason = text;
        reasonForm.hidden = true;
        this.show("original");
      });
      reasonCancel?.addEventListener("click", () => {
        reasonForm.hidden = true;
        if (select) select.value = this.previous;
      });
    }
  }

  say(text) {
    if (this.note) this.note.textContent = text;
  }

  choose(value) {
    if (value === "original" && !this.reason) {
      this.reasonForm.hidden = false;
      this.reasonInput.focus();
      return;
    }
    this.show(value);
  }

  show(value) {
    const at = this.video.currentTime || 0;
    const original = value === "original";
    const id = original ? this.clipId : value;
    this.current = { id, original };
    if (this.select) {
      this.select.value = value;
      this.previous = value;
    }
    this.video.src = contentUrl(id, original ? this.reason : null);
    this.video.addEventListener(
      "loadedmetadata",
      () => {
        if (at) this.video.currentTime = Math.min(at, this.video.duration || at);
      },
      { once: true },
    );
    this.video.dataset.showing = original ? "original" : "redacted";
    this.say(original ? "Showing the ORIGINAL: every read is recorded with your reason." : "Showing the redacted copy.");
    if (this.onSource) this.onSource(this.current);
  }
}
