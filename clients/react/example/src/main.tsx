// Live cursors with names and a "who's here" list, typed with an Effect schema.
//
// Query parameters: ?server=ws://127.0.0.1:7700/ws (the rollcall server; this is the
// default), &room=example:cursors, &name=Ada.
import { StrictMode, useEffect, type PointerEvent } from "react";
import { createRoot } from "react-dom/client";
import { Schema } from "effect";
import { RollcallProvider, defineRoom, shallow, useClient, useConnectionState, useMyPresence, useOthers } from "rollcall-react";

const params = new URLSearchParams(location.search);
const SERVER = params.get("server") ?? "ws://127.0.0.1:7700/ws";
const ROOM = params.get("room") ?? "example:cursors";
const COLORS = ["#e11d48", "#2563eb", "#16a34a", "#d97706", "#7c3aed", "#0891b2"];
const NAME = params.get("name") ?? `Guest ${Math.floor(Math.random() * 1000)}`;
const COLOR = COLORS[Math.floor(Math.random() * COLORS.length)]!;
const TTL_MS = 4_000; // a closed tab's cursor goes at most this long after it stopped

// Where the pointer is, as fractions of the board (so any window size agrees); null when off it.
const Presence = Schema.Struct({
  name: Schema.String,
  color: Schema.String,
  cursor: Schema.NullOr(Schema.Struct({ x: Schema.Number, y: Schema.Number })),
});
const cursors = defineRoom(ROOM, Presence);

function Board() {
  const [, update] = useMyPresence(cursors, { name: NAME, color: COLOR, cursor: null }, TTL_MS);
  const others = useOthers(cursors);
  const move = (e: PointerEvent<HTMLDivElement>) => {
    const box = e.currentTarget.getBoundingClientRect();
    const cursor = { x: (e.clientX - box.left) / box.width, y: (e.clientY - box.top) / box.height };
    update((p) => ({ ...p, cursor }));
  };
  return (
    <div id="board" onPointerMove={move} onPointerLeave={() => update((p) => ({ ...p, cursor: null }))}>
      {[...others].map(([clientId, { data }]) =>
        data.cursor === null ? null : (
          <div
            key={clientId}
            className="cursor"
            data-client-id={clientId}
            data-name={data.name}
            style={{ left: `${data.cursor.x * 100}%`, top: `${data.cursor.y * 100}%` }}
          >
            <div className="dot" style={{ background: data.color }} />
            <span className="name" style={{ background: data.color }}>
              {data.name}
            </span>
          </div>
        ),
      )}
    </div>
  );
}

// Re-renders when someone joins, leaves or is renamed, not when a cursor moves.
function WhoIsHere() {
  const people = useOthers(cursors, (others) => [...others.values()].map((e) => `${e.data.name}\u0000${e.data.color}`).sort(), shallow);
  const state = useConnectionState();
  return (
    <aside>
      <p id="connection" data-state={state}>
        {state}
      </p>
      <h3>Who's here</h3>
      <ul id="people">
        <li data-me>
          <span className="swatch" style={{ background: COLOR }} /> {NAME} (you)
        </li>
        {people.map((p) => {
          const [name, color] = p.split("\u0000");
          return (
            <li key={p} data-name={name}>
              <span className="swatch" style={{ background: color }} /> {name}
            </li>
          );
        })}
      </ul>
    </aside>
  );
}

// Leave at once when the tab goes away (otherwise the entry lasts until its TTL).
function LeaveOnPageHide() {
  const client = useClient();
  useEffect(() => {
    const leave = () => void client.close();
    addEventListener("pagehide", leave);
    return () => removeEventListener("pagehide", leave);
  }, [client]);
  return null;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    {/* In a bundled app, pass effect's Schema module for the SDK to decode with. */}
    <RollcallProvider url={SERVER} options={{ effectSchema: Schema }}>
      <Board />
      <WhoIsHere />
      <LeaveOnPageHide />
    </RollcallProvider>
  </StrictMode>,
);
