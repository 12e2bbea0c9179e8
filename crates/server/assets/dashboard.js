// Driftless dashboard: polls the server's JSON API every 2 s and renders it. No framework, no
// build step, nothing loaded from elsewhere.
//
// Rules this file keeps:
// - every string from the API reaches the DOM through textContent or setAttribute, never
//   through HTML parsing (the server's dashboard test rejects every API that parses HTML);
// - rows are updated in place, keyed by name, so a focused button or an open dialog survives a
//   refresh;
// - the plots draw the server's own history (GET /v1/history: one sample a second, kept an hour
//   by the server), so a page opened after a burst shows the burst; the page keeps the last
//   HISTORY_SECONDS of it, nothing more;
// - a failed poll keeps the last figures on screen, dimmed, under an error banner;
// - a 401 from any API call hides the figures and shows the sign-in form; the token typed there
//   is read once, sent in a JSON body to POST /v1/session (same origin), and cleared from the
//   field: it is never kept in a variable beyond that request, in web storage, in a cookie the
//   script can read, or in a URL (the server's dashboard test rejects the APIs that would). The
//   session cookie the server sets is HttpOnly: the script never sees it.
"use strict";

const POLL_MS = 2000;
const HISTORY_SECONDS = 15 * 60; // the plots' window, out of the hour the server keeps
const WINDOW_MS = HISTORY_SECONDS * 1000;
const SPAN_MS_MIN = 5 * 60 * 1000; // the narrowest the plots get
const REQUEST_TIMEOUT_MS = 5000;
const GROUPS_MAX = 200; // groups described per poll; more are counted, not shown
const AUDIT_ROWS = 50; // newest audit records shown
const SERIES_MAX = 8; // lines per plot (the largest series); the palette has 8 colours
const SVG_NS = "http://www.w3.org/2000/svg";

const ui = {
  // The server's samples (GET /v1/history), oldest first: `times` and, per family
  // (produce_rate, lag_events, dead_letters, applied_rate), name → one value (or null) per time.
  history: { times: [], families: {}, merged: {}, startedMs: 0, error: null },
  lastSuccess: 0,
  signInNeeded: false, // a 401 was answered; polling waits for a sign-in
};

// ---- DOM helpers -----------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes (`text` sets textContent) and children (strings become text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "testid") node.dataset.testid = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c);
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

/** Sets an element's text only when it changed (keeps selections and screen readers calm). */
function setText(node, text) {
  const s = String(text);
  if (node.textContent !== s) node.textContent = s;
}

/**
 * Makes `parent`'s children match `items`, in order, reusing the child whose data-key matches
 * the item's key: `create(item)` builds a new child, `update(child, item)` refreshes one.
 */
function syncChildren(parent, items, keyOf, create, update) {
  const old = new Map();
  for (const child of parent.children) old.set(child.dataset.key, child);
  let cursor = parent.firstElementChild;
  for (const item of items) {
    const key = keyOf(item);
    let node = old.get(key);
    if (node) old.delete(key);
    else {
      node = create(item);
      node.dataset.key = key;
    }
    if (node === cursor) cursor = cursor.nextElementSibling;
    else parent.insertBefore(node, cursor);
    update(node, item);
  }
  for (const node of old.values()) node.remove();
}

/** A table row whose cells are reachable by name: `row.cells_[name]`. */
function row(testid, className, names, numeric) {
  const tr = el("tr", { testid, class: className });
  tr.cells_ = {};
  for (const name of names) {
    const td = el("td", { class: numeric.includes(name) ? "num" : null });
    tr.cells_[name] = td;
    tr.append(td);
  }
  return tr;
}

function stateBadge(state) {
  const s = String(state || "unknown");
  return el("span", { class: `state state-${s.replace(/[^a-z-]/g, "")}`, text: s });
}

/** Rebuilds a cell from `build()` (nodes; nulls are skipped) only when `inputs` changed. */
function fill(td, inputs, build) {
  const signature = JSON.stringify(inputs);
  if (td.dataset.sig === signature) return;
  td.dataset.sig = signature;
  td.replaceChildren(...build().filter((n) => n !== null && n !== undefined));
}

// ---- formatting ----------------------------------------------------------------------------

const ints = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function fmtInt(n) {
  return ints.format(Number(n) || 0);
}

