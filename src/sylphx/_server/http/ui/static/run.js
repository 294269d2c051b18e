// A run's page while it is active, kept current by a long-poll: each request carries the
// run's live version the page has (data-version, then each answer's); the server answers
// as soon as the run changes -- the header and every shard cell in one small JSON, only
// cells that changed are touched -- or after WAIT seconds with "no change", and the page
// asks again at once. After an error (the server away or restarting, too many waiting:
// 429/503) it waits 1 s, 2 s, 4 s ... up to 30 s first. The failure groups and the
// timeline come as a fragment after a change (at most every 5 s) and once at the end.
// Elapsed time grows with no change to the run: the page counts it on between answers.
// The page itself is never reloaded.
const WAIT = 25; // seconds the server may hold a request (runs/live.py: at most 25)
const DETAILS_EVERY = 5000;
const MAX_BACKOFF = 30000;
const section = document.getElementById("run");
const base = `/ui/runs/${encodeURIComponent(section.dataset.run)}`;
const grid = document.getElementById("grid");
const header = document.getElementById("header");
const details = document.getElementById("details");
const cancel = document.getElementById("cancel");
const retry = document.getElementById("retry");
let version = section.dataset.version;
let lastDetails = 0;
let detailsTimer = null;
let ticker = null;

function paint(cells) {
  const links = grid.children;
  for (let i = 0; i < cells.length && i < links.length; i++) {
    const [state, glyph, title] = cells[i];
    const a = links[i];
    const cls = `cell s-${state}`;
    if (a.className !== cls) a.className = cls;
    if (a.textContent !== glyph) a.textContent = glyph;
    if (a.title !== title) a.title = title;
  }
}

// gantt.fmt_seconds: 0.5s, 45s, 2m, 2m30s, 1h, 1h30m
function fmtSeconds(s) {
  if (s < 60) return `${Math.round(s * 10) / 10}s`;
  const whole = Math.round(s);
  const pad = (n) => String(n).padStart(2, "0");
  if (whole < 3600) {
    const m = Math.floor(whole / 60);
    const rest = whole % 60;
    return rest ? `${m}m${pad(rest)}s` : `${m}m`;
  }
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  return m ? `${h}h${pad(m)}m` : `${h}h`;
}

function tickElapsed() {
  clearInterval(ticker);
  const dd = document.getElementById("elapsed");
  if (!dd || dd.dataset.seconds === undefined) return;
  const from = parseFloat(dd.dataset.seconds);
  const t0 = performance.now();
  ticker = setInterval(() => {
    dd.textContent = fmtSeconds(from + (performance.now() - t0) / 1000);
  }, 1000);
}

async function fragment(url, into) {
  const res = await fetch(url, { credentials: "same-origin" });
  if (res.ok) into.innerHTML = await res.text(); // server-rendered, every value escaped
}

function refreshDetails() {
  if (detailsTimer !== null) return; // one is due already
  const due = Math.max(0, lastDetails + DETAILS_EVERY - Date.now());
  detailsTimer = setTimeout(async () => {
    detailsTimer = null;
    lastDetails = Date.now();
    try {
      await fragment(`${base}/details`, details);
    } catch (_) {
      // the next change asks again
    }
  }, due);
}

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

async function follow() {
  let backoff = 0;
  let live = null;
  for (;;) {
    try {
      const url = `${base}/live?version=${encodeURIComponent(version)}&wait=${WAIT}`;
      const res = await fetch(url, { credentials: "same-origin" });
      if (!res.ok || res.redirected) throw new Error(`live: ${res.status}`);
      live = await res.json(); // (signed out: the sign-in page, not JSON: backs off)
      backoff = 0;
    } catch (_) {
      backoff = Math.min(backoff ? backoff * 2 : 1000, MAX_BACKOFF);
      await sleep(backoff);
      continue;
    }
    if (!live.changed) continue; // the bound: ask again at once
    version = live.version;
    header.innerHTML = live.header; // server-rendered, escaped
    tickElapsed();
    paint(live.cells);
    section.dataset.status = live.status;
    if (!live.active) break;
    refreshDetails();
  }
  clearInterval(ticker);
  clearTimeout(detailsTimer);
  section.dataset.active = "false";
  if (cancel) cancel.remove();
  if (retry) retry.classList.toggle("hidden", !live.canRetry);
  try {
    await fragment(`${base}/details`, details);
  } catch (_) {
    // the page still shows the last ones
  }
}

if (section.dataset.active === "true") {
  tickElapsed();
  follow();
}
