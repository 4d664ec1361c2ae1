// React bindings for rollcall-client: a provider that owns (or borrows) the client,
// and hooks built on useSyncExternalStore over per-room stores.
//
// Lifetimes: a room's `Presence` view is opened when the first hook subscribes to it
// and closed when the last one unsubscribes. Closing is deferred to a microtask so
// that React's StrictMode double mount (mount, unmount, mount in one commit) neither
// leaves the room nor opens it twice. The same holds for `useMyPresence`'s entry and
// for the client a `<RollcallProvider url>` creates.
import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore, type ReactNode } from "react";
import {
  createClient,
  type ClientOptions,
  type ConnectionState,
  type Presence,
  type PresenceEntry,
  type PresenceSchema,
  type PresenceUser,
  type RollcallClient,
  type SchemaInput,
  type SchemaOutput,
} from "rollcall-client";

export type { ConnectionState, PresenceEntry, PresenceSchema, PresenceUser, RollcallClient } from "rollcall-client";

// ---- public types -------------------------------------------------------------------

/**
 * A room and the schema its entries are decoded with, made by `defineRoom`. Every hook
 * accepts one in place of a room name, so that `useOthers(cursors, ...)` is typed.
 */
export interface RoomSpec<T, In = T> {
  readonly name: string;
  readonly schema: PresenceSchema | undefined;
  /** Type-only: the decoded entry type and the heartbeat input type. */
  readonly __types?: { readonly out: T; readonly in: In };
}

/** A room name (entries untyped) or a `RoomSpec` from `defineRoom`. */
export type RoomArg<T, In = T> = string | RoomSpec<T, In>;

/**
 * The write side of a room, stable for the component's lifetime. Its methods act on
 * the room's open view; before the first subscription (and on the server) they do nothing.
 */
export interface PresenceHandle<T, In = T> {
  readonly room: string;
  heartbeat(data: In, ttlMs: number): void;
  track(data: In, ttlMs: number): void;
  leave(): void;
  /** The live entries now (an empty Map while the room is not open). */
  value(): Map<number, PresenceEntry<T>>;
}

/** Names a room and its schema once, for typed hooks: `defineRoom("doc:1", Cursor)`. */
export function defineRoom<S extends PresenceSchema>(name: string, schema: S): RoomSpec<SchemaOutput<S>, SchemaInput<S>>;
export function defineRoom<T = unknown>(name: string): RoomSpec<T>;
export function defineRoom(name: string, schema?: PresenceSchema): RoomSpec<unknown> {
  return Object.freeze({ name, schema });
}

// ---- stores -----------------------------------------------------------------------------

type Entries<T> = Map<number, PresenceEntry<T>>;
const EMPTY_ENTRIES: Entries<never> = new Map();
const EMPTY_USERS: Map<string, PresenceUser<never>> = new Map();
const NO_SCHEMA = {};
const isBrowser = typeof window !== "undefined" && typeof document !== "undefined";

/**
 * Groups entries by user as `Presence.users()` does: by `userId` (the token's `sub`);
 * an entry without one is a user of its own, keyed `client:<clientId>`. Done here from
 * the store's snapshot so that every hook of a render sees the same state.
 */
function groupUsers<T>(entries: Entries<T>): Map<string, PresenceUser<T>> {
  const users = new Map<string, PresenceUser<T>>();
  for (const [id, e] of entries) {
    const key = e.userId ?? `client:${id}`;
    let u = users.get(key);
    if (!u) {
      u = { userId: key, entries: new Map() };
      users.set(key, u);
    }
    u.entries.set(id, e);
  }
  return users;
}

function sameEntries<T>(a: Entries<T>, b: Entries<T>): boolean {
  if (a === b) return true;
  if (a.size !== b.size) return false;
  for (const [id, e] of a) if (b.get(id) !== e) return false;
  return true;
}

/**
 * One room (and schema) of one client, shared by every hook that uses it: the open
 * view, its latest entries and what is derived from them (self, others, users), each
 * recomputed at most once per change so that selectors compare against stable values.
 */