function fmtRate(r) {
  if (r === undefined) return "—";
  if (r >= 100) return ints.format(r);
  return r.toFixed(r >= 10 ? 1 : 2).replace(/\.?0+$/, "") || "0";
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n) || 0;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** A duration as people say it: `340 ms`, `1.4 s`, `42 s`, `2 min 3 s`, `3 h 5 min`; never `0 s`. */
function fmtDuration(ms) {
  const n = Math.max(0, Math.round(Number(ms) || 0));
  if (n < 1000) return `${n} ms`;
  const s = n / 1000;
  if (s < 10) return `${s.toFixed(1).replace(/\.0$/, "")} s`;
  if (s < 120) return `${Math.round(s)} s`;
  const whole = Math.round(s);
  const m = Math.floor(whole / 60);
  if (m < 120) return `${m} min ${whole - m * 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function fmtClock(ms) {
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()]
    .map((n) => String(n).padStart(2, "0"))
    .join(":");
}

function fmtAgo(ms) {
  return ms > 0 ? `${fmtDuration(Date.now() - ms)} ago` : "never";
}

// ---- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(method, path, status, detail) {
    super(`${method} ${path} answered ${status}${detail ? `: ${detail}` : ""}`);
    this.status = status;
  }
}

class Unreachable extends Error {}

const seg = encodeURIComponent;

/**
 * A request to the API; resolves to the parsed JSON (or null for 204), rejects otherwise. A
 * `body` is sent as JSON with its content type. Only this origin is ever asked (paths only).
 */
async function api(method, path, body) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      cache: "no-store",
      credentials: "same-origin",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: abort.signal,
    });
  } catch (e) {
    const why = abort.signal.aborted ? `no answer within ${REQUEST_TIMEOUT_MS} ms` : e.message;
    throw new Unreachable(why);
  } finally {
    clearTimeout(timer);
  }
  const text = await response.text();
  if (!response.ok) {
    let detail = text.slice(0, 300);
    try {
      detail = JSON.parse(text).detail || detail;
    } catch (_) {
      // not a problem document: keep the text
    }
    throw new ApiError(method, path, response.status, detail);
  }
  return text ? JSON.parse(text) : null;
}

const get = (path) => api("GET", path);

/** A group's description, or null when it vanished between the list and this request. */
async function describeGroup(name) {
  try {
    return await get(`/v1/groups/${seg(name)}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

/**
 * The reconciliations: none when the server has no such endpoint (404); an error of that
 * endpoint alone is shown in its panel rather than failing the whole refresh.
 */
async function reconciliations() {
  try {
    const list = await get("/v1/reconciliations");
    return { list: Array.isArray(list) ? list : [], error: null };
  } catch (e) {
    if (e instanceof ApiError) return { list: [], error: e.status === 404 ? null : e.message };
    throw e;
  }
}

/**
 * The newest audit records: none when the server has no audit trail (404); a refusal (403: this
 * principal may not read it) or another error of that endpoint alone is shown in its panel.
 */
async function auditTrail() {
  try {
    const list = await get(`/v1/audit?limit=${AUDIT_ROWS}`);
    return { list: Array.isArray(list) ? list : [], error: null };
  } catch (e) {
    if (e instanceof ApiError && e.status !== 401) {
      return { list: [], error: e.status === 404 ? null : e.message };
    }
    throw e;
  }
}

/**
 * The reconciliations with their kept runs (the list shows only the latest run; the runs,
 * kept across restarts, count the corrections a reconciliation appended to its sink's topics).
 */
async function reconciliationRuns(list) {
  return Promise.all(
    list.map(async (r) => {
      try {
        return await get(`/v1/reconciliations/${seg(r.name)}`);
      } catch (e) {
        if (e instanceof ApiError && e.status !== 401) return r;
        throw e;
      }
    }),
  );
}

/**
 * Brings `ui.history` up to date from GET /v1/history: the whole window on the first call, then
 * only the seconds since the newest sample held. An error of that endpoint alone (404 from an
 * older server, 403) is shown in the plots instead of failing the refresh.
 */
async function refreshHistory() {
  const h = ui.history;
  const newest = h.times.length ? h.times[h.times.length - 1] : 0;
  const since = newest ? Math.ceil((Date.now() - newest) / 1000) + 5 : HISTORY_SECONDS;
  let answer;
  try {
    answer = await get(`/v1/history?seconds=${Math.max(1, Math.min(HISTORY_SECONDS, since))}`);
  } catch (e) {
    if (e instanceof ApiError && e.status !== 401) {
      h.error = e.message;
      return;
    }
    throw e;
  }
  h.error = null;
  if (answer.started_ms !== h.startedMs) {
    // A new server process: its history replaces the old one's.
    h.times = [];
    h.families = {};
    h.startedMs = answer.started_ms;
  }
  const fresh = answer.times_ms.map((t, i) => [t, i]).filter(([t]) => t > newest);
  for (const family of ["produce_rate", "lag_events", "dead_letters", "applied_rate"]) {
    const got = (answer[family] && answer[family].series) || {};
    const held = h.families[family] || (h.families[family] = new Map());
    h.merged[family] = (answer[family] && answer[family].merged_into_other) || 0;
    for (const name of Object.keys(got)) {
      if (!held.has(name)) held.set(name, h.times.map(() => null));
    }
    for (const [name, values] of held) {
      const from = got[name];
      for (const [, i] of fresh) values.push(from ? from[i] : null);
    }
  }
  for (const [t] of fresh) h.times.push(t);
  // Keep the window: drop samples older than it, and series left with no value.
  const cut = h.times.findIndex((t) => t >= h.times[h.times.length - 1] - WINDOW_MS);
  if (cut > 0) {
    h.times.splice(0, cut);
    for (const held of Object.values(h.families)) {
      for (const [name, values] of held) {
        values.splice(0, cut);
        if (values.every((v) => v === null)) held.delete(name);
      }
    }
  }
}

/** The newest value of a series of the server's history (undefined when it has none). */
function latest(family, name) {
  const values = ui.history.families[family] && ui.history.families[family].get(name);
  if (!values) return undefined;
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
  return undefined;
}

// ---- polling -------------------------------------------------------------------------------

let timer = null;
let polling = false;
let pollAgain = false;

/** One refresh of every panel; then the next in POLL_MS (or at once if asked for meanwhile). */
async function poll() {
  if (ui.signInNeeded) return; // resumed by a sign-in
  if (polling) {
    pollAgain = true;
    return;
  }
  polling = true;
  clearTimeout(timer);
  try {
    const [topics, groupNames, sources, sinks, recs, audit] = await Promise.all([
      get("/v1/topics"),
      get("/v1/groups"),
      get("/v1/sources"),
      get("/v1/sinks"),
      reconciliations(),
      auditTrail(),
      refreshHistory(),
    ]);
    const t = Date.now();
    const described = await Promise.all(groupNames.slice(0, GROUPS_MAX).map(describeGroup));
    const groups = described.filter(Boolean);
    const queues = await Promise.all(groups.filter((g) => g.dead_letters > 0).map(deadLetters));
    const runs = await reconciliationRuns(recs.list);
    renderProjections(sinks, groups, runs, recs.error);
    renderFlow(sources, topics, sinks, recs.list);
    renderTopics(topics, sinks, runs, sources);
    renderGroups(groups, groupNames.length, sinks);
    renderDlq(queues.filter((q) => q.letters.length > 0));
    renderSources(sources);
    renderReconciliations(recs);
    renderAudit(audit);
    renderCharts(t);
    succeeded(t);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signInNeeded();
    else failed(e);
  } finally {
    polling = false;
    if (!ui.signInNeeded) timer = setTimeout(poll, pollAgain ? 0 : POLL_MS);
    pollAgain = false;
  }
}

/** A group's dead letters (none when the group vanished meanwhile). */
async function deadLetters(g) {
  try {
    return { group: g.group, letters: await get(`/v1/groups/${seg(g.group)}/dlq`) };
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return { group: g.group, letters: [] };
    throw e;
  }
}

function succeeded(t) {
  ui.lastSuccess = t;
  setText($("updated"), `updated ${fmtClock(t)}`);
  $("error-banner").hidden = true;
  $("main").classList.remove("stale");
  $("main").removeAttribute("aria-busy");
}

function failed(e) {
  const banner = $("error-banner");
  const what =
    e instanceof Unreachable
      ? `The Driftless server is unreachable (${e.message}).`
      : `The server answered with an error: ${e.message}.`;
  const since = ui.lastSuccess ? ` The figures below are from ${fmtClock(ui.lastSuccess)}.` : "";
  setText(banner, `${what} Retrying every 2 s.${since}`);
  banner.hidden = false;
  $("main").classList.add("stale");
  $("main").setAttribute("aria-busy", "true");
}

function currentRate(topic) {
  return latest("produce_rate", topic);
}

// ---- panels --------------------------------------------------------------------------------

const sum = (xs, f) => xs.reduce((acc, x) => acc + (Number(f(x)) || 0), 0);

/**
 * A reconciliation's kept runs, newest first: the latest and, from GET /v1/reconciliations/NAME,
 * the earlier ones (the server keeps RUNS_KEPT of them, across restarts).
 */
function runsOf(r) {
  return [r.last_run, ...(Array.isArray(r.history) ? r.history : [])].filter(Boolean);
}

/** Runs the server keeps per reconciliation (driftless_reconcile::runtime::RUNS_KEPT). */
const RUNS_KEPT = 20;

/**
 * Corrections appended to each topic by reconciliation repairs: topic → {count, by: [names],
 * atLeast}. A sink reading several topics: its corrections are not attributed to one of them.
 */
function correctionsByTopic(sinks, runs) {
  const out = new Map();
  for (const r of runs) {
    const sink = sinks.find((s) => s.name === r.sink);
    const topics = (sink && sink.topics) || [];
    const kept = runsOf(r);
    const count = sum(kept, (run) => run.repaired);
    if (count === 0 || topics.length !== 1) continue;
    const entry = out.get(topics[0]) || { count: 0, by: [], atLeast: false };
    entry.count += count;
    entry.by.push(r.name);
    // Only the newest runs are kept: older corrections may be missing from the sum.
    entry.atLeast = entry.atLeast || kept.length >= RUNS_KEPT;
    out.set(topics[0], entry);
  }
  return out;
}

/**
 * How a topic's event count is made up, or null when there is nothing to explain: corrections
 * appended by reconciliation apart; the rest came from the sources whose patterns match it and
 * from producers (the API), which the server does not count apart.
 */
function explainCount(total, corrections, writers) {
  if (!corrections) return null;
  const n = corrections.count;
  const plural = n === 1 ? "correction" : "corrections";
  const by = corrections.by.join(", ");
  const atLeast = corrections.atLeast ? "at least " : "";
  const from = writers.length
    ? `from source ${writers.join(", ")} and producers`
    : "from sources and producers";
  return (
    `${fmtInt(total)} = ${fmtInt(total - n)} ${from} + ${atLeast}` +
    `${fmtInt(n)} ${plural} appended by reconciliation ${by}`
  );
}

/**
 * How fresh a sink's tables are: [headline, detail]. The sink's counters start at 0 with the
 * process, so after a restart "nothing applied" would be false for a sink that had applied
 * everything: its group's committed position (durable) says what is applied.
 */
function freshness(sink, group) {
  const since = `since restart at ${fmtClock(sink.started_ms || 0)}`;
  if (sink.newest_event_ms > 0) {
    return [`newest applied event ${fmtAgo(sink.newest_event_ms)}`, null];
  }
  if (!group) return ["no figures yet", `no event applied ${since}`];
  const end = sum(group.partitions, (p) => p.end_offset);
  const committed = sum(group.partitions, (p) => p.committed);
  const lag = sum(group.partitions, (p) => p.lag_events);
  if (end === 0) return ["nothing to apply: its topics are empty", null];
  if (lag === 0) {
    return [`caught up: all ${fmtInt(committed)} events applied`, `no new event ${since}`];
  }
  return [`${fmtInt(lag)} events to apply`, `none applied ${since}`];
}

/**
 * The question that matters first: does each projection match its source right now? One row
 * per sink: the last reconciliation verdict and its age, freshness, lag, dead letters.
 */
function renderProjections(sinks, groups, runs, error) {
  const note = $("projections-empty");
  const none = "No sinks configured: no topic is projected into a table yet.";
  setText(note, error ? `${none} (Reconciliations unavailable: ${error})` : none);
  note.hidden = sinks.length > 0;
  const names = ["name", "verdict", "fresh", "lag", "dead"];
  syncChildren(
    $("projections"),
    sinks,
    (s) => s.name,
    (s) => {
      const tr = row(`projection-row-${s.name}`, null, names, ["lag", "dead"]);
      for (const k of ["verdict", "fresh", "lag", "dead"]) {
        tr.cells_[k].dataset.testid = `projection-${k}-${s.name}`;
      }
      return tr;
    },
    (tr, s) => {
      const c = tr.cells_;
      const g = groups.find((x) => x.group === s.group) || null;
      const applied = `${fmtInt(s.events_applied_total)} applied since ${fmtClock(s.started_ms || 0)}`;
      fill(c.name, [s.name, s.kind, s.state, s.topics, applied, s.error], () => [
        el("span", { class: "mono", text: s.name }),
        " ",
        stateBadge(s.state),
        el("span", { class: "sub", text: `${s.kind} from ${(s.topics || []).join(", ")}` }),
        el("span", { class: "sub", text: applied }),
        s.error ? el("span", { class: "error-text", text: s.error }) : null,
      ]);
      const checks = runs.filter((r) => r.sink === s.name);
      const verdicts = checks.map((r) => verdict(r));
      fill(c.verdict, [verdicts, Math.floor(Date.now() / 10000)], () => {
        if (verdicts.length === 0) {
          return [
            el("span", { class: "verdict verdict-unknown", text: "never checked" }),
            el("span", { class: "sub", text: "no reconciliation configured for this sink" }),
          ];
        }
        return verdicts.flatMap((v) => [
          el("span", { class: `verdict verdict-${v.kind}`, text: v.text }),
          el("span", { class: "sub", text: v.detail }),
        ]);
      });
      c.verdict.dataset.verdict = verdicts.length ? verdicts[0].kind : "unknown";
      const [head, detail] = freshness(s, g);
      fill(c.fresh, [head, detail], () => [
        head,
        detail ? el("span", { class: "sub", text: detail }) : null,
      ]);
      if (g) {
        const lag = sum(g.partitions, (p) => p.lag_events);
        const behind = Math.max(0, ...g.partitions.map((p) => p.lag_ms || 0));
        fill(c.lag, [lag, behind], () => [
          `${fmtInt(lag)} events`,
          lag > 0 ? el("span", { class: "sub", text: `${fmtDuration(behind)} behind` }) : null,
        ]);
        setText(c.dead, fmtInt(g.dead_letters));
      } else {
        setText(c.lag, "—");
        setText(c.dead, "—");
      }
    },
  );
}

/** A reconciliation's last verdict: {kind: in-sync|drift|failed|unknown, text, detail}. */
function verdict(r) {
  const run = r.last_run;
  if (!run) return { kind: "unknown", text: "never checked", detail: `by ${r.name}` };
  const started = run.started_ms ?? run.at_ms;
  const ended = started + (run.duration_ms || 0);
  const age = `${r.name}, ${fmtAgo(ended)}`;
  if (run.error) return { kind: "failed", text: "check failed", detail: `${age}: ${run.error}` };
  const drift = sum([run], (x) => x.missing) + sum([run], (x) => x.extra) + sum([run], (x) => x.stale);
  if (drift === 0) return { kind: "in-sync", text: "in sync", detail: `checked by ${age}` };
  const repaired = run.repaired > 0 ? `, ${fmtInt(run.repaired)} repaired` : "";
  return { kind: "drift", text: `drift ${fmtInt(drift)}${repaired}`, detail: `found by ${age}` };
}

/** Whether topic `name` matches a source's topic pattern (`*`: any characters). */
function matchesPattern(pattern, name) {
  const parts = String(pattern).split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${parts.join(".*")}$`).test(name);
}

/** The sources whose topic patterns (GET /v1/sources: `topics`) match topic `name`. */
function writersOf(sources, name) {
  return sources.filter((src) => (src.topics || []).some((p) => matchesPattern(p, name)));
}

/**
 * The flow, one row per topic: the sources that write it (by their topic patterns), the topic,
 * the sinks that read it and the reconciliations that check them.
 */
function renderFlow(sources, topics, sinks, recs) {
  $("flow-empty").hidden = topics.length > 0;
  const names = sources.map((src) => {
    const patterns = (src.topics || []).join(", ");
    return `${src.name} (${src.kind}${patterns ? ` → ${patterns}` : ""})`;
  });
  setText($("flow-sources"), names.length ? `Sources: ${names.join("; ")}` : "No sources configured.");
  syncChildren(
    $("flow"),
    topics,
    (t) => t.name,
    (t) => {
      const tr = row(`flow-topic-${t.name}`, null, ["from", "topic", "arrow", "sinks"], []);
      tr.cells_.topic.append(el("span", { class: "mono", text: t.name }));
      tr.cells_.arrow.append("→");
      return tr;
    },
    (tr, t) => {
      const writers = writersOf(sources, t.name).map((src) => src.name);
      setText(tr.cells_.from, writers.length ? `${writers.join(", ")} →` : "producers →");
      const readers = sinks.filter((s) => (s.topics || []).includes(t.name));
      const items = readers.map((s) => {
        const checked = recs.filter((r) => r.sink === s.name).map((r) => r.name);
        return checked.length ? `${s.name} (checked by ${checked.join(", ")})` : s.name;
      });
      setText(tr.cells_.sinks, items.length ? items.join(", ") : "no sink reads it");
    },
  );
}

function renderTopics(topics, sinks, runs, sources) {
  const corrections = correctionsByTopic(sinks, runs);
  $("topics-empty").hidden = topics.length > 0;
  syncChildren(
    $("topics"),
    topics,
    (t) => t.name,
    (t) => {
      const numeric = ["parts", "events", "rate", "size"];
      const tr = row(`topic-row-${t.name}`, null, ["name", ...numeric], numeric);
      tr.cells_.events.dataset.testid = `topic-events-${t.name}`;
      tr.cells_.rate.dataset.testid = `topic-rate-${t.name}`;
      return tr;
    },
    (tr, t) => {
      const c = tr.cells_;
      const owner = (t.spec && t.spec.owner) || null;
      const total = t.partitions.reduce((s, p) => s + p.end_offset, 0);
      const writers = writersOf(sources, t.name).map((src) => src.name);
      const why = explainCount(total, corrections.get(t.name), writers);
      fill(c.name, [t.name, owner, why], () => [
        el("span", { class: "mono", text: t.name }),
        owner
          ? el("span", { class: "sub", testid: `topic-owner-${t.name}`, text: `owned by ${owner}` })
          : null,
        why ? el("span", { class: "sub", testid: `topic-explain-${t.name}`, text: why }) : null,
      ]);
      setText(c.parts, t.partitions.length);
      setText(c.events, fmtInt(t.partitions.reduce((s, p) => s + p.end_offset, 0)));
      setText(c.rate, fmtRate(currentRate(t.name)));
      setText(c.size, fmtBytes(t.partitions.reduce((s, p) => s + p.size_bytes, 0)));
    },
  );
}

/** The projection cell of a sink's group: the sink, its state and how fresh its tables are. */
function projection(td, sink, group) {
  const newest = sink ? freshness(sink, group).filter(Boolean).join("; ") : "";
  fill(td, sink ? [sink, newest] : null, () => {
    if (!sink) return [];
    const rb = sink.rebuild;
    const rebuilding = rb && rb.phase !== "done";
    const replayed =
      rebuilding ? `rebuild ${rb.phase}, ${fmtInt(rb.events_replayed)} replayed` : "";
    return [
      el("span", { class: "mono", text: sink.name }),
      " ",
      stateBadge(sink.state),
      el("span", { class: "sub", text: newest }),
      rebuilding ? el("span", { class: "sub", text: replayed }) : null,
      sink.error ? el("span", { class: "error-text", text: sink.error }) : null,
      rb && rb.error ? el("span", { class: "error-text", text: `rebuild: ${rb.error}` }) : null,
    ];
  });
}

function renderGroups(groups, total, sinks) {
  const note = $("groups-empty");
  if (total > groups.length) setText(note, `Showing ${groups.length} of ${total} groups.`);
  else setText(note, "No consumer groups yet.");
  note.hidden = groups.length > 0 && total <= groups.length;
  const items = [];
  for (const g of groups) {
    items.push({ kind: "group", key: `g\u0000${g.group}`, g });
    for (const p of g.partitions) {
      const key = `p\u0000${g.group}\u0000${p.topic}\u0000${p.partition}`;
      items.push({ kind: "partition", key, g, p });
    }
  }
  const names = ["name", "member", "lag", "lagTime", "inflight", "dead", "projection"];
  const numeric = ["lag", "lagTime", "inflight", "dead"];
  syncChildren(
    $("groups"),
    items,
    (i) => i.key,
    (i) => {
      if (i.kind === "group") {
        const tr = row(`group-row-${i.g.group}`, "group-row", names, numeric);
        tr.cells_.name.append(el("span", { class: "mono", text: i.g.group }));
        tr.cells_.lag.dataset.testid = `group-lag-${i.g.group}`;
        tr.cells_.dead.dataset.testid = `group-dead-${i.g.group}`;
        tr.cells_.projection.dataset.testid = `group-sink-${i.g.group}`;
        return tr;
      }
      const id = `group-partition-${i.g.group}-${i.p.topic}-${i.p.partition}`;
      const tr = row(id, "partition-row", names, numeric);
      tr.cells_.name.append(el("span", { class: "mono", text: `${i.p.topic} / ${i.p.partition}` }));
      return tr;
    },
    (tr, i) => {
      const c = tr.cells_;
      if (i.kind === "group") {
        const ps = i.g.partitions;
        setText(c.member, `${i.g.members.length} member${i.g.members.length === 1 ? "" : "s"}`);
        setText(c.lag, fmtInt(ps.reduce((s, p) => s + p.lag_events, 0)));
        setText(c.lagTime, fmtDuration(Math.max(0, ...ps.map((p) => p.lag_ms))));
        setText(c.inflight, fmtInt(ps.reduce((s, p) => s + p.inflight, 0)));
        setText(c.dead, fmtInt(i.g.dead_letters));
        projection(c.projection, sinks.find((s) => s.group === i.g.group), i.g);
        return;
      }
      const p = i.p;
      const member = p.member || "unassigned";
      if (c.member.title !== member) {
        c.member.title = member;
        c.member.replaceChildren(el("span", { class: "mono ellipsis", text: member }));
      }
      setText(c.lag, fmtInt(p.lag_events));
      setText(c.lagTime, fmtDuration(p.lag_ms));
      const keys = p.parked_keys === 1 ? "key" : "keys";
      const parked = p.parked_keys > 0 ? ` (${fmtInt(p.parked_keys)} ${keys} parked)` : "";
      setText(c.inflight, `${fmtInt(p.inflight)}${parked}`);
      setText(c.dead, "");
      setText(c.projection, `committed ${fmtInt(p.committed)} of ${fmtInt(p.end_offset)}`);
    },
  );
}

function renderDlq(queues) {
  $("dlq-empty").hidden = queues.length > 0;
  syncChildren(
    $("dlq"),
    queues,
    (q) => q.group,
    (q) => {
      const body = el("tbody");
      const heads = ["Dead letter", "Event", "Attempts", "Last error", "Dead", "State", "Actions"];
      const head = el("tr", {}, ...heads.map((h) => el("th", { scope: "col", text: h })));
      const attrs = { class: "dlq-group", testid: `dlq-group-${q.group}` };
      attrs["aria-label"] = `Dead letters of group ${q.group}`;
      const section = el(
        "section",
        attrs,
        el("h3", {}, "Group ", el("span", { class: "mono", text: q.group })),
        el("table", {}, el("thead", {}, head), body),
      );
      section.body_ = body;
      return section;
    },
    (section, q) => renderDlqRows(section.body_, q.group, q.letters),
  );
}

function renderDlqRows(body, group, letters) {
  const names = ["id", "event", "attempts", "error", "since", "state", "actions"];
  syncChildren(
    body,
    letters,
    (d) => d.id,
    (d) => {
      const key = `${group}/${d.id}`;
      const tr = row(`dlq-row-${key}`, null, names, ["attempts"]);
      tr.cells_.id.append(el("span", { class: "mono", text: d.id }));
      tr.cells_.state.dataset.testid = `dlq-state-${key}`;
      const buttons = [["inspect", "Inspect"], ["retry", "Retry"], ["discard", "Discard"]];
      for (const [what, label] of buttons) {
        const b = el("button", { type: "button", testid: `dlq-${what}-${key}`, text: label });
        if (what === "discard") b.className = "danger";
        b.setAttribute("aria-label", `${label} dead letter ${d.id} of group ${group}`);
        b.addEventListener("click", () => act(what, group, d.id, b));
        tr.cells_.actions.append(b);
        if (what === "retry") tr.retry_ = b;
      }
      return tr;
    },
    (tr, d) => {
      const c = tr.cells_;
      const ev = d.event || {};
      fill(c.event, [ev.type, ev.subject], () => [
        el("span", { class: "mono", text: ev.type || "" }),
        ev.subject ? el("span", { class: "sub", text: `subject ${ev.subject}` }) : null,
      ]);
      setText(c.attempts, d.attempts);
      setText(c.error, d.errors.length ? d.errors[d.errors.length - 1] : "");
      setText(c.since, fmtAgo(d.dead_at_ms));
      c.since.title = new Date(d.dead_at_ms).toLocaleString();
      fill(c.state, d.state, () => [stateBadge(d.state)]);
      tr.retry_.disabled = d.state === "retrying" || tr.retry_.dataset.busy === "1";
    },
  );
}

function renderSources(sources) {
  $("sources-empty").hidden = sources.length > 0;
  const names = ["name", "state", "events", "slot", "backlog", "snapshot"];
  syncChildren(
    $("sources"),
    sources,
    (s) => s.name,
    (s) => {
      const tr = row(`source-row-${s.name}`, null, names, ["events", "slot", "backlog"]);
      tr.cells_.name.append(
        el("span", { class: "mono", text: s.name }),
        el("span", { class: "sub", text: s.kind }),
      );
      return tr;
    },
    (tr, s) => {
      const c = tr.cells_;
      fill(c.state, [s.state, s.error], () => [
        stateBadge(s.state),
        s.error ? el("span", { class: "error-text", text: s.error }) : null,
      ]);
      const last = s.last_event_ms > 0 ? `last ${fmtAgo(s.last_event_ms)}` : "none yet";
      fill(c.events, [s.events_total, last], () => [
        fmtInt(s.events_total),
        el("span", { class: "sub", text: last }),
      ]);
      setText(c.slot, s.slot_lag_bytes >= 0 ? fmtBytes(s.slot_lag_bytes) : "—");
      const backlog = s.outbox_backlog_rows;
      setText(c.backlog, backlog >= 0 ? `${fmtInt(backlog)} rows` : "—");
      const total = s.snapshot_rows_total;
      const done = Math.min(s.snapshot_rows_done, total);
      fill(c.snapshot, [total, done, s.state], () => {
        if (total === 0) return [s.state === "snapshotting" ? "estimating…" : "—"];
        const pct = Math.floor((done * 100) / total);
        const bar = el("progress", { max: total, value: done });
        bar.setAttribute("aria-label", `snapshot of ${s.name}`);
        const rows = el("span", { class: "sub", text: `${fmtInt(done)} of ${fmtInt(total)} rows` });
        return [bar, ` ${pct}%`, rows];
      });
    },
  );
}

/**
 * Reconciliations as planned: `{name, sink, state, last_run: {started_ms, finished_ms, missing,
 * extra, stale, repaired, policy} | null}`. Also read: `duration_ms` instead of `finished_ms`, the
 * policy beside the run (or `repair: true`), and `error` for a run that failed.
 */
function renderReconciliations({ list: recs, error }) {
  const note = $("reconciliations-empty");
  setText(note, error ? `Reconciliations unavailable: ${error}` : "No reconciliations configured.");
  note.hidden = recs.length > 0;
  const names = ["name", "state", "run", "missing", "extra", "stale", "repaired"];
  syncChildren(
    $("reconciliations"),
    recs,
    (r) => r.name,
    (r) => {
      const tr = row(`reconciliation-row-${r.name}`, null, names, names.slice(3));
      tr.cells_.name.append(
        el("span", { class: "mono", text: r.name }),
        el("span", { class: "sub", text: `sink ${r.sink}` }),
      );
      return tr;
    },
    (tr, r) => {
      const c = tr.cells_;
      const run = r.last_run || null;
      const failure = run && run.error;
      fill(c.state, [r.state, failure], () => [
        stateBadge(r.state),
        failure ? el("span", { class: "error-text", text: failure }) : null,
      ]);
      if (run) {
        const started = run.started_ms ?? run.at_ms;
        const took = run.finished_ms >= 0 ? run.finished_ms - run.started_ms : run.duration_ms;
        c.run.dataset.tookMs = String(took);
        const policy = run.policy ?? r.policy ?? (run.repair ? "repair" : "report");
        const parts = [fmtClock(started)];
        if (took >= 0) parts.push(`took ${fmtDuration(took)}`);
        setText(c.run, [...parts, policy].join(", "));
      } else {
        setText(c.run, "not run yet");
      }
      for (const k of names.slice(3)) {
        setText(c[k], run && run[k] !== undefined ? fmtInt(run[k]) : "—");
      }
    },
  );
}

/** The audit trail, newest first: when, who, what, on which resource, and how it ended. */
function renderAudit({ list, error }) {
  const note = $("audit-empty");
  const none = "No administrative actions recorded yet.";
  setText(note, error ? `Audit trail unavailable: ${error}` : none);
  note.hidden = list.length > 0;
  // Records have no id: the key is the record itself, numbered among identical ones.
  const seen = new Map();
  const items = list.map((r, i) => {
    const base = [r.at, r.principal, r.action, r.resource, r.status].join("\u0000");
    const n = (seen.get(base) || 0) + 1;
    seen.set(base, n);
    return { r, i, key: `${base}\u0000${n}` };
  });
  const names = ["at", "principal", "action", "resource", "outcome"];
  syncChildren(
    $("audit"),
    items,
    (item) => item.key,
    ({ r }) => {
      const tr = row(null, null, names, []);
      const at = new Date(r.at);
      tr.cells_.at.append(el("span", { text: fmtClock(at.getTime()), title: at.toLocaleString() }));
      tr.cells_.principal.append(el("span", { class: "mono", text: r.principal }));
      tr.cells_.action.append(el("span", { class: "mono", text: r.action }));
      tr.cells_.resource.append(el("span", { class: "mono", text: r.resource }));
      const outcome = r.outcome === "ok" ? "ok" : "failed";
      const label = outcome === "ok" ? `ok (${r.status})` : `failed (${r.status})`;
      tr.cells_.outcome.append(el("span", { class: `outcome-${outcome}`, text: label }));
      return tr;
    },
    (tr, { i }) => {
      // Positions move as actions arrive: the row's test id names its place, newest first.
      tr.dataset.testid = `audit-row-${i}`;
      tr.cells_.action.dataset.testid = `audit-action-${i}`;
      tr.cells_.resource.dataset.testid = `audit-resource-${i}`;
      tr.cells_.principal.dataset.testid = `audit-principal-${i}`;
      tr.cells_.outcome.dataset.testid = `audit-outcome-${i}`;
    },
  );
}

// ---- sign-in -------------------------------------------------------------------------------

/** The API answered 401: hide the figures (they may be another principal's) and ask for a token. */
function signInNeeded() {
  ui.signInNeeded = true;
  clearTimeout(timer);
  $("main").hidden = true;
  $("error-banner").hidden = true;
  $("logout").hidden = true;
  $("principal").hidden = true;
  setText($("updated"), "sign-in required");
  const login = $("login");
  if (login.hidden) {
    login.hidden = false;
    $("login-token").focus();
  }
}

/** Submits the sign-in form: the token goes in a JSON body to this origin, and nowhere else. */
async function signIn(event) {
  event.preventDefault(); // never a native submission: it could put the token in a URL
  const field = $("login-token");
  const problem = $("login-error");
  const button = $("login-submit");
  const token = field.value.trim();
  field.value = "";
  if (!token) {
    setText(problem, "Paste an API token first.");
    problem.hidden = false;
    return;
  }
  button.disabled = true;
  try {
    await api("POST", "/v1/session", { token });
  } catch (e) {
    const why =
      e instanceof ApiError && (e.status === 401 || e.status === 403)
        ? "The server did not accept this token (unknown, revoked or expired)."
        : `Could not sign in: ${e.message}`;
    setText(problem, why);
    problem.hidden = false;
    field.focus();
    return;
  } finally {
    button.disabled = false;
  }
  problem.hidden = true;
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  ui.signInNeeded = false;
  whoAmI();
  poll();
}

/** Ends the session (DELETE /v1/session); the next poll then asks for a token again. */
async function signOut() {
  try {
    await api("DELETE", "/v1/session");
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) {
      say(`Could not sign out: ${e.message}`, true);
      return;
    }
  }
  $("logout").hidden = true;
  $("principal").hidden = true;
  say("Signed out.");
  poll();
}

/**
 * Who the page acts as (GET /v1/session: `{"auth_enabled", "principal"}`): the name and the
 * sign-out button show only when the server authenticates and a session is open.
 */
async function whoAmI() {
  let who = null;
  try {
    who = await get("/v1/session");
  } catch (_) {
    return; // the server is unreachable: the next poll says so
  }
  const name = who && who.auth_enabled === true ? who.principal : null;
  if (typeof name !== "string") return;
  setText($("principal"), `signed in as ${name}`);
  $("principal").hidden = false;
  $("logout").hidden = false;
}

// ---- plots ---------------------------------------------------------------------------------

/** The smallest 1, 2 or 5 × 10^k at or above `v` (at least 1). */
function niceCeil(v) {
  if (!(v > 1)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * Series of one family of the server's history: the SERIES_MAX with the highest peak in the
 * window (a burst that is over still shows), each with its points, last value and peak.
 */
function seriesOf(family) {
  const held = ui.history.families[family] || new Map();
  const times = ui.history.times;
  const all = [];
  for (const [name, values] of held) {
    const pts = [];
    values.forEach((v, i) => {
      if (v !== null) pts.push([times[i], v]);
    });
    if (pts.length === 0) continue;
    let peak = pts[0];
    for (const p of pts) if (p[1] > peak[1]) peak = p;
    all.push({ name, pts, last: pts[pts.length - 1][1], peak });
  }
  all.sort((a, b) => b.peak[1] - a.peak[1] || a.name.localeCompare(b.name));
  return all.slice(0, SERIES_MAX).sort((a, b) => a.name.localeCompare(b.name));
}

/** A line plot of `series` over the `spanMs` before `now`, sized to its container, and its legend. */
function drawChart(container, now, spanMs, series, unit, label) {
  const W = Math.max(320, Math.floor(container.clientWidth) || 600);
  const H = 180;
  const left = 52;
  const right = 8;
  const top = 8;
  const bottom = 22;
  const max = niceCeil(Math.max(0, ...series.flatMap((s) => s.pts.map((p) => p[1]))));
  const x = (t) => left + ((t - (now - spanMs)) / spanMs) * (W - left - right);
  const y = (v) => top + (1 - v / max) * (H - top - bottom);
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  root.setAttribute("aria-label", label);
  for (const v of [0, max / 2, max]) {
    root.append(svg("line", { class: "axis", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    const tick = svg("text", { class: "tick", x: left - 6, y: y(v) + 4, "text-anchor": "end" });
    tick.textContent = fmtRate(v);
    root.append(tick);
  }
  const minutes = spanMs / 60000;
  for (const [t, text, anchor] of [
    [now - spanMs, `−${minutes} min`, "start"],
    [now - spanMs / 2, `−${minutes / 2} min`, "middle"],
    [now, "now", "end"],
  ]) {
    const tick = svg("text", { class: "tick", x: x(t), y: H - 6, "text-anchor": anchor });
    tick.textContent = text;
    root.append(tick);
  }
  series.forEach((s, i) => {
    const pts = s.pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    // The figures behind the line, for people and tests: the series, its peak and when.
    const line = svg("polyline", { class: `series-${i}`, points: pts });
    line.dataset.series = s.name;
    line.dataset.peak = String(s.peak[1]);
    line.dataset.peakMs = String(s.peak[0]);
    line.dataset.last = String(s.last);
    root.append(line);
    const [t, v] = s.pts[s.pts.length - 1];
    root.append(svg("circle", { class: `series-${i}`, cx: x(t), cy: y(v), r: 3 }));
  });
  const legend = el("ul", { class: "legend" });
  series.forEach((s, i) => {
    legend.append(
      el(
        "li",
        {},
        el("span", { class: `swatch series-${i}`, "aria-hidden": "true" }),
        el("span", { class: "mono", text: s.name }),
        ` ${fmtRate(s.last)} ${unit}, peak ${fmtRate(s.peak[1])} at ${fmtClock(s.peak[0])}`,
      ),
    );
  });
  const h = ui.history;
  if (h.error) legend.append(el("li", { class: "error-text", text: `History unavailable: ${h.error}` }));
  else if (series.length === 0) legend.append(el("li", { class: "empty", text: "No data yet." }));
  if (h.startedMs > now - spanMs && h.startedMs > 0) {
    legend.append(el("li", { class: "sub", text: `server history since ${fmtClock(h.startedMs)}` }));
  }
  container.replaceChildren(root, legend);
}

function renderCharts(now) {
  // The server's clock places the samples: the newest one is "now" (no skew with this browser).
  // The plots span the history held, at least 5 and at most 15 minutes, so a young server's
  // samples are not squeezed into the right edge.
  const times = ui.history.times;
  const end = times.length ? times[times.length - 1] : now;
  const held = times.length ? end - times[0] : 0;
  const spanMs = Math.min(WINDOW_MS, Math.max(SPAN_MS_MIN, Math.ceil(held / 60000) * 60000));
  const span = `${spanMs / 60000} min`;
  const rates = seriesOf("produce_rate");
  const lags = seriesOf("lag_events");
  const rateLabel = `Events per second per topic, last ${span}`;
  const lagLabel = `Consumer lag in events per group, last ${span}`;
  drawChart($("chart-throughput"), end, spanMs, rates, "events/s", rateLabel);
  drawChart($("chart-lag"), end, spanMs, lags, "behind", lagLabel);
  const applied = seriesOf("applied_rate");
  const appliedLabel = `Events applied per second per sink, last ${span}`;
  drawChart($("chart-applied"), end, spanMs, applied, "events/s", appliedLabel);
}

// ---- dead-letter actions -------------------------------------------------------------------

let sayTimer = null;

/** Reports the outcome of an action in the status line, for 15 s. */
function say(text, isError) {
  const status = $("action-status");
  setText(status, text);
  status.classList.toggle("error", Boolean(isError));
  clearTimeout(sayTimer);
  sayTimer = setTimeout(() => setText(status, ""), 15000);
}

async function act(what, group, id, button) {
  const path = `/v1/groups/${seg(group)}/dlq/${seg(id)}`;
  if (what === "inspect") {
    await inspect(group, id, path);
    return;
  }
  const question = `Discard dead letter ${id} of group ${group} for good?`;
  if (what === "discard" && !window.confirm(question)) return;
  if (button) {
    button.disabled = true;
    button.dataset.busy = "1";
  }
  try {
    if (what === "retry") {
      await api("POST", `${path}/retry`);
      say(`Dead letter ${id} of group ${group} is being delivered again.`);
    } else {
      await api("DELETE", path);
      say(`Dead letter ${id} of group ${group} discarded.`);
    }
    const dialog = $("dlq-dialog");
    if (dialog.open && dialog.dataset.key === `${group}/${id}`) dialog.close();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signInNeeded();
    say(`Could not ${what} dead letter ${id} of group ${group}: ${e.message}`, true);
  } finally {
    if (button) {
      delete button.dataset.busy;
      button.disabled = false;
    }
  }
  poll(); // show the effect now rather than at the next tick
}

async function inspect(group, id, path) {
  let d;
  try {
    d = await get(path);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signInNeeded();
    say(`Could not load dead letter ${id} of group ${group}: ${e.message}`, true);
    return;
  }
  const dialog = $("dlq-dialog");
  dialog.dataset.key = `${group}/${id}`;
  setText($("dlq-dialog-title"), `Dead letter ${d.id}`);
  const facts = [
    ["Group", d.group],
    ["Topic", `${d.topic}, partition ${d.partition}, offset ${d.offset}`],
    ["Attempts", d.attempts],
    ["Dead since", new Date(d.dead_at_ms).toLocaleString()],
    ["State", d.state],
  ];
  const pairs = facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]);
  $("dlq-dialog-facts").replaceChildren(...pairs);
  $("dlq-dialog-errors").replaceChildren(...d.errors.map((e) => el("li", { text: e })));
  setText($("dlq-dialog-event"), JSON.stringify(d.event, null, 2));
  $("dlq-dialog-retry").onclick = () => act("retry", group, id, $("dlq-dialog-retry"));
  $("dlq-dialog-discard").onclick = () => act("discard", group, id, $("dlq-dialog-discard"));
  if (!dialog.open) dialog.showModal();
}

document.addEventListener("DOMContentLoaded", () => {
  $("dlq-dialog-close").addEventListener("click", () => $("dlq-dialog").close());
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", signOut);
  whoAmI();
  poll();
});
