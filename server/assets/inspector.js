// The room inspector (GET /).
//
// - The list of rooms and their entry counts comes from the REST API
//   (GET /v1/rooms?limit=&after=), polled, one page at a time.
// - The selected room's entries come live from the TypeScript SDK: the inspector
//   only calls client.presence(room) + onChange, which subscribes without ever
//   heartbeating, so watching a room never shows up in it.
// - A few numbers from GET /metrics (Prometheus text) sit at the top.
import { createClient } from "/assets/rollcall-client.js";

const PAGE_SIZE = 50;
const ROOMS_EVERY_MS = 1500;
const METRICS_EVERY_MS = 2000;
const MAX_ROWS = 500; // entries shown of one room (a room may hold 10,000)
const TOKEN_KEY = "rollcall.token";
const AUTH_ERRORS = new Set(["unauthorized", "invalid_token", "token_expired", "auth_failed", "forbidden"]);

const $ = (id) => document.getElementById(id);
const numbers = new Intl.NumberFormat();
const rates = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

// Only needed when the server runs with auth: a token with admin rights, kept for
// this tab only.
let token = sessionStorage.getItem(TOKEN_KEY) || undefined;
const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});

// ---- connection to the server (SDK) -------------------------------------------

let client;
let watched; // { room, presence } of the selected room, if any

function connect() {
  const c = createClient({ url: new URL("/ws", location.href).href, token });
  // Only the current client speaks for the page (an old one may still be closing).
  c.onStateChange((state) => {
    if (c === client) showConnection(state);
  });
  c.onError((error) => {
    if (c !== client) return;
    if (AUTH_ERRORS.has(error.code)) showTokenForm();
    $("room-summary").textContent = `${error.code}: ${error.message}`;
  });
  client = c;
  showConnection(c.state);
}

function showConnection(state) {
  const el = $("connection");
  el.dataset.state = state;
  el.textContent = { connecting: "Connecting…", connected: "Live", reconnecting: "Reconnecting…", closed: "Disconnected" }[state];
}

// ---- the selected room ---------------------------------------------------------

/** Watches `room` live, or nothing when `room` is empty. */
function watch(room) {
  if (watched?.room === room) return;
  // The SDK has no way to unsubscribe from a room, so switching rooms starts a
  // fresh client (close() leaves nothing behind: this client never heartbeated).
  if (watched) {
    void client.close();
    connect();
  }
  clearEntries();
  markCurrentRoom(room);
  if (!room) {
    watched = undefined;
    $("room-heading").textContent = "No room selected";
    $("room-summary").textContent = "";
    $("room-empty").textContent = "Choose a room to watch its entries live.";
    $("room-empty").hidden = false;
    $("room-table").hidden = true;
    return;
  }
  $("room-heading").replaceChildren("Room ", Object.assign(document.createElement("span"), { className: "room-title", textContent: room }));
  $("room-empty").textContent = "No live entries in this room right now.";
  const presence = client.presence(room);
  presence.onChange(showEntries);
  watched = { room, presence };
  showEntries(presence.value()); // empty until the room's snapshot arrives
}

/** Rows of the entries table by client id, each with the entry it shows. */
const rows = new Map();

function clearEntries() {
  rows.clear();
  $("entries").replaceChildren();
}

