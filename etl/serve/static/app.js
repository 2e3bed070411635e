// The dashboard: a runs list (#/) and a run page (#/run/<id>) drawn from the JSON API and
// refreshed by a small fetch loop. Text from the API is only ever set as textContent.
"use strict";

const API = "/api/v1";
const REFRESH_RUN_MS = 1000;
const REFRESH_LIST_MS = 3000;
let timer = null;
let generation = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(2)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const num = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));
const pct = (share) => `${Math.round((share || 0) * 1000) / 10}%`;
const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "-");
const badge = (status) => el("span", { class: `badge ${status}`, text: status });

async function getJSON(path) {
  const response = await fetch(API + path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function fill(node, ...children) {
  node.replaceChildren(...children.filter((child) => child !== null && child !== undefined));
}

function setLive(text) {
  document.getElementById("live").textContent = text;
}

function schedule(fn, ms) {
  clearTimeout(timer);
  timer = setTimeout(fn, ms);
}

// -- runs list ---------------------------------------------------------------------------
async function showRuns(mine) {
  const main = document.getElementById("main");
  let page, queues, pipelines;
  try {
    [page, queues, pipelines] = await Promise.all([
      getJSON("/runs?limit=50"), getJSON("/queues"), getJSON("/pipelines")]);
  } catch (error) {
    setLive(`cannot read the API: ${error.message}`);
    if (mine === generation) schedule(() => showRuns(mine), REFRESH_LIST_MS);
    return;
  }
  if (mine !== generation) return;
  document.getElementById("mode").textContent = `${pipelines.mode} mode`;
  const rows = page.runs.map((run) => el("tr", { "data-run": run.run_id },
    el("td", {}, el("a", { href: `#/run/${encodeURIComponent(run.run_id)}`, text: run.run_id })),
    el("td", { text: run.pipeline }),
    el("td", {}, badge(run.status)),
    el("td", { class: "num", text: run.shards }),
    el("td", { class: "num hide-narrow", text: num(run.source_rows) }),
    el("td", { class: "hide-narrow", text: when(run.created_at) })));
  fill(main,
    el("h1", { text: "Runs" }),
    page.runs.length ? el("div", { class: "card scroll" }, el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, el("th", { text: "run" }), el("th", { text: "pipeline" }),
        el("th", { text: "status" }), el("th", { class: "num", text: "shards" }),
        el("th", { class: "num hide-narrow", text: "source rows" }),
        el("th", { class: "hide-narrow", text: "started" }))),
      el("tbody", {}, rows)))
      : el("p", { class: "muted", id: "no-runs",
        text: "No runs yet. Start one with POST /api/v1/task/start (see /openapi.json)." }),
    queueCard(queues),
    el("h2", { text: "Pipelines this server may start" }),
    el("ul", {}, pipelines.pipelines.map((spec) => el("li", {}, el("code", { text: spec })))),
    pipelines.can_start ? null
      : el("p", { class: "notice", text: "Read-only: the server has no api_token." }));
  setLive(`updated ${new Date().toLocaleTimeString()}`);
  schedule(() => showRuns(mine), REFRESH_LIST_MS);
}

function queueCard(queues) {
  if (!queues || !queues.queues) return null;
  return el("div", {},
    el("h2", { text: `Queues on ${queues.broker}` }),
    el("div", { class: "card scroll" }, el("table", { id: "queues" },
      el("thead", {}, el("tr", {}, ["queue", "ready", "in flight", "delayed", "dead letters", "consumers"]
        .map((name, i) => el("th", { class: i ? "num" : null, text: name })))),
      el("tbody", {}, queues.queues.map((q) => el("tr", { "data-queue": q.queue },
        el("td", { text: q.queue }), el("td", { class: "num", text: num(q.ready) }),
        el("td", { class: "num", text: num(q.in_flight) }), el("td", { class: "num", text: num(q.delayed) }),
        el("td", { class: "num dead", text: num(q.dead_letters) }),
        el("td", { class: "num", text: num(q.consumers) })))))));
}