class RoomStore<T, In> {
  private refs = 0;
  private view: Presence<T, In> | null = null;
  private offChange: (() => void) | undefined;
  private entries: Entries<T> = EMPTY_ENTRIES;
  private derivedFor: Entries<T> | undefined;
  private derivedId: number | undefined;
  private self: PresenceEntry<T> | undefined;
  private others: Entries<T> = EMPTY_ENTRIES;
  private users: Map<string, PresenceUser<T>> | undefined;
  private readonly listeners = new Set<() => void>();
  // useMyPresence: how many hold the entry, and what was last tracked.
  private claims = 0;
  private mine: { data: In; ttlMs: number } | undefined;
  readonly handle: PresenceHandle<T, In>;

  constructor(
    private readonly owner: ClientHandle,
    readonly name: string,
    private readonly schema: PresenceSchema | undefined,
  ) {
    const store = this;
    this.handle = Object.freeze({
      room: name,
      heartbeat: (data: In, ttlMs: number) => store.view?.heartbeat(data, ttlMs),
      track: (data: In, ttlMs: number) => store.view?.track(data, ttlMs),
      leave: () => store.view?.leave(),
      value: () => store.view?.value() ?? new Map<number, PresenceEntry<T>>(),
    });
  }

  // Arrow properties: stable identities for useSyncExternalStore.
  readonly subscribe = (onStoreChange: () => void): (() => void) => {
    this.listeners.add(onStoreChange);
    this.retain();
    return () => {
      this.listeners.delete(onStoreChange);
      this.release();
    };
  };

  readonly getEntries = (): Entries<T> => this.entries;
  readonly getSelf = (): PresenceEntry<T> | undefined => {
    this.derive();
    return this.self;
  };
  readonly getOthers = (): Entries<T> => {
    this.derive();
    return this.others;
  };
  readonly getUsers = (): Map<string, PresenceUser<T>> => {
    if (this.users === undefined) this.users = this.entries.size === 0 ? (EMPTY_USERS as Map<string, PresenceUser<T>>) : groupUsers(this.entries);
    return this.users;
  };

  private derive(): void {
    const id = this.owner.clientId();
    if (this.derivedFor === this.entries && this.derivedId === id) return;
    this.derivedFor = this.entries;
    this.derivedId = id;
    this.self = id === undefined ? undefined : this.entries.get(id);
    let others = this.entries;
    if (this.self !== undefined) {
      others = new Map(this.entries);
      others.delete(id!);
    }
    // A change of this client's own entry alone keeps `others` (and what hooks select
    // from it) as it was: entries keep their identity while unchanged.
    if (!sameEntries(others, this.others)) this.others = others;
  }

  private set(entries: Entries<T>): void {
    this.entries = entries;
    this.users = undefined;
    for (const fn of [...this.listeners]) fn();
  }

  private retain(): void {
    this.refs++;
    if (!this.view) this.open();
  }

  private release(): void {
    this.refs--;
    if (this.refs > 0) return;
    queueMicrotask(() => {
      if (this.refs === 0) this.closeView();
    });
  }

  private open(): void {
    const client = this.owner.get();
    if (!client) return;
    const view = (this.schema === undefined ? client.presence(this.name) : client.presence(this.name, this.schema)) as unknown as Presence<T, In>;
    this.view = view;
    this.offChange = view.onChange((entries) => this.set(entries));
    const now = view.value();
    if (now.size > 0 || this.entries.size > 0) this.set(now);
  }

  private closeView(): void {
    const view = this.view;
    if (!view) return;
    this.offChange?.();
    this.offChange = undefined;
    this.view = null;
    this.mine = undefined;
    view.close(); // the room's last view leaves the room
    this.entries = EMPTY_ENTRIES;
    this.users = undefined;
    this.owner.forget(this.name, this.schema, this as RoomStore<unknown, unknown>);
  }

  // ---- useMyPresence ----------------------------------------------------------------

  /** Holds the room open and this client's entry tracked until the returned function runs. */
  claim(): () => void {
    this.retain();
    this.claims++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.claims--;
      if (this.claims === 0) {
        queueMicrotask(() => {
          if (this.claims > 0) return; // remounted (StrictMode): keep the entry
          this.mine = undefined;
          this.view?.leave();
        });
      }
      this.release();
    };
  }

  /** Tracks `data` (the client throttles heartbeats: `heartbeatThrottleMs`). */
  track(data: In, ttlMs: number): void {
    if (!this.view) return;
    const prev = this.mine;
    if (prev && prev.data === data && prev.ttlMs === ttlMs) return;
    this.mine = { data, ttlMs };
    this.view.track(data, ttlMs);
  }
}

