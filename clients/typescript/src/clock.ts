/**
 * Estimates `offset = serverClock - localClock` from round trips
 * (docs/protocol.md "Clock offset"): each sample is
 * `serverTimeMs - (sentAt + receivedAt) / 2`, and the sample with the smallest
 * round trip among the most recent ones wins (its error is at most rtt / 2).
 * Keeping only recent samples lets the estimate follow clock drift and jumps.
 */
export class ClockSync {
  private samples: { rtt: number; offset: number }[] = [];
  private best: { rtt: number; offset: number } | undefined;

  constructor(private readonly window = 8) {}

  /** Adds a round-trip sample; returns the new offset. */
  add(sentAt: number, receivedAt: number, serverTimeMs: number): number {
    const rtt = receivedAt - sentAt;
    if (!Number.isFinite(rtt) || rtt < 0 || !Number.isFinite(serverTimeMs)) return this.offset;
    this.samples.push({ rtt, offset: serverTimeMs - (sentAt + receivedAt) / 2 });
    if (this.samples.length > this.window) this.samples.shift();
    let best = this.samples[0]!;
    for (const s of this.samples) if (s.rtt < best.rtt) best = s;
    this.best = best;
    return this.offset;
  }

  /** `serverClock - localClock` in ms; 0 before the first sample. */
  get offset(): number {
    return this.best ? this.best.offset : 0;
  }

  get hasSample(): boolean {
    return this.best !== undefined;
  }

  /** Round trip of the winning sample (Infinity before the first). */
  get rtt(): number {
    return this.best ? this.best.rtt : Infinity;
  }
}
