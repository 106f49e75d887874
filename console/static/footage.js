// The footage page: the player, and the original's download behind the same stated reason.
import { pageData } from "./common.js";
import { Player, contentUrl } from "./player.js";

const data = pageData("footage-data");
const $ = (id) => document.getElementById(id);

if (data.can_play) {
  const player = new Player({
    video: $("video"),
    select: $("source"),
    reasonForm: $("reason-form"),
    reasonInput: $("reason"),
    reasonCancel: $("reason-cancel"),
    note: $("player-note"),
    clipId: data.clip.id,
  });
  const first = $("source").options[0];
  if (first && first.value !== "original") player.show(first.value);
  else player.say("No redacted copy yet: choose the original and say why to watch it.");

  const download = $("original-download");
  if (download) {
    download.addEventListener("click", (event) => {
      if (player.reason) {
        download.href = contentUrl(data.clip.id, player.reason);
        return; // the browser follows the link with the reason on it
      }
      event.preventDefault();
      player.say("Say why you need the original first (the form above), then download it.");
      $("reason-form").hidden = false;
      $("reason").focus();
    });
  }
}