/**
 * The client of a provider: given (`client` prop) or created on first use in the
 * browser (`url` prop) and closed when the provider unmounts. Holds the room stores.
 */
class ClientHandle {
  private client: RollcallClient | undefined;
  /** Open rooms (and those a render asked for), by name and schema. */
  private readonly stores = new Map<string, Map<object, RoomStore<unknown, unknown>>>();
  private mounts = 0;
  private closed = false;

  constructor(
    private readonly make: (() => RollcallClient) | undefined,
    given: RollcallClient | undefined,
  ) {
    this.client = given;
  }

  /** The client; `undefined` on the server for a provider that creates its own. */
  get(): RollcallClient | undefined {
    if (this.make !== undefined && isBrowser && (this.client === undefined || this.closed)) {
      // After a close (the provider's effects were torn down, e.g. by a hidden
      // <Activity>) hooks that subscribe again get a new client.
      this.closed = false;
      this.client = this.make();
    }
    return this.client;
  }

  clientId(): number | undefined {
    return this.client?.clientId;
  }

  store<T, In>(name: string, schema: PresenceSchema | undefined): RoomStore<T, In> {
    let bySchema = this.stores.get(name);
    if (!bySchema) {
      bySchema = new Map();
      this.stores.set(name, bySchema);
    }
    const key = (schema ?? NO_SCHEMA) as object;
    let s = bySchema.get(key);
    if (!s) {
      s = new RoomStore<unknown, unknown>(this, name, schema);
      bySchema.set(key, s);
    }
    return s as unknown as RoomStore<T, In>;
  }

  /** A store closed its view: a later `store()` makes a new one (rooms visited once do not pile up). */
  forget(name: string, schema: PresenceSchema | undefined, store: RoomStore<unknown, unknown>): void {
    const bySchema = this.stores.get(name);
    const key = (schema ?? NO_SCHEMA) as object;
    if (bySchema?.get(key) !== store) return;
    bySchema.delete(key);
    if (bySchema.size === 0) this.stores.delete(name);
  }

  readonly subscribeState = (onChange: () => void): (() => void) => {
    const client = this.get();
    if (!client) return () => {};
    return client.onStateChange(onChange);
  };

  readonly getState = (): ConnectionState => this.client?.state ?? "connecting";

  /** The provider mounted (a created client is closed once it has unmounted for good). */
  mount(): () => void {
    this.mounts++;
    return () => {
      this.mounts--;
      if (this.mounts > 0 || this.make === undefined) return;
      queueMicrotask(() => {
        if (this.mounts > 0 || this.closed) return;
        this.closed = true;
        void this.client?.close();
      });
    };
  }
}

// ---- provider ---------------------------------------------------------------------------

const ClientContext = createContext<ClientHandle | null>(null);

/** Props of `<RollcallProvider>`: either `url` (and `token`, `options`) or `client`. */
export type RollcallProviderProps =
  | {
      /** The server's WebSocket URL, e.g. `wss://rollcall.example.com/ws`. */
      url: ClientOptions["url"];
      /** A JWT, or a function returning one (called on every connect and renewal). */
      token?: ClientOptions["token"];
      /** Other `createClient` options (read when the client is created). */
      options?: Omit<ClientOptions, "url" | "token">;
      client?: undefined;
      children?: ReactNode;
    }
  | {
      /** A client you created (and close) yourself. */
      client: RollcallClient;
      url?: undefined;
      token?: undefined;
      options?: undefined;
      children?: ReactNode;
    };

/**
 * Makes a Rollcall client available to the hooks below it. With `url` it creates the
 * client (in the browser only, on first use) and closes it on unmount; a new `url` or
 * string `token` makes a new client. With `client` it uses yours and never closes it.
 */
