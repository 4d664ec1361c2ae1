// Live cursors and a typing indicator, built on Rollcall's TypeScript SDK.
//
// Everyone on /demo?room=NAME shares one presence room. Each visitor's entry is
//
//   { name, color, x, y, typing }
//
// with x and y as fractions (0 to 1) of the board, so that windows of any size
// agree, or null while the pointer is off the board. A cursor moves when its
// visitor's entry changes and disappears when the entry goes: at once when the
// visitor leaves (close() on pagehide), or when its TTL runs out if the tab died.
//
// What a visitor says is not presence (it is not state, and nobody who arrives later
// should see it): it goes to the others as a broadcast, { said }, shown by the
// sender's cursor for a few seconds and never stored.
import { createClient } from "/assets/rollcall-client.js";

const TTL_MS = 4_000; // a cursor outlives its visitor's last heartbeat by this much
const SEND_EVERY_MS = 50; // at most 20 heartbeats a second while the pointer moves
const TYPING_IDLE_MS = 2_000; // "typing…" stops this long after the last keystroke
const SAID_FOR_MS = 5_000; // how long a sent message stays next to the cursor
// Cursor colours, dark enough for white text on top (contrast ≥ 4.5:1).
const COLORS = ["#b91c1c", "#1d4ed8", "#15803d", "#a21caf", "#c2410c", "#0f766e", "#6d28d9", "#a16207", "#0369a1", "#be185d"];

const $ = (id) => document.getElementById(id);
const stage = $("stage");

// ---- 1. Connect ----------------------------------------------------------------
// The server serves this page, so its WebSocket endpoint is /ws on the same host
// (the SDK turns http:// into ws:// and https:// into wss://).
const client = createClient({ url: new URL("/ws", location.href).href });
client.onError((error) => {
  console.warn(`rollcall: ${error.code}: ${error.message}`);
  if (error.code === "auth_failed") {
    stage.querySelector(".stage-hint").textContent = "This server requires a token (auth is on): the demo needs a server without auth.";
  }
});
client.onStateChange(showConnection);
showConnection(client.state);

// ---- 2. Who am I: a random name, and a colour from my client id ------------------
// (Client ids are handed out in order, so visitors who arrive together differ.)
// waitForConnected() rejects when the server refuses for good (auth on, see above):
// the demo then stops here, with the hint on the stage.
await client.waitForConnected().catch(() => new Promise(() => {}));
const me = { name: randomName(), color: COLORS[client.clientId % COLORS.length] };
$("me-name").textContent = me.name;
$("me-name").style.setProperty("--color", me.color);

// ---- 3. Join the room ------------------------------------------------------------
// track() sends my entry and re-sends it every TTL/3 while I sit still; each
// heartbeat() after that replaces what track() keeps sending.
const roomName = new URLSearchParams(location.search).get("room") || "demo";
$("room-link").textContent = roomName;
$("room-link").href = `/#${new URLSearchParams({ room: roomName })}`; // the inspector
$("room").value = roomName;
const room = client.presence(roomName);
let mine = { name: me.name, color: me.color, x: null, y: null, typing: false };
room.track(mine, TTL_MS);

/** Changes my entry; the server hears about it within SEND_EVERY_MS. */
function update(changes) {
  mine = { ...mine, ...changes };
  sendSoon();
}

// Throttle: however fast the pointer moves, send the latest state at most every
// SEND_EVERY_MS (the server allows 120 heartbeats a second per connection).
let sendTimer;
let lastSentAt = -Infinity;
function sendSoon() {
  if (sendTimer !== undefined) return;
  const wait = Math.max(0, lastSentAt + SEND_EVERY_MS - performance.now());
  sendTimer = setTimeout(() => {
    sendTimer = undefined;
    lastSentAt = performance.now();
    room.heartbeat(mine, TTL_MS);
  }, wait);
}

