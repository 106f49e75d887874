// Times the server wrote as RFC 3339 are shown in the reader's own clock, "14:02:03" or "2 Dec 14:02:03".
import { clock } from "./common.js";

for (const node of document.querySelectorAll("time[datetime]")) {
  const shown = clock(node.getAttribute("datetime"));
  if (shown) {
    node.title = node.getAttribute("datetime");
    node.textContent = shown;
  }
}
