// Times the server wrote as RFC 3339 are shown in the reader's own clock with its zone's name,
// "14:02:03 GMT" or "2 Dec, 14:02:03 GMT"; the exact time and the zone in full are the element's title.
import { clock, localZone } from "./common.js";

for (const node of document.querySelectorAll("time[datetime]")) {
  const shown = clock(node.getAttribute("datetime"));
  if (shown) {
    node.title = `${node.getAttribute("datetime")} (shown in local time, ${localZone()})`;
    node.textContent = shown;
  }
}
