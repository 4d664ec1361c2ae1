import type { RollcallErrorLike } from "./types.js";

type Issue = { readonly message: string; readonly path?: ReadonlyArray<unknown> };

/** Every error passed to `onError` is a `RollcallError`. */
export class RollcallError extends Error implements RollcallErrorLike {
  readonly code: string;
  readonly source: "server" | "local" | "connection";
  readonly room?: string;
  readonly ref?: number;
  readonly clientId?: number;
  readonly issues?: ReadonlyArray<Issue>;
  readonly closeCode?: number;

  constructor(
    source: "server" | "local" | "connection",
    code: string,
    message: string,
    extra: {
      room?: string;
      ref?: number;
      clientId?: number;
      issues?: ReadonlyArray<Issue>;
      closeCode?: number;
      cause?: unknown;
    } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "RollcallError";
    this.source = source;
    this.code = code;
    if (extra.room !== undefined) this.room = extra.room;
    if (extra.ref !== undefined) this.ref = extra.ref;
    if (extra.clientId !== undefined) this.clientId = extra.clientId;
    if (extra.issues !== undefined) this.issues = extra.issues;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
  }
}
