// The lkagent dev server's dashboard: renders the state the server pushes
// over server-sent events and sends the actions as JSON posts. No framework,
// no build step; every text from the server goes in as text, never as HTML.
"use strict";

const LOAD_WINDOW_MS = 180000;
const MIN_SPAN_MS = 30000;
const SVG = "http://www.w3.org/2000/svg";

// ---- small helpers ----------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.dataset[camel(name.slice(5))] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function camel(name) {
  return name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
}

function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function span(ms) {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

// Keeps a table body in step with `items`: one row per key, each cell
// re-rendered only when its signature changed, so rows under the pointer
// stay put while the rest of the page moves.
function syncRows(tbody, items, key, columns, decorate) {
  const existing = new Map();
  for (const row of tbody.rows) existing.set(row.dataset.key, row);
  const seen = new Set();
  let previous = null;
  for (const item of items) {
    const k = key(item);
    seen.add(k);
    let row = existing.get(k);
    if (!row) {
      row = el("tr", { "data-key": k });
      row.sigs = [];
      for (const _ of columns) row.append(el("td"));
    }
    columns.forEach((column, i) => {
      const sig = column.sig(item);
      if (row.sigs[i] !== sig) {
        row.sigs[i] = sig;
        row.cells[i].replaceChildren(column.render(item));
        row.cells[i].className = column.class || "";
      }
    });
    decorate(row, item);
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (wanted !== row) tbody.insertBefore(row, wanted);
    previous = row;
  }
  for (const [k, row] of existing) if (!seen.has(k)) row.remove();
}

// ---- rendering -----------------------------------------------------------------

function loadChart(worker, now) {
  const load = Number.isFinite(worker.load) ? worker.load : 0;
  const width = 180, height = 34;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  // the last three minutes, or the worker's whole life when shorter (but
  // at least half a minute), so that a new worker's chart is not a dot
  const spanMs = Math.min(LOAD_WINDOW_MS, Math.max(MIN_SPAN_MS, now - worker.registered_at));
  const points = worker.load_history
    .filter(([at]) => now - at <= spanMs)
    .map(([at, sample]) => [
      width - ((now - at) / spanMs) * width,
      height - 2 - (Number.isFinite(sample) ? sample : 0) * (height - 4),
    ]);
  if (points.length > 0 && worker.connected) {
    // drawn on to now: the last report stands until the next one
    points.push([width, points[points.length - 1][1]]);
  }
  const title = document.createElementNS(SVG, "title");
  title.textContent = `load ${load.toFixed(2)}; the chart spans ${span(spanMs)}`;
  svg.append(title);
  const full = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1: 0, x2: width, y1: 2, y2: 2, class: "full" })) {
    full.setAttribute(k, v);
  }
  svg.append(full);
  if (points.length > 0) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.map((p) => p.map((n) => n.toFixed(1)).join(",")).join(" "));
    svg.append(line);
  }
  return el("span", { class: "load" }, svg, el("span", { class: "value" }, load.toFixed(2)));
}

function statusBadge(status) {
  return el("span", { class: "status", "data-status": status }, status);
}

function renderWorkers(state) {
  const tbody = document.querySelector("#workers tbody");
  syncRows(
    tbody,
    state.workers,
    (w) => w.id,
    [
      { sig: (w) => w.agent_name, render: (w) => w.agent_name || el("em", {}, "default") },
      { sig: (w) => w.id, render: (w) => el("code", {}, w.id) },
      {
        sig: (w) => `${w.connected} ${w.status}`,
        render: (w) => statusBadge(w.connected ? w.status : "disconnected"),
      },
      {
        sig: (w) => `${w.load} ${w.load_history.length} ${w.load_history.at(-1)} ${Math.floor(state.now / 5000)}`,
        render: (w) => loadChart(w, state.now),
      },
      { sig: (w) => String(w.job_count), render: (w) => w.job_count, class: "num" },
      { sig: (w) => String(w.registered_at), render: (w) => clock(w.registered_at) },
      {
        sig: (w) => `${w.version} ${w.protocol}`,
        render: (w) => el("span", {}, w.version || "—", el("small", {}, ` protocol ${w.protocol}`)),
      },
      {
        sig: (w) => String(w.connected),
        render: (w) =>
          w.connected
            ? el("button", { class: "drop", type: "button", "data-worker-id": w.id, title: "Close its socket abruptly, as a lost connection" }, "Drop connection")
            : "",
      },
    ],
    (row, w) => {
      row.dataset.workerId = w.id;
      row.dataset.connected = String(w.connected);
    },
  );
  document.getElementById("workers-empty").hidden = state.workers.length > 0;
}

