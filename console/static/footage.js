// The footage page: the player, and the original's download behind the same stated reason (posted
// for a one-time address, never put in the link).
import { pageData } from "./common.js";
import { Player } from "./player.js";

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
    // The reason goes in the body of a request for a one-time download address, never in this link.
    download.addEventListener("click", async (event) => {
      event.preventDefault();
      if (!player.reason) {
        player.say("Say why you need the original first (the form above), then download it.");
        $("reason-form").hidden = false;
        $("reason").focus();
        return;
      }
      try {
        const url = await player.grant("download");
        const once = document.createElement("a");
        once.href = url;
        once.download = download.dataset.name || "";
        once.hidden = true;
        document.body.append(once);
        once.click();
        once.remove();
        player.say("Downloading the original: your reason is on its custody entry.");
      } catch (error) {
        player.say(`Could not download the original: ${error.message}`);
      }
    });
  }
}