// -- one run -----------------------------------------------------------------------------
async function showRun(runId, mine) {
  const main = document.getElementById("main");
  let status, errors, quarantine, letters, queues;
  try {
    status = await getJSON(`/task/status/${encodeURIComponent(runId)}`);
    [errors, quarantine, letters, queues] = await Promise.all([
      getJSON(`/runs/${encodeURIComponent(runId)}/errors?limit=20`),
      getJSON(`/runs/${encodeURIComponent(runId)}/quarantine`),
      getJSON(`/runs/${encodeURIComponent(runId)}/dead-letters`),
      getJSON("/queues")]);
  } catch (error) {
    if (mine !== generation) return;
    if (error.status === 404) {
      main.replaceChildren(el("h1", { text: runId }), el("p", { class: "notice", text: error.message }));
      return;
    }
    setLive(`cannot read the API: ${error.message}`);
    schedule(() => showRun(runId, mine), REFRESH_RUN_MS * 3);
    return;
  }
  if (mine !== generation) return;
  const p = status.progress;
  fill(main,
    el("p", {}, el("a", { href: "#/", text: "All runs" })),
    el("h1", { id: "run-id", text: status.run_id }),
    el("p", {}, badge(status.status), " ", el("span", { class: "muted", text: `${status.pipeline} - ${status.plan}` })),
    el("div", { class: "card" },
      bar("overall", p.share, status.status, `${pct(p.share)} - ${num(p.rows_done)} of ${num(p.rows_total)} rows`),
      el("div", { class: "facts", style: "margin-top:.5rem" },
        fact("shards done", `${p.shards_done}/${p.shards_total}`),
        fact("rows loaded", num(p.rows_loaded)),
        fact("rows quarantined", num(p.rows_quarantined)),
        fact("elapsed", `${status.timings.elapsed_seconds.toFixed(1)} s`),
        fact("started", when(status.timings.created_at)),
        status.worker ? fact("child process", `pid ${status.worker.pid}${status.worker.alive ? "" : " (ended)"}`) : null)),
    el("h2", { text: "Shards" }),
    el("div", { class: "card shards", id: "shards" }, status.shard_states.map(shardRow)),
    el("h2", { text: `Errors (${errors.errors.length})` }),
    errors.errors.length ? el("ul", { class: "errors", id: "errors" }, errors.errors.map(errorItem))
      : el("p", { class: "muted", id: "no-errors", text: "No errors." }),
    el("h2", { text: `Quarantine (${num(quarantine.rows)} rows)` }),
    quarantine.reasons.length ? el("div", { class: "card scroll" }, el("table", { id: "quarantine" },
      el("thead", {}, el("tr", {}, el("th", { text: "stage" }), el("th", { text: "reason" }),
        el("th", { class: "num", text: "rows" }))),
      el("tbody", {}, quarantine.reasons.map((r) => el("tr", {},
        el("td", { text: r.stage || "-" }), el("td", { class: "wrap reason", text: r.reason || "-" }),
        el("td", { class: "num", text: num(r.rows) }))))))
      : el("p", { class: "muted", text: "Nothing quarantined." }),
    letters.dead_letters ? el("div", {},
      el("h2", { text: `Dead letters (${letters.dead_letters.length})` }),
      el("div", { class: "card scroll" }, el("table", { id: "dead-letters" },
        el("thead", {}, el("tr", {}, ["actor", "shard", "batch", "retries", "error"].map((n) => el("th", { text: n })))),
        el("tbody", {}, letters.dead_letters.map((d) => el("tr", {},
          el("td", { text: d.actor }), el("td", { text: d.shard }), el("td", { text: d.batch }),
          el("td", { text: d.retries }), el("td", { class: "wrap", text: d.error }))))))) : null,
    queueCard(queues));
  setLive(`updated ${new Date().toLocaleTimeString()}`);
  const again = status.status === "running" ? REFRESH_RUN_MS : REFRESH_RUN_MS * 5;
  schedule(() => showRun(runId, mine), again);
}

function fact(label, value) {
  return el("div", {}, el("span", { class: "muted", text: label }), el("b", { text: value }));
}

function bar(id, share, status, label) {
  const value = Math.round((share || 0) * 100);
  return el("div", { class: `bar ${status}`, id: `bar-${id}`, role: "progressbar", "aria-valuemin": 0,
    "aria-valuemax": 100, "aria-valuenow": value, "data-share": share === null ? "" : share },
  el("div", { class: "fill", style: `width:${value}%` }), el("span", { class: "label", text: label }));
}

function shardRow(s) {
  const share = s.status === "done" ? 1 : s.share_done;
  const moved = s.rows_loaded + s.rows_quarantined;
  const loadedPart = moved ? (100 * s.rows_loaded) / moved : 0;
  return [
    el("span", { text: `shard ${s.shard}` }),
    el("div", { class: "shard", "data-shard": s.shard, "data-status": s.status },
      bar(`shard-${s.shard}`, share, s.status, `${pct(share)} ${s.status}`)),
    el("div", { class: "rows" },
      el("div", { class: "split", title: "loaded vs quarantined" },
        el("div", { class: "loaded", style: `width:${loadedPart}%` }),
        el("div", { class: "quarantined", style: `width:${moved ? 100 - loadedPart : 0}%` })),
      el("span", { class: "shard-rows", text: `${num(s.rows_loaded)} loaded, ${num(s.rows_quarantined)} quarantined` }),
      s.last_error && s.status !== "done" ? el("div", { class: "wrap", text: s.last_error }) : null),
  ];
}

function errorItem(e) {
  return el("li", { class: "error" },
    el("div", {}, el("b", { text: `${e.stage} shard ${e.shard ?? "-"} batch ${e.batch ?? "-"}` }), " ",
      el("span", { class: "muted", text: when(e.at) })),
    el("div", { class: "message", text: `${e.error_type}: ${e.message}` }),
    el("details", {}, el("summary", { text: "context and traceback" }),
      el("pre", { text: JSON.stringify(e.context, null, 2) }), el("pre", { text: e.traceback })));
}

// -- routing -----------------------------------------------------------------------------
function route() {
  generation += 1;
  clearTimeout(timer);
  const match = location.hash.match(/^#\/run\/(.+)$/);
  if (match) showRun(decodeURIComponent(match[1]), generation);
  else showRuns(generation);
}

window.addEventListener("hashchange", route);
getJSON("/pipelines").then((p) => { document.getElementById("mode").textContent = `${p.mode} mode`; },
  () => {});
route();
