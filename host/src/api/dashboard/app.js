// The jobhost dashboard: plain DOM, no build step, no dependency. It reads
// and acts through the admin API with the token kept in sessionStorage.
// Every value from the API is written with textContent, never as HTML.
"use strict";

const STATES = ["queued", "scheduled", "running", "succeeded", "dead", "cancelled"];
const REFRESH_MS = 2000;
const HISTORY = 150; // samples of the chart: five minutes at one every 2 s

const $ = (id) => document.getElementById(id);

/** An element with attributes, properties and children (text or nodes). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function token() { return sessionStorage.getItem("jobhost-token"); }

/** Calls the API; a 401 asks for the token again. */
async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem("jobhost-token");
    showLogin("That token was refused.");
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error(`${body.code || response.status}: ${body.message || ""}`);
  return body;
}

function showLogin(message) {
  $("app").hidden = true;
  $("tabs").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  try {
    await api("/admin/metrics/jobs");
  } catch (e) {
    if (e.message !== "unauthorized") showLogin(`The API did not answer: ${e.message}`);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("tabs").hidden = false;
  show(location.hash.slice(1) || "overview");
  refresh();
}

// ---- tabs -------------------------------------------------------------

let current = "overview";
function show(tab) {
  const [name, arg] = tab.split("/");
  current = name;
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== name;
  for (const b of document.querySelectorAll("nav button")) {
    b.classList.toggle("active", b.dataset.tab === name);
  }
  if (name === "dlq") loadDlq();
  if (name === "jobs") loadJobs(true);
  if (name === "plugins") loadPlugins();
  if (name === "schedules") loadSchedules();
  if (name === "job") loadJob(arg);
}

function openJob(id) {
  location.hash = `job/${id}`;
}

function jobLink(id) {
  return el("a", { href: `#job/${id}`, id: `job-link-${id}` }, `#${id}`);
}

// ---- overview ---------------------------------------------------------

const samples = [];

async function refresh(once) {
  try {
    const [counts, queues, workers] = await Promise.all([
      api("/admin/metrics/jobs"),
      api("/admin/metrics/queue"),
      api("/admin/workers"),
    ]);
    drawCounts(counts);
    drawQueues(queues.types);
    drawWorkers(workers.paused);
    samples.push({ at: Date.now(), succeeded: counts.succeeded, dead: counts.dead });
    if (samples.length > HISTORY) samples.shift();
    drawChart();
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("status").textContent = `not updated: ${e.message}`;
  }
  if (!once) setTimeout(refresh, REFRESH_MS);
}

function drawCounts(counts) {
  $("counts").replaceChildren(
    ...STATES.map((s) =>
      el("div", { class: `count ${s}` }, el("b", { id: `count-${s}` }, counts[s]), el("span", {}, s)),
    ),
  );
}

function drawQueues(types) {
  $("queues").tBodies[0].replaceChildren(
    ...types.map((t) =>
      el("tr", { id: `queue-${t.type}` },
        el("td", {}, t.type, t.paused ? el("span", { class: "error" }, " (paused)") : ""),
        ...["queued", "scheduled", "running", "dead"].map((k) => el("td", { class: "num" }, t[k])),
        el("td", {}, el("button", {
          id: `queue-toggle-${t.type}`,
          title: t.paused ? "claim this type's jobs again, on every host" : "stop claiming this type's jobs on every host (they are still accepted)",
          onclick: async () => {
            await api(`/admin/queues/${encodeURIComponent(t.type)}/${t.paused ? "resume" : "pause"}`, { method: "POST" });
            refresh(true);
          },
        }, t.paused ? "Resume" : "Pause"))),
    ),
  );
  const select = $("dlq-type");
  const chosen = select.value;
  select.replaceChildren(
    el("option", { value: "" }, "all types"),
    ...types.map((t) => el("option", { value: t.type }, `${t.type} (${t.dead} dead)`)),
  );
  select.value = chosen;
}

function drawWorkers(paused) {
  $("workers-state").textContent = paused ? "Paused: no new jobs start here." : "Running.";
  const button = $("workers-toggle");
  button.textContent = paused ? "Resume" : "Pause";
  button.onclick = async () => {
    await api(`/admin/workers/${paused ? "resume" : "pause"}`, { method: "POST" });
    refresh(true);
  };
}

function drawChart() {
  const canvas = $("chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].at - samples[i - 1].at) / 1000;
    rates.push({
      ok: Math.max(0, samples[i].succeeded - samples[i - 1].succeeded) / dt,
      bad: Math.max(0, samples[i].dead - samples[i - 1].dead) / dt,
    });
  }
  const top = Math.max(1, ...rates.map((r) => Math.max(r.ok, r.bad)));
  const x = (i) => (i / (HISTORY - 1)) * (canvas.width - 40) + 30;
  const y = (v) => canvas.height - 20 - (v / top) * (canvas.height - 35);
  g.fillStyle = "#6b7385";
  g.font = "11px system-ui";
  g.fillText(`${top.toFixed(top < 10 ? 1 : 0)}/s`, 2, 12);
  g.fillText("0", 2, canvas.height - 20);
  for (const [key, color] of [["ok", "#1f8a4c"], ["bad", "#c2362b"]]) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    rates.forEach((r, i) => (i ? g.lineTo(x(i), y(r[key])) : g.moveTo(x(i), y(r[key]))));
    g.stroke();
  }
}

