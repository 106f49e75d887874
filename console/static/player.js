// The clip player both footage screens share: a <video> over the API's content route (HTTP Range,
// so seeking fetches only what it needs; every read is a custody entry). The redacted copy plays
// first; the original only after the person says why. The reason never goes in an address (history,
// download lists, proxies' logs): it is posted once for a read grant, and the address holds the grant.
import { api } from "./common.js";

export const contentUrl = (id) => `/api/v1/evidence/${encodeURIComponent(id)}/content`;

export class Player {
  constructor({ video, select, reasonForm, reasonInput, reasonCancel, note, clipId, onSource }) {
    Object.assign(this, { video, select, reasonForm, reasonInput, note, clipId, onSource });
    this.reason = null;
    this.playing = null; // the player's grant for the original: { url, until }
    this.current = null;
    // A grant that ran out while watching: ask for a new one and go on from where it stopped.
    video.addEventListener("error", () => {
      if (this.current?.original && this.reason && this.playing && this.playing.until <= Date.now() + 30000) {
        this.playing = null;
        this.show("original");
      }
    });
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
        this.playing = null; // a new reason: a new grant
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
    const current = this.current;
    const load = (src) => {
      if (this.current !== current) return; // another source was chosen meanwhile
      this.video.addEventListener(
        "loadedmetadata",
        () => {
          if (at) this.video.currentTime = Math.min(at, this.video.duration || at);
        },
        { once: true },
      );
      this.video.src = src;
      this.video.dataset.showing = original ? "original" : "redacted";
      this.say(original ? "Showing the ORIGINAL: every read is recorded with your reason." : "Showing the redacted copy.");
    };
    if (original) {
      this.grant("play")
        .then(load)
        .catch((error) => this.say(`Could not open the original: ${error.message}`));
    } else {
      load(contentUrl(id));
    }
    if (this.onSource) this.onSource(this.current);
  }

  /** An address standing for the stated reason (``POST .../read-grants``): "download" is used once,
   * "play" serves the player's ranges until it expires (then a new one is asked for). */
  async grant(use) {
    if (use === "play" && this.playing && this.playing.until > Date.now() + 30000) return this.playing.url;
    const answer = await api("POST", `/api/v1/evidence/${encodeURIComponent(this.clipId)}/read-grants`, {
      reason: this.reason,
      use,
    });
    if (use === "play") this.playing = { url: answer.url, until: Date.parse(answer.expires_at) };
    return answer.url;
  }
}
