/**
 * Notifications (the extension series' notifier chains; behaviours 75-76 of docs/behaviours.md): `alloc`, `free`, `bind`,
 * `unbind`, delivered synchronously after the state change, in priority order (cpu, then iommu,
 * then device: quiesce vCPUs before the IOMMU and the device), registration order within one
 * priority. A subscriber may watch one set or all. A throwing subscriber is logged and skipped:
 * it never undoes or blocks the change it was told about.
 */
import type { IoasidSet } from './set.ts';

export const EVENT_TYPES = ['alloc', 'free', 'bind', 'unbind'] as const;
export type IoasidEventType = (typeof EVENT_TYPES)[number];
export const PRIORITIES = ['cpu', 'iommu', 'device'] as const;
export type NotifierPriority = (typeof PRIORITIES)[number];

export interface IoasidEvent {
  readonly type: IoasidEventType;
  readonly id: number;
  readonly set: IoasidSet | null;
  /** For bind/unbind: what the binder attached (device, address space...). */
  readonly info?: unknown;
}

export type IoasidListener = (event: IoasidEvent) => void;

export interface SubscribeOptions {
  readonly priority?: NotifierPriority;
  /** Only events of this set (the kernel's IOASID_NOTIFY_FLAG_SET); all sets when absent. */
  readonly set?: IoasidSet;
  readonly types?: readonly IoasidEventType[];
}

interface Subscription {
  readonly listener: IoasidListener;
  readonly rank: number;
  readonly set: IoasidSet | undefined;
  readonly types: readonly IoasidEventType[] | undefined;
}

export class NotifierChain {
  #subs: Subscription[] = [];
  readonly #onError: (err: unknown, event: IoasidEvent) => void;

  constructor(onError: (err: unknown, event: IoasidEvent) => void) {
    this.#onError = onError;
  }

  get empty(): boolean {
    return this.#subs.length === 0;
  }

  subscribe(listener: IoasidListener, opts: SubscribeOptions = {}): () => void {
    const rank = PRIORITIES.indexOf(opts.priority ?? 'device');
    const sub: Subscription = { listener, rank, set: opts.set, types: opts.types };
    // Stable insertion: after every subscription of the same or a higher priority.
    let i = this.#subs.length;
    while (i > 0 && (this.#subs[i - 1] as Subscription).rank > rank) i--;
    this.#subs = [...this.#subs.slice(0, i), sub, ...this.#subs.slice(i)];
    return () => {
      this.#subs = this.#subs.filter((s) => s !== sub);
    };
  }

  emit(event: IoasidEvent): void {
    // Copy-on-write array: a listener that (un)subscribes does not disturb this delivery.
    for (const s of this.#subs) {
      if (s.set !== undefined && s.set !== event.set) continue;
      if (s.types !== undefined && !s.types.includes(event.type)) continue;
      try {
        s.listener(event);
      } catch (err) {
        this.#onError(err, event);
      }
    }
  }
}