export function RollcallProvider(props: RollcallProviderProps): ReturnType<typeof createElement> {
  const { url, token, options, client } = props;
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const urlKey = JSON.stringify(url ?? null);
  const tokenKey = typeof token === "string" ? `s:${token}` : typeof token;
  const handle = useMemo(() => {
    if (client !== undefined) return new ClientHandle(undefined, client);
    if (url === undefined) throw new TypeError("<RollcallProvider> needs a `url` or a `client`");
    return new ClientHandle(() => {
      const t = tokenRef.current;
      const tokenOption: ClientOptions["token"] =
        typeof t === "function" ? () => (tokenRef.current as () => string | Promise<string>)() : t;
      const opts = { ...optionsRef.current, url } as ClientOptions;
      if (tokenOption !== undefined) opts.token = tokenOption;
      return createClient(opts);
    }, undefined);
    // The URL's value and the token's kind (and value for a string) decide; not their identity.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, urlKey, tokenKey]);
  useEffect(() => handle.mount(), [handle]);
  return createElement(ClientContext.Provider, { value: handle }, props.children);
}

function useHandle(hook: string): ClientHandle {
  const handle = useContext(ClientContext);
  if (!handle) throw new Error(`${hook} must be used inside <RollcallProvider>`);
  return handle;
}

/**
 * The provider's client. During server rendering a provider given a `url` has no
 * client (it never connects on the server): `useClient()` throws there; read it in
 * effects and event handlers, or use the other hooks, which render empty on the server.
 */
export function useClient(): RollcallClient {
  const client = useHandle("useClient()").get();
  if (!client) throw new Error("useClient(): there is no client during server rendering (a <RollcallProvider url> connects in the browser only)");
  return client;
}

/** The connection state, re-rendering on changes ("connecting" on the server). */
export function useConnectionState(): ConnectionState {
  const handle = useHandle("useConnectionState()");
  return useSyncExternalStore(handle.subscribeState, handle.getState, serverState);
}

const serverState = (): ConnectionState => "connecting";
const serverEntries = (): Entries<never> => EMPTY_ENTRIES;
const serverUsers = (): Map<string, PresenceUser<never>> => EMPTY_USERS;
const serverNone = (): undefined => undefined;

function useStore<T, In>(hook: string, room: RoomArg<T, In>, schema?: PresenceSchema): RoomStore<T, In> {
  const handle = useHandle(hook);
  const name = typeof room === "string" ? room : room.name;
  const s = schema ?? (typeof room === "string" ? undefined : room.schema);
  return handle.store<T, In>(name, s);
}

// ---- reading hooks ------------------------------------------------------------------------

/**
 * Every live entry of the room (`Map<clientId, PresenceEntry<T>>`, own entry included)
 * and a handle to heartbeat, track and leave. Re-renders on every change: for a
 * component that shows only part of the room, `useOthers` with a selector renders less.
 */
export function usePresence<S extends PresenceSchema>(
  room: string,
  schema: S,
): [Map<number, PresenceEntry<SchemaOutput<S>>>, PresenceHandle<SchemaOutput<S>, SchemaInput<S>>];
export function usePresence<T = unknown, In = T>(room: RoomArg<T, In>): [Map<number, PresenceEntry<T>>, PresenceHandle<T, In>];
export function usePresence(room: RoomArg<unknown, unknown>, schema?: PresenceSchema): [Map<number, PresenceEntry<unknown>>, PresenceHandle<unknown, unknown>] {
  const store = useStore<unknown, unknown>("usePresence()", room, schema);
  const entries = useSyncExternalStore(store.subscribe, store.getEntries, serverEntries);
  return [entries, store.handle];
}

/**
 * The room's entries without this client's own, or what `selector` picks from them:
 * the component re-renders only when the selection changes by `isEqual` (default
 * `Object.is`; `shallow` compares arrays, Maps, Sets and plain objects one level deep).
 */
export function useOthers<T = unknown, In = T>(room: RoomArg<T, In>): Map<number, PresenceEntry<T>>;
export function useOthers<T, R, In = T>(room: RoomArg<T, In>, selector: (others: Map<number, PresenceEntry<T>>) => R, isEqual?: (a: R, b: R) => boolean): R;
export function useOthers<T, R, In>(room: RoomArg<T, In>, selector?: (others: Map<number, PresenceEntry<T>>) => R, isEqual?: (a: R, b: R) => boolean): R | Map<number, PresenceEntry<T>> {
  const store = useStore<T, In>("useOthers()", room);
  return useSelected(store.subscribe, store.getOthers, serverEntries as () => Entries<T>, selector, isEqual);
}

/** This client's own entry in the room (as the server has it), or `undefined`. */
export function useSelf<T = unknown, In = T>(room: RoomArg<T, In>): PresenceEntry<T> | undefined {
  const store = useStore<T, In>("useSelf()", room);
  return useSyncExternalStore(store.subscribe, store.getSelf, serverNone);
}

/**
 * The room's entries grouped by user (the token's `sub`; an entry without one is a user
 * of its own, keyed `client:<clientId>`), own entries included; optionally a selection.
 */
export function useUsers<T = unknown, In = T>(room: RoomArg<T, In>): Map<string, PresenceUser<T>>;
export function useUsers<T, R, In = T>(room: RoomArg<T, In>, selector: (users: Map<string, PresenceUser<T>>) => R, isEqual?: (a: R, b: R) => boolean): R;
export function useUsers<T, R, In>(room: RoomArg<T, In>, selector?: (users: Map<string, PresenceUser<T>>) => R, isEqual?: (a: R, b: R) => boolean): R | Map<string, PresenceUser<T>> {
  const store = useStore<T, In>("useUsers()", room);
  return useSelected(store.subscribe, store.getUsers, serverUsers as () => Map<string, PresenceUser<T>>, selector, isEqual);
}

/**
 * useSyncExternalStore with a selector: the selection is recomputed when the source
 * changes and kept (same identity, no re-render) while `isEqual` says it is the same.
 */
function useSelected<S, R>(
  subscribe: (cb: () => void) => () => void,
  getSource: () => S,
  getServerSource: () => S,
  selector: ((source: S) => R) | undefined,
  isEqual: ((a: R, b: R) => boolean) | undefined,
): R | S {
  // The last rendered selection, so that a new selector function (an inline arrow)
  // still compares against it instead of starting over.
  const last = useRef<{ value: R } | null>(null);
  const [getSelection, getServerSelection] = useMemo((): [() => R | S, () => R | S] => {
    if (!selector) return [getSource, getServerSource];
    const eq = isEqual ?? Object.is;
    let memo: { source: S; value: R } | null = null;
    const select = (source: S): R => {
      if (memo !== null && memo.source === source) return memo.value;
      const next = selector(source);
      const prev = memo ?? last.current;
      memo = { source, value: prev !== null && eq(prev.value, next) ? prev.value : next };
      return memo.value;
    };
    let serverMemo: { value: R } | null = null;
    const selectServer = (): R => (serverMemo ??= { value: selector(getServerSource()) }).value;
    return [() => select(getSource()), selectServer];
  }, [getSource, getServerSource, selector, isEqual]);
  const value = useSyncExternalStore(subscribe, getSelection, getServerSelection);
  useEffect(() => {
    if (selector) last.current = { value: value as R };
  });
  return value;
}

// ---- writing hook ---------------------------------------------------------------------------

/**
 * This client's presence in the room, like `useState`: `[mine, update]`. While the
 * component is mounted the entry is tracked (heartbeated every `ttlMs / 3`, and on
 * every `update`; the client throttles heartbeats to one per `heartbeatThrottleMs`,
 * 50 ms by default, the latest data winning); on unmount the client leaves the room.
 * Use one per room.
 */
export function useMyPresence<T, In = T>(room: RoomArg<T, In>, initial: In, ttlMs: number): [In, (next: In | ((prev: In) => In)) => void] {
  const store = useStore<T, In>("useMyPresence()", room);
  const [mine, setMine] = useState<In>(initial);
  useEffect(() => store.claim(), [store]);
  useEffect(() => {
    store.track(mine, ttlMs);
  }, [store, mine, ttlMs]);
  const update = useCallback((next: In | ((prev: In) => In)) => setMine(next as In), []);
  return [mine, update];
}

// ---- helpers ------------------------------------------------------------------------------

/**
 * Equality one level deep: the same keys (or items, in order) with `Object.is`-equal
 * values, for arrays, Maps, Sets and plain objects. Pass it to `useOthers` when the
 * selector builds a new array or object.
 */
export function shallow<A>(a: A, b: A): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
    return true;
  }
  if (a instanceof Map) {
    if (!(b instanceof Map) || a.size !== b.size) return false;
    for (const [k, v] of a) if (!b.has(k) || !Object.is(v, b.get(k))) return false;
    return true;
  }
  if (a instanceof Set) {
    if (!(b instanceof Set) || a.size !== b.size) return false;
    for (const v of a) if (!b.has(v)) return false;
    return true;
  }
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    if (!Object.prototype.hasOwnProperty.call(b, k) || !Object.is((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  }
  return true;
}
