// The runs list: its rows (statuses and counts) refreshed every 3 s, the page kept.
// A plain poll, not the run page's long-poll: a list (a status filter, a search over the
// newest runs, a page of them) has no cheap change signal -- its rows' live versions
// would cost about what the rows do -- so a hidden tab skips its turns instead.
const table = document.getElementById("runs");
const rows = document.getElementById("rows");

async function refresh() {
  if (document.hidden) return;
  try {
    const res = await fetch(table.dataset.refresh, { credentials: "same-origin" });
    if (res.ok) rows.innerHTML = await res.text(); // server-rendered, every value escaped
  } catch (_) {
    // the next tick tries again
  }
}

if (table && rows) setInterval(refresh, 3000);