// ---- dead letters -----------------------------------------------------

let dlqShown = [];

async function loadDlq() {
  const type = $("dlq-type").value;
  const text = $("dlq-error").value;
  const query = new URLSearchParams({ state: "dead", limit: "1000" });
  if (type) query.set("type", type);
  try {
    const page = await api(`/jobs?${query}`);
    dlqShown = page.jobs.filter((j) => !text || (j.lastError || "").includes(text));
    $("dlq-table").tBodies[0].replaceChildren(
      ...dlqShown.map((j) =>
        el("tr", { id: `dlq-row-${j.jobId}` },
          el("td", {}, el("input", { type: "checkbox", class: "pick", value: j.jobId, id: `dlq-pick-${j.jobId}`, onchange: picked })),
          el("td", {}, jobLink(j.jobId)),
          el("td", {}, j.type),
          el("td", { class: "num" }, `${j.attempts}/${j.maxAttempts}`),
          el("td", {}, j.finishedAt || ""),
          el("td", { class: "error" }, j.lastError || "")),
      ),
    );
    $("dlq-more").textContent = page.nextCursor
      ? "Showing the newest 1,000; \"Replay all matching\" replays every one that matches, shown or not."
      : `${dlqShown.length} dead job(s) shown.`;
    $("dlq-all").checked = false;
    picked();
  } catch (e) {
    $("dlq-message").textContent = e.message;
  }
}

function picks() {
  return [...document.querySelectorAll("#dlq-table .pick:checked")].map((c) => Number(c.value));
}

function picked() {
  $("replay-selected").disabled = picks().length === 0;
}

async function replay(filter, what) {
  try {
    const done = await api("/admin/dlq/replay", { method: "POST", body: JSON.stringify(filter) });
    $("dlq-message").textContent = `Replayed ${done.replayed} ${what}.`;
  } catch (e) {
    $("dlq-message").textContent = `Not replayed: ${e.message}`;
  }
  loadDlq();
}

// ---- jobs -------------------------------------------------------------

let jobsCursor = null;

async function loadJobs(fresh) {
  if (fresh) jobsCursor = null;
  const query = new URLSearchParams({ limit: "50" });
  const state = $("jobs-state").value;
  const type = $("jobs-type").value.trim();
  if (state) query.set("state", state);
  if (type) query.set("type", type);
  if (jobsCursor) query.set("cursor", jobsCursor);
  try {
    const page = await api(`/jobs?${query}`);
    const rows = page.jobs.map((j) =>
      el("tr", {},
        el("td", {}, jobLink(j.jobId)),
        el("td", {}, j.type),
        el("td", {}, j.status),
        el("td", { class: "num" }, `${j.attempts}/${j.maxAttempts}`),
        el("td", {}, j.updatedAt),
        el("td", { class: "error" }, j.lastError || "")),
    );
    const body = $("jobs-table").tBodies[0];
    if (fresh) body.replaceChildren(...rows);
    else body.append(...rows);
    jobsCursor = page.nextCursor;
    $("jobs-next").hidden = !jobsCursor;
  } catch (e) {
    $("jobs-table").tBodies[0].replaceChildren(el("tr", {}, el("td", { colSpan: 6, class: "error" }, e.message)));
  }
}