/** `diff` (from onChange) names the entries that joined or changed: those rows flash. */
function showEntries(entries, diff) {
  const changed = new Set(diff ? [...diff.joined, ...diff.updated] : []);
  const ids = [...entries.keys()].sort((a, b) => a - b).slice(0, MAX_ROWS);
  const keep = new Set(ids);
  for (const [id, row] of rows) {
    if (!keep.has(id)) {
      row.tr.remove();
      rows.delete(id);
    }
  }
  const tbody = $("entries");
  ids.forEach((id, i) => {
    const entry = entries.get(id);
    let row = rows.get(id);
    if (!row) {
      row = newRow(id);
      rows.set(id, row);
    }
    // Without a diff (the first call), a new entry object is news.
    const news = row.entry === undefined || (diff ? changed.has(id) : row.entry !== entry);
    row.entry = entry;
    if (news) {
      row.user.textContent = entry.userId ?? "–";
      row.user.classList.toggle("muted", entry.userId === undefined);
      row.data.textContent = JSON.stringify(entry.data, null, 2);
      row.tr.classList.remove("flash");
      void row.tr.offsetWidth; // restart the highlight animation
      row.tr.classList.add("flash");
    }
    if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] ?? null);
  });
  tickCountdowns();
  const n = entries.size;
  $("room-empty").hidden = n > 0;
  $("room-table").hidden = n === 0;
  let summary = `${numbers.format(n)} live ${n === 1 ? "entry" : "entries"}`;
  if (n > ids.length) summary += ` (first ${numbers.format(ids.length)} shown)`;
  $("room-summary").textContent = summary;
}

function newRow(id) {
  const tr = document.createElement("tr");
  tr.dataset.clientId = String(id);
  const cell = (className, label) => {
    const td = document.createElement("td");
    td.className = className;
    td.dataset.label = label; // shown above each value on narrow screens
    tr.append(td);
    return td;
  };
  cell("num", "Client").textContent = String(id);
  const user = cell("user", "User");
  const data = document.createElement("pre");
  cell("data", "Data").append(data);
  const left = cell("num left", "Expires in");
  return { tr, user, data, left, entry: undefined };
}

/** "Expires in": counts down between updates (expiresAtMs is in the local clock). */
function tickCountdowns() {
  const now = Date.now();
  // A refresh (same data, a later expiry) calls no onChange: read the current expiry.
  const live = watched?.presence.value();
  for (const [id, row] of rows) {
    const ms = Math.max(0, (live?.get(id) ?? row.entry).expiresAtMs - now);
    row.left.textContent = formatDuration(ms);
    row.left.classList.toggle("expiring", ms < 3000);
  }
}
setInterval(tickCountdowns, 200);

function formatDuration(ms) {
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function selectedRoom() {
  const params = new URLSearchParams(location.hash.slice(1));
  return params.get("room") ?? "";
}

function roomLink(room) {
  return `#${new URLSearchParams({ room })}`;
}

window.addEventListener("hashchange", () => watch(selectedRoom()));

$("open-room").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("open-room-name").value.trim();
  if (room) location.hash = roomLink(room);
});

// ---- the room list (REST, polled) ----------------------------------------------

let pageAfter = null; // `after` of the page shown (null: the first page)
const earlierPages = []; // `after` of the pages before it, for "Previous"
let nextAfter = null;
/** List items by room name, reused so that focus stays put across refreshes. */
const items = new Map();