// ---- 4. My pointer -------------------------------------------------------------------
function pointAt(event) {
  // Relative to the board's inside (without its border), as the cursors are drawn.
  const box = stage.getBoundingClientRect();
  update({
    x: clamp01((event.clientX - box.left - stage.clientLeft) / stage.clientWidth),
    y: clamp01((event.clientY - box.top - stage.clientTop) / stage.clientHeight),
  });
}
stage.addEventListener("pointermove", pointAt);
stage.addEventListener("pointerdown", pointAt); // a tap, on a touch screen
stage.addEventListener("pointerleave", (event) => {
  // A mouse that leaves the board hides my cursor; a finger lifted leaves it put.
  if (event.pointerType === "mouse") update({ x: null, y: null });
});

// ---- 5. Typing… and saying -------------------------------------------------------------
let typingTimer;
$("message").addEventListener("input", () => {
  clearTimeout(typingTimer);
  const typing = $("message").value !== "";
  if (typing !== mine.typing) update({ typing });
  if (typing) typingTimer = setTimeout(() => update({ typing: false }), TYPING_IDLE_MS);
});
$("message").addEventListener("blur", () => {
  if (mine.typing) update({ typing: false });
});

$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const said = $("message").value.trim();
  $("message").value = "";
  clearTimeout(typingTimer);
  if (mine.typing) update({ typing: false });
  // To everyone in the room now; the others show it by my cursor.
  if (said !== "") void room.broadcast({ said: said.slice(0, 140) });
});

// What the others say: shown by their cursor for SAID_FOR_MS.
const saying = new Map(); // client id → { text, timer }
room.onBroadcast((data, from) => {
  const said = typeof data === "object" && data !== null && typeof data.said === "string" ? data.said.slice(0, 140) : "";
  if (said === "") return;
  clearTimeout(saying.get(from.clientId)?.timer);
  const timer = setTimeout(() => {
    saying.delete(from.clientId);
    showSaid(from.clientId);
  }, SAID_FOR_MS);
  saying.set(from.clientId, { text: said, timer });
  showSaid(from.clientId);
});

function showSaid(id) {
  const el = cursors.get(id);
  if (el) el.querySelector(".said").textContent = saying.get(id)?.text ?? "";
}

// ---- 6. Everyone else ----------------------------------------------------------------------
// onChange gets the room's live entries (a Map by client id, mine included) after
// every burst of changes, and when an entry expires.
room.onChange(render);

// ---- 7. Leave with the page ---------------------------------------------------------------------
// close() sends the leave at once, so the others see my cursor go now; if the tab
// is killed instead, my entry expires TTL_MS after its last heartbeat.
addEventListener("pagehide", () => void client.close());
// Back from the back/forward cache, the closed client cannot come back: start over.
addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});

// ---- rendering (plain DOM) ----------------------------------------------------------------------

const cursors = new Map(); // client id → cursor element
const people = new Map(); // client id → list item
let known; // client ids of the last render, to announce who joins and leaves
let lastNames = new Map(); // their names, to say who left

function render(entries) {
  const visitors = new Map();
  for (const [id, entry] of entries) visitors.set(id, visitor(id, entry.data));
  renderCursors(visitors);
  renderPeople(visitors);
  announce(visitors);
}

/** Whatever a client sent, something safe to show (a bot may send anything). */
function visitor(id, data) {
  const d = typeof data === "object" && data !== null ? data : {};
  const inside = (v) => typeof v === "number" && v >= 0 && v <= 1;
  return {
    id,
    isMe: id === client.clientId,
    name: typeof d.name === "string" && d.name !== "" ? d.name.slice(0, 40) : `Client ${id}`,
    color: typeof d.color === "string" && /^#[0-9a-f]{6}$/i.test(d.color) ? d.color : "#5b6170",
    x: inside(d.x) && inside(d.y) ? d.x : null,
    y: inside(d.x) && inside(d.y) ? d.y : null,
    typing: d.typing === true,
  };
}

