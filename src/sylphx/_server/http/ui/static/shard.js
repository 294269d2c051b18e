// The log viewer: "Follow live" streams the log (fetch + a reader) and appends it as text.
const button = document.getElementById("follow");
const log = document.getElementById("log");

async function follow() {
  button.disabled = true;
  button.textContent = "Following…";
  log.textContent = "";
  const res = await fetch(button.dataset.src, { credentials: "same-origin" });
  if (!res.ok || !res.body) {
    button.textContent = `Follow failed (${res.status})`;
    return;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(value); // a text node: never parsed as HTML
    if (atEnd) log.scrollTop = log.scrollHeight;
  }
  button.textContent = "Ended";
}

if (button && log) button.addEventListener("click", follow);