async function loadRooms() {
  const url = new URL("/v1/rooms", location.href);
  url.searchParams.set("limit", String(PAGE_SIZE));
  if (pageAfter !== null) url.searchParams.set("after", pageAfter);
  const response = await fetch(url, { headers: authHeaders(), cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    showTokenForm();
    $("rooms-summary").textContent = "Token needed";
    return;
  }
  if (!response.ok) throw new Error(`GET /v1/rooms answered ${response.status}`);
  const page = await response.json();
  if (page.rooms.length === 0 && pageAfter !== null) {
    // Every room of this page is gone: step back.
    pageAfter = earlierPages.pop() ?? null;
    return loadRooms();
  }
  showRooms(page.rooms);
  nextAfter = page.next;
  $("next-page").disabled = nextAfter === null;
  $("prev-page").disabled = pageAfter === null;
  $("page-label").textContent = `Page ${earlierPages.length + 1}`;
  $("rooms-summary").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

function showRooms(rooms) {
  const list = $("room-list");
  const keep = new Set(rooms.map((r) => r.room));
  for (const [room, item] of items) {
    if (!keep.has(room)) {
      item.li.remove();
      items.delete(room);
    }
  }
  rooms.forEach(({ room, entries }, i) => {
    let item = items.get(room);
    if (!item) {
      item = newRoomItem(room);
      items.set(room, item);
    }
    item.count.textContent = numbers.format(entries);
    item.li.dataset.entries = String(entries);
    item.link.setAttribute("aria-label", `${room}: ${entries} live ${entries === 1 ? "entry" : "entries"}`);
    if (list.children[i] !== item.li) list.insertBefore(item.li, list.children[i] ?? null);
  });
  $("rooms-empty").hidden = rooms.length > 0;
  markCurrentRoom(selectedRoom());
}

function newRoomItem(room) {
  const li = document.createElement("li");
  li.dataset.room = room;
  const link = document.createElement("a");
  link.href = roomLink(room);
  const name = Object.assign(document.createElement("span"), { className: "room-name", textContent: room, title: room });
  const count = Object.assign(document.createElement("span"), { className: "room-count" });
  link.append(name, count);
  li.append(link);
  return { li, link, count };
}

function markCurrentRoom(room) {
  for (const [name, item] of items) {
    if (name === room) item.link.setAttribute("aria-current", "true");
    else item.link.removeAttribute("aria-current");
  }
}

$("next-page").addEventListener("click", () => {
  if (nextAfter === null) return;
  earlierPages.push(pageAfter);
  pageAfter = nextAfter;
  refreshRooms();
});

$("prev-page").addEventListener("click", () => {
  pageAfter = earlierPages.pop() ?? null;
  refreshRooms();
});

function showTokenForm() {
  $("token-form").hidden = false;
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim() || undefined;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token-form").hidden = true;
  // Reconnect with the token, and watch the same room again.
  const room = watched?.room ?? "";
  void client.close();
  watched = undefined;
  connect();
  watch(room);
  refreshRooms();
});

// ---- metrics ------------------------------------------------------------------------

let lastSample; // { at, heartbeats, delivered }, for rates between two samples

async function loadMetrics() {
  const response = await fetch("/metrics", { cache: "no-store" });
  if (!response.ok) throw new Error(`GET /metrics answered ${response.status}`);
  const m = parsePrometheus(await response.text());
  const at = performance.now();
  const show = (name, value, format = numbers) => {
    document.querySelector(`[data-metric="${name}"]`).textContent = value === undefined || Number.isNaN(value) ? "–" : format.format(value);
  };
  show("connections", m.get("rollcall_connections"));
  show("rooms", m.get("rollcall_rooms"));
  show("entries", m.get("rollcall_live_entries"));
  show("errors", m.get("rollcall_errors_total") ?? 0);
  const sample = { at, heartbeats: m.get("rollcall_heartbeats_total") ?? 0, delivered: m.get("rollcall_fanout_delivered_total") ?? 0 };
  if (lastSample) {
    const seconds = (sample.at - lastSample.at) / 1000;
    show("heartbeatRate", Math.max(0, sample.heartbeats - lastSample.heartbeats) / seconds, rates);
    show("deliveryRate", Math.max(0, sample.delivered - lastSample.delivered) / seconds, rates);
  }
  lastSample = sample;
}

/** Prometheus text format → Map of metric name to value (summed over label sets). */
function parsePrometheus(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    const match = /^([A-Za-z_:][\w:]*)(?:\{.*\})?\s+(\S+)/.exec(line);
    if (!match) continue; // comments (# HELP, # TYPE) and blank lines
    values.set(match[1], (values.get(match[1]) ?? 0) + Number(match[2]));
  }
  return values;
}

// ---- polling ------------------------------------------------------------------------

/** Runs `load` now and every `ms` while the tab is visible; returns "refresh now". */
function poll(load, ms, onProblem) {
  let timer;
  let busy = false;
  let again = false;
  async function run() {
    clearTimeout(timer);
    if (document.hidden) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      await load();
    } catch (error) {
      onProblem(error);
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      return run();
    }
    timer = setTimeout(run, ms);
  }
  document.addEventListener("visibilitychange", run);
  run();
  return run;
}

connect();
watch(selectedRoom());
const refreshRooms = poll(loadRooms, ROOMS_EVERY_MS, () => {
  $("rooms-summary").textContent = "Server unreachable, retrying…";
});
poll(loadMetrics, METRICS_EVERY_MS, () => {});