// One card per room, rebuilt only when the room changed, so a button under
// the pointer stays put while other rooms move.
function renderRooms(state) {
  const box = document.getElementById("rooms");
  const existing = new Map();
  for (const card of box.children) existing.set(card.dataset.room, card);
  let previous = null;
  for (const room of state.rooms) {
    const sig = JSON.stringify(room);
    let card = existing.get(room.name);
    if (!card || card.sig !== sig) {
      const fresh = roomCard(room);
      fresh.sig = sig;
      if (card) card.replaceWith(fresh);
      card = fresh;
    }
    existing.delete(room.name);
    const wanted = previous ? previous.nextSibling : box.firstChild;
    if (wanted !== card) box.insertBefore(card, wanted);
    previous = card;
  }
  for (const card of existing.values()) card.remove();
  document.getElementById("rooms-empty").hidden = state.rooms.length > 0;
  document.getElementById("rooms-cut").textContent =
    state.counts.rooms > state.rooms.length ? `the newest ${state.rooms.length} of ${state.counts.rooms}` : "";
}

function roomCard(room) {
  return (
      el(
        "article",
        { class: "room", "data-room": room.name },
        el("h3", {}, room.name, el("small", {}, ` created ${clock(room.created_at)}`)),
        el(
          "p",
          {},
          "Participants: ",
          room.participants.length === 0
            ? el("em", {}, "none")
            : el(
                "span",
                { class: "participants" },
                ...room.participants.map((p) =>
                  el(
                    "span",
                    { class: "participant", "data-identity": p.identity, "data-published": String(p.published) },
                    p.identity,
                    p.published
                      ? el("small", {}, " publishing")
                      : el("button", { class: "publish", type: "button", "data-room": room.name, "data-identity": p.identity, title: "Publish a first track: publisher jobs start" }, "Publish"),
                  ),
                ),
              ),
        ),
        room.dispatches.length === 0
          ? el("p", {}, el("em", {}, "No dispatch."))
          : el(
              "ul",
              { class: "dispatches" },
              ...room.dispatches.map((d) =>
                el(
                  "li",
                  { "data-dispatch-id": d.id },
                  el("code", {}, d.id),
                  " → ",
                  d.agent_name || el("em", {}, "default agent"),
                  d.metadata ? el("span", { class: "metadata" }, ` ${d.metadata}`) : "",
                  el("small", {}, ` ${d.job_ids.length} job${d.job_ids.length === 1 ? "" : "s"}`),
                ),
              ),
            ),
      )
  );
}

function timeline(job) {
  const start = job.timeline.length > 0 ? job.timeline[0].at : 0;
  return el(
    "ol",
    { class: "timeline" },
    ...job.timeline.map((e, i) =>
      el(
        "li",
        { "data-what": e.what, title: [clock(e.at), e.worker_id, e.error].filter(Boolean).join(" · ") },
        e.what,
        e.what === "assigned" && e.worker_id ? el("small", {}, ` to ${e.worker_id}`) : "",
        el("time", {}, i === 0 ? ` ${clock(e.at)}` : ` +${span(e.at - start)}`),
      ),
    ),
  );
}

function renderJobs(state) {
  const tbody = document.querySelector("#jobs tbody");
  syncRows(
    tbody,
    state.jobs,
    (j) => j.id,
    [
      {
        sig: (j) => `${j.id} ${j.attempt}`,
        render: (j) => el("span", {}, el("code", {}, j.id), j.attempt > 1 ? el("small", {}, ` attempt ${j.attempt}`) : ""),
      },
      { sig: (j) => j.room, render: (j) => j.room },
      { sig: (j) => j.agent_name, render: (j) => j.agent_name || el("em", {}, "default") },
      { sig: (j) => j.worker_id || "", render: (j) => (j.worker_id ? el("code", {}, j.worker_id) : "—") },
      {
        sig: (j) => `${j.status} ${j.abandoned}`,
        render: (j) =>
          el("span", {}, statusBadge(j.status), j.abandoned ? el("small", { title: "Its worker left and nobody claimed it in time; no restart follows" }, " abandoned") : ""),
      },
      { sig: (j) => JSON.stringify(j.timeline), render: timeline },
      { sig: (j) => j.error, render: (j) => j.error, class: "error-text" },
      {
        sig: (j) => `${j.ended} ${j.status} ${j.abandoned}`,
        render: (j) =>
          !j.ended && !j.abandoned && j.status !== "pending"
            ? el("button", { class: "terminate", type: "button", "data-job-id": j.id, title: "Send the worker a termination; the job ends as a success" }, "Terminate")
            : "",
      },
    ],
    (row, j) => {
      row.dataset.jobId = j.id;
      row.dataset.status = j.status;
      row.dataset.room = j.room;
    },
  );
  document.getElementById("jobs-empty").hidden = state.jobs.length > 0;
  document.getElementById("jobs-cut").textContent =
    state.counts.jobs > state.jobs.length ? `the newest ${state.jobs.length} of ${state.counts.jobs}` : "";
}