async function loadJob(id) {
  const section = $("job");
  section.replaceChildren(el("p", { class: "muted" }, `Loading job ${id}…`));
  try {
    const j = await api(`/jobs/${encodeURIComponent(id)}`);
    const facts = [
      ["type", j.type], ["status", j.status], ["attempts", `${j.attempts} of ${j.maxAttempts}`],
      ["priority", String(j.priority ?? 0)], ["own deadline", j.timeoutMs == null ? "" : `${j.timeoutMs} ms`],
      ["progress", j.progress == null ? "" : `${j.progress}%`], ["created", j.createdAt],
      ["next attempt", j.nextAttemptAt || ""], ["finished", j.finishedAt || ""],
      ["plugin", j.pluginDigest || ""],
      [j.status === "succeeded" ? "earlier error" : "last error", j.lastError || ""],
    ];
    const actions = [];
    if (j.status === "dead") {
      actions.push(el("button", { id: "job-replay", onclick: async () => {
        await api(`/admin/jobs/${j.jobId}/replay`, { method: "POST" });
        loadJob(j.jobId);
      } }, "Replay"));
    }
    if (j.status === "queued" || j.status === "scheduled" || j.status === "running") {
      actions.push(el("button", { id: "job-cancel", onclick: async () => {
        await api(`/admin/jobs/${j.jobId}/cancel`, { method: "POST" });
        loadJob(j.jobId);
      } }, "Cancel"));
    }
    section.replaceChildren(
      el("h2", {}, `Job #${j.jobId}`),
      el("dl", { id: "job-facts" }, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { id: `job-${k.replace(" ", "-")}` }, v)])),
      el("p", {}, ...actions),
      el("h2", {}, "Payload"), el("pre", {}, JSON.stringify(j.payload, null, 2)),
      el("h2", {}, "Result"), el("pre", {}, j.result == null ? "—" : JSON.stringify(j.result, null, 2)),
      el("h2", {}, "History"),
      el("table", { id: "job-events" },
        el("thead", {}, el("tr", {}, ...["at", "from", "to", "attempt", "by", "reason", "plugin"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...j.events.map((e) =>
          el("tr", {},
            el("td", {}, e.at), el("td", {}, e.from || ""), el("td", {}, e.to),
            el("td", { class: "num" }, e.attempt), el("td", {}, e.actor),
            el("td", {}, e.reason || ""), el("td", {}, e.pluginDigest ? e.pluginDigest.slice(0, 19) : ""))))),
    );
  } catch (e) {
    section.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

// ---- schedules --------------------------------------------------------

async function loadSchedules() {
  const body = $("schedules-table").tBodies[0];
  try {
    const { schedules } = await api("/admin/schedules");
    if (!schedules.length) {
      body.replaceChildren(el("tr", {}, el("td", { colSpan: 9, class: "muted" }, "No schedules.")));
      return;
    }
    body.replaceChildren(
      ...schedules.map((s) =>
        el("tr", { id: `schedule-${s.name}` },
          el("td", {}, s.name),
          el("td", {}, s.type),
          el("td", {}, el("code", {}, s.cron)),
          el("td", {}, s.timezone),
          el("td", {}, s.nextRunAt || "never"),
          el("td", {}, s.lastRunAt || "—"),
          el("td", {}, s.lastJobId == null ? "—" : jobLink(s.lastJobId)),
          el("td", {}, s.source),
          el("td", {}, el("button", { onclick: async () => {
            if (!confirm(`Delete the schedule ${s.name}? The jobs it made stay.`)) return;
            await api(`/admin/schedules/${encodeURIComponent(s.name)}`, { method: "DELETE" });
            loadSchedules();
          } }, "Delete"))),
      ),
    );
  } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colSpan: 9, class: "error" }, e.message)));
  }
}

// ---- plugins ----------------------------------------------------------

async function loadPlugins() {
  try {
    const { plugins } = await api("/admin/plugins");
    $("plugins-table").tBodies[0].replaceChildren(
      ...plugins.map((p) =>
        el("tr", {},
          el("td", {}, p.name),
          el("td", {}, (p.jobTypes || []).join(", ")),
          el("td", { class: p.status === "failed" ? "error" : "" }, p.status),
          el("td", {}, p.digest ? p.digest.slice(0, 19) : "—"),
          el("td", {}, p.loadedAt || ""),
          el("td", {}, p.fuel ? `fuel ${p.fuel}, ${p.timeoutMs} ms, ${p.memoryMb} MiB, ${p.maxAttempts} attempts, ${p.concurrency} at once` : ""),
          el("td", { class: "error" }, p.lastError || "")),
      ),
    );
  } catch (e) {
    $("plugins-table").tBodies[0].replaceChildren(el("tr", {}, el("td", { colSpan: 7, class: "error" }, e.message)));
  }
}

// ---- wiring -----------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("jobhost-token", $("token").value.trim());
    start();
  });
  for (const b of document.querySelectorAll("nav button")) {
    b.addEventListener("click", () => (location.hash = b.dataset.tab));
  }
  window.addEventListener("hashchange", () => token() && show(location.hash.slice(1) || "overview"));
  $("dlq-filter").addEventListener("submit", (e) => { e.preventDefault(); loadDlq(); });
  $("dlq-all").addEventListener("change", (e) => {
    for (const c of document.querySelectorAll("#dlq-table .pick")) c.checked = e.target.checked;
    picked();
  });
  $("replay-selected").addEventListener("click", () => replay({ ids: picks() }, "selected job(s)"));
  $("replay-matching").addEventListener("click", () => {
    const filter = {};
    if ($("dlq-type").value) filter.type = $("dlq-type").value;
    if ($("dlq-error").value) filter.error = $("dlq-error").value;
    const what = Object.keys(filter).length ? "matching job(s)" : "dead job(s), all of them";
    if (!Object.keys(filter).length) filter.all = true;
    if (confirm(`Replay every dead job${filter.all ? "" : " matching this filter"}?`)) replay(filter, what);
  });
  $("jobs-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("jobs-id").value.trim();
    if (id) openJob(id);
    else loadJobs(true);
  });
  $("jobs-next").addEventListener("click", () => loadJobs(false));
  if (token()) start();
  else showLogin();
});
