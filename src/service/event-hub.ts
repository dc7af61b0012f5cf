/**
 * The event stream's subscribers (`GET /v1/events`, WebSocket). Rules:
 *  1. Each event is serialised once, whoever listens, and sent after the request that made it has
 *     been answered (delivery runs on its own turn of the event loop, in batches): subscribers
 *     never slow a request down.
 *  2. Subscriptions are bounded: at most `perCaller` per caller (the admin, or one VM's token) and
 *     `total` in all; one more is refused with close code 4429.
 *  3. A consumer that does not keep up (more than `maxBuffered` bytes waiting in its socket) is
 *     closed with 4008 and counted, rather than buffered without bound.
 *  4. Access follows the VM: a VM-scoped subscription ends (4403) when the VM is destroyed or its
 *     token is replaced, so it never sees the events of a later VM of the same name.
 *  5. Resumption: `since=N` first sends the events after seq N that are still kept, preceded by a
 *     `{ "type": "gap", "since": N, "next": M }` message when those before M are gone (older than
 *     the retention); live events follow without a hole or a repeat.
 *  6. When the service stops, every subscriber is closed with 1001 (going away).
 *  7. A peer that is gone without closing (a host that vanished, a NAT that forgot the connection)
 *     does not hold its subscription slot forever: every `heartbeatMs` each subscriber is pinged,
 *     and one that did not answer the previous ping is cut and counted (`dead`).
 */
import type { AuthorityEvent, PasidAuthority } from './authority.ts';

/** What the hub needs of a WebSocket (the `ws` socket fastify gives). */
export interface HubSocket {
  readonly bufferedAmount: number;
  /** A message: text, or its UTF-8 bytes sent as a text frame (`binary: false`). */
  send(data: string | Buffer, options: { binary: boolean }): void;
  close(code: number, reason: string): void;
  on(event: 'close' | 'error' | 'pong', listener: () => void): unknown;
  /** Rule 7 (absent: the socket is not pinged). */
  ping?(): void;
  terminate?(): void;
}

export interface EventHubOptions {
  /** Subscriptions one caller may hold (default 16). */
  readonly perCaller?: number;
  /** Subscriptions in all (default 1024). */
  readonly total?: number;
  /** Bytes a subscriber may have waiting before it is dropped (default 1 MiB). */
  readonly maxBuffered?: number;
  /** Ping period; a subscriber that misses one ping is cut (default 30 s; 0: never). */
  readonly heartbeatMs?: number;
}

export const CLOSE = {
  goingAway: 1001,
  badRequest: 4400,
  tooSlow: 4008,
  unauthorized: 4401,
  revoked: 4403,
  tooMany: 4429,
} as const;

interface Subscriber {
  readonly socket: HubSocket;
  /** The caller it counts against: 'admin' or the VM id whose token it used. */
  readonly caller: string;
  /** Only this VM's events (null: all). */
  readonly vm: string | null;
  /** Events up to this seq were sent (or skipped). */
  lastSeq: number;
  closed: boolean;
  /** Answered the last ping (rule 7). */
  alive: boolean;
}

export class EventHub {
  readonly #authority: PasidAuthority;
  readonly #perCaller: number;
  readonly #total: number;
  readonly #maxBuffered: number;
  readonly #heartbeatMs: number;
  readonly #subs = new Set<Subscriber>();
  readonly #perCallerCount = new Map<string, number>();
  #queue: { event: AuthorityEvent; data: Buffer }[] = [];
  #scheduled = false;
  #dropped = 0;
  #refused = 0;
  #dead = 0;
  #beat: NodeJS.Timeout | null = null;
  readonly #off: () => void;

  constructor(authority: PasidAuthority, opts: EventHubOptions = {}) {
    this.#authority = authority;
    this.#perCaller = opts.perCaller ?? 16;
    this.#total = opts.total ?? 1024;
    this.#maxBuffered = opts.maxBuffered ?? 1 << 20;
    this.#heartbeatMs = opts.heartbeatMs ?? 30_000;
    this.#off = authority.on((e) => this.#publish(e));
  }