function renderCursors(visitors) {
  for (const [id, el] of cursors) {
    if (!visitors.has(id)) {
      el.remove();
      cursors.delete(id);
    }
  }
  for (const v of visitors.values()) {
    if (v.isMe) continue; // my own cursor is the real pointer
    let el = cursors.get(v.id);
    if (!el) {
      el = $("cursor-template").content.firstElementChild.cloneNode(true);
      el.dataset.clientId = String(v.id);
      cursors.set(v.id, el);
      stage.append(el);
    }
    el.style.setProperty("--color", v.color);
    el.querySelector(".name").textContent = v.name;
    el.querySelector(".typing").hidden = !v.typing;
    el.querySelector(".said").textContent = saying.get(v.id)?.text ?? "";
    place(el, v.x, v.y);
  }
  stage.querySelector(".stage-hint").hidden = cursors.size > 0;
}

/** Moves a cursor; the CSS transition glides it between two updates. */
function place(el, x, y) {
  el.hidden = x === null;
  if (x === null) {
    el.classList.remove("placed"); // do not glide in from where it left
    return;
  }
  el.dataset.x = String(x);
  el.dataset.y = String(y);
  el.style.setProperty("--x", `${(x * stage.clientWidth).toFixed(1)}px`);
  el.style.setProperty("--y", `${(y * stage.clientHeight).toFixed(1)}px`);
  if (!el.classList.contains("placed")) {
    // Appear in place, then glide from the next update on.
    requestAnimationFrame(() => requestAnimationFrame(() => el.classList.add("placed")));
  }
}

// The board's size changes with the window: put every cursor back where it belongs.
new ResizeObserver(() => {
  for (const el of cursors.values()) {
    if (!el.hidden) place(el, Number(el.dataset.x), Number(el.dataset.y));
  }
}).observe(stage);

function renderPeople(visitors) {
  const list = $("people");
  const sorted = [...visitors.values()].sort((a, b) => Number(b.isMe) - Number(a.isMe) || a.name.localeCompare(b.name) || a.id - b.id);
  for (const [id, li] of people) {
    if (!visitors.has(id)) {
      li.remove();
      people.delete(id);
    }
  }
  sorted.forEach((v, i) => {
    let li = people.get(v.id);
    if (!li) {
      li = document.createElement("li");
      li.dataset.clientId = String(v.id);
      li.innerHTML = '<span class="swatch"></span><span class="who"></span><span class="typing"></span>';
      people.set(v.id, li);
    }
    if (v.isMe) li.dataset.me = "";
    li.style.setProperty("--color", v.color);
    li.querySelector(".who").textContent = v.isMe ? `${v.name} (you)` : v.name;
    li.querySelector(".typing").textContent = v.typing ? "typing…" : "";
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] ?? null);
  });
  $("people-count").textContent = `(${visitors.size})`;
}

/** Tells screen readers who joined and who left (never about myself). */
function announce(visitors) {
  const ids = new Set(visitors.keys());
  if (known !== undefined) {
    const news = [];
    for (const v of visitors.values()) if (!known.has(v.id) && !v.isMe) news.push(`${v.name} joined`);
    for (const id of known) if (!ids.has(id)) news.push(`${lastNames.get(id) ?? `Client ${id}`} left`);
    if (news.length > 0) $("announcer").textContent = news.join(". ");
  }
  known = ids;
  lastNames = new Map([...visitors.values()].map((v) => [v.id, v.name]));
}

// ---- small helpers ----------------------------------------------------------------------------------

function showConnection(state) {
  const el = $("connection");
  el.dataset.state = state;
  el.textContent = { connecting: "Connecting…", connected: "Live", reconnecting: "Reconnecting…", closed: "Disconnected" }[state];
}

/** Clamped to [0, 1] and rounded to 4 decimals (plenty for a screen, and short JSON). */
function clamp01(v) {
  return Math.round(Math.min(1, Math.max(0, v)) * 10_000) / 10_000;
}

function randomName() {
  const pick = (list) => list[Math.floor(Math.random() * list.length)];
  const adjectives = ["Swift", "Quiet", "Brave", "Clever", "Gentle", "Lucky", "Sunny", "Witty", "Bold", "Calm"];
  const animals = ["Otter", "Fox", "Heron", "Lynx", "Panda", "Koala", "Falcon", "Badger", "Dolphin", "Owl"];
  return `${pick(adjectives)} ${pick(animals)}`;
}