function render(state) {
  const c = state.counts;
  document.getElementById("counts").textContent =
    `${c.workers} worker${c.workers === 1 ? "" : "s"} · ${c.rooms} room${c.rooms === 1 ? "" : "s"} · ` +
    `${c.dispatches} dispatch${c.dispatches === 1 ? "" : "es"} · ${c.live_jobs} live of ${c.jobs} job${c.jobs === 1 ? "" : "s"}` +
    ` · v${state.version}`;
  document.getElementById("fault-mode").hidden = !state.fault_mode;
  renderWorkers(state);
  renderRooms(state);
  renderJobs(state);
}

// ---- the live feed -------------------------------------------------------------

function setLive(state, text) {
  const live = document.getElementById("live");
  live.dataset.state = state;
  live.textContent = text;
}

// The last state and when it came, so the load charts keep scrolling
// between pushes.
let last = null;

// Reconnection after the stream was refused (EventSource retries only a
// dropped stream, not a refusal): doubling from 1 s, at most 30 s.
let retry = 1000;

function connect() {
  const events = new EventSource("/dashboard/api/events");
  events.addEventListener("state", (e) => {
    last = { state: JSON.parse(e.data), received: Date.now() };
    render(last.state);
    retry = 1000;
    // "live" once a state is on the page
    setLive("live", "live");
  });
  events.addEventListener("error", async () => {
    setLive("reconnecting", "reconnecting…");
    let status = 0;
    try {
      status = (await fetch("/dashboard/api/state", { credentials: "same-origin" })).status;
    } catch (_) {
      // the server is away
    }
    if (status === 401) {
      // the session ended: the login page
      events.close();
      window.location.assign("/dashboard");
    } else if (events.readyState === EventSource.CLOSED) {
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    }
  });
}

setInterval(() => {
  if (last) renderWorkers({ ...last.state, now: last.state.now + (Date.now() - last.received) });
}, 5000);

// ---- actions -------------------------------------------------------------------

async function post(path, body) {
  const answer = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  const json = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(json.msg || `${answer.status} ${answer.statusText}`);
  return json;
}

function report(ok, text) {
  const result = document.getElementById("action-result");
  result.dataset.ok = String(ok);
  result.textContent = text;
}

async function act(what, run, button) {
  try {
    report(true, await run());
  } catch (e) {
    report(false, `${what} failed: ${e.message}`);
    if (button) button.disabled = false;
  }
}

function fields(form) {
  const data = new FormData(form);
  const out = {};
  for (const [name, value] of data.entries()) out[name] = value;
  return out;
}

function fillRooms(name) {
  for (const input of document.querySelectorAll("#actions input[name=room]")) {
    if (!input.value) input.value = name;
  }
}

function wire() {
  document.getElementById("create-room").addEventListener("submit", (e) => {
    e.preventDefault();
    const { name } = fields(e.target);
    act("Creating the room", async () => {
      const room = await post("/dashboard/api/rooms", { name });
      fillRooms(room.name);
      return `Room ${room.name} created.`;
    });
  });
  document.getElementById("create-dispatch").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = fields(e.target);
    act("The dispatch", async () => {
      const d = await post("/dashboard/api/dispatches", f);
      return `Dispatch ${d.id} created in ${d.room}.`;
    });
  });
  document.getElementById("join-participant").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = fields(e.target);
    act("Joining", async () => {
      const p = await post("/dashboard/api/participants", { room: f.room, identity: f.identity, publish: f.publish === "on" });
      return `${p.identity} joined ${f.room}.`;
    });
  });
  document.addEventListener("click", (e) => {
    const terminate = e.target.closest("button.terminate");
    if (terminate) {
      const id = terminate.dataset.jobId;
      terminate.disabled = true;
      act("Terminating", async () => {
        await post(`/dashboard/api/jobs/${encodeURIComponent(id)}/terminate`);
        return `Job ${id} terminated.`;
      }, terminate);
    }
    const publish = e.target.closest("button.publish");
    if (publish) {
      const { room, identity } = publish.dataset;
      publish.disabled = true;
      act("Publishing", async () => {
        await post("/dashboard/api/participants/publish", { room, identity });
        return `${identity} publishes in ${room}.`;
      }, publish);
    }
    const drop = e.target.closest("button.drop");
    if (drop) {
      const id = drop.dataset.workerId;
      drop.disabled = true;
      act("Dropping the connection", async () => {
        await post(`/dashboard/api/workers/${encodeURIComponent(id)}/drop`);
        return `Worker ${id}'s connection dropped.`;
      }, drop);
    }
  });
}

wire();
connect();