  /** Subscribers connected, slow ones dropped, subscriptions refused, silent peers cut (for /metrics). */
  stats(): { subscribers: number; dropped: number; refused: number; dead: number } {
    return { subscribers: this.#subs.size, dropped: this.#dropped, refused: this.#refused, dead: this.#dead };
  }

  /** Add a subscriber (rules 2, 5). Returns false when it was refused (and closed). */
  subscribe(socket: HubSocket, who: { caller: string; vm: string | null; since?: number }): boolean {
    const mine = this.#perCallerCount.get(who.caller) ?? 0;
    if (mine >= this.#perCaller || this.#subs.size >= this.#total) {
      this.#refused++;
      socket.close(CLOSE.tooMany, mine >= this.#perCaller ? `at most ${this.#perCaller} subscriptions per caller` : 'too many subscriptions');
      return false;
    }
    const sub: Subscriber = { socket, caller: who.caller, vm: who.vm, lastSeq: this.#authority.lastSeq, closed: false, alive: true };
    this.#subs.add(sub);
    this.#perCallerCount.set(who.caller, mine + 1);
    const drop = () => this.#remove(sub);
    socket.on('close', drop);
    socket.on('error', drop);
    socket.on('pong', () => {
      sub.alive = true;
    });
    if (this.#beat === null && this.#heartbeatMs > 0) {
      this.#beat = setInterval(() => this.#heartbeat(), this.#heartbeatMs);
      this.#beat.unref();
    }
    if (who.since !== undefined && who.since < sub.lastSeq) {
      // Event numbers may skip (cluster mode): a gap is an event known to be gone after `since`.
      if (who.since < this.#authority.lostUpTo) this.#send(sub, JSON.stringify({ type: 'gap', since: who.since, next: this.#authority.oldestSeq }));
      for (const e of this.#authority.recentEvents({ since: who.since, ...(who.vm !== null ? { vm: who.vm } : {}) })) {
        if (e.seq > sub.lastSeq) break;
        this.#send(sub, JSON.stringify(e));
      }
    }
    // Events already queued for delivery but numbered up to lastSeq were covered above or happened
    // before the subscription: the seq check in #deliver skips them.
    return true;
  }

  #remove(sub: Subscriber): void {
    if (!this.#subs.delete(sub)) return;
    sub.closed = true;
    const n = (this.#perCallerCount.get(sub.caller) ?? 1) - 1;
    if (n === 0) this.#perCallerCount.delete(sub.caller);
    else this.#perCallerCount.set(sub.caller, n);
  }

  #close(sub: Subscriber, code: number, reason: string): void {
    this.#remove(sub);
    try {
      sub.socket.close(code, reason);
    } catch {
      // already gone
    }
  }

  /** Rule 7. */
  #heartbeat(): void {
    for (const sub of [...this.#subs]) {
      if (sub.socket.ping === undefined) continue;
      if (!sub.alive) {
        this.#dead++;
        this.#remove(sub);
        sub.socket.terminate?.();
        continue;
      }
      sub.alive = false;
      try {
        sub.socket.ping();
      } catch {
        // closing already
      }
    }
  }

  /** Rule 1: serialise once (to the bytes every socket sends), deliver on a later turn. */
  #publish(e: AuthorityEvent): void {
    if (this.#subs.size === 0) return;
    this.#queue.push({ event: e, data: Buffer.from(JSON.stringify(e)) });
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => this.#deliver());
  }

  #deliver(): void {
    this.#scheduled = false;
    const queue = this.#queue;
    this.#queue = [];
    for (const sub of [...this.#subs]) {
      for (const { event, data } of queue) {
        if (sub.closed) break;
        if (event.seq <= sub.lastSeq) continue;
        sub.lastSeq = event.seq;
        if (sub.vm !== null && event.vm !== sub.vm) continue;
        this.#send(sub, data);
        // Rule 4: the VM this subscription follows is gone, or its token is no longer the one used.
        if (sub.vm !== null && sub.caller !== 'admin' && event.type === 'credential-replaced') this.#close(sub, CLOSE.revoked, `the token of VM ${sub.vm} was replaced`);
        else if (sub.vm !== null && event.type === 'vm-destroyed') this.#close(sub, CLOSE.revoked, `VM ${sub.vm} was destroyed`);
      }
    }
  }

  #send(sub: Subscriber, data: string | Buffer): void {
    // Rule 3.
    if (sub.socket.bufferedAmount > this.#maxBuffered) {
      this.#dropped++;
      this.#close(sub, CLOSE.tooSlow, 'the consumer does not keep up');
      return;
    }
    sub.socket.send(data, { binary: false });
  }

  /** Rule 6. */
  close(): void {
    this.#off();
    if (this.#beat !== null) clearInterval(this.#beat);
    this.#beat = null;
    for (const sub of [...this.#subs]) this.#close(sub, CLOSE.goingAway, 'the service is stopping');
  }
}
