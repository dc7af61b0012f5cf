/**
 * `ioasid/remote`: a guest kernel in another process than the PASID authority it belongs to. Its
 * vIOMMUs' registers are reached by synchronous trapped MMIO over HTTP (a worker thread and
 * `Atomics.wait`, as a vCPU blocks in an MMIO exit), its bindings through the typed client.
 * See docs/remote-guest.md.
 */
export { RemoteGuest } from './remote-guest.ts';
export type { RemoteGuestOptions } from './remote-guest.ts';
export { RemoteMmio, SyncServiceChannel, errorFromAnswer, DEFAULT_CHANNEL_TIMEOUT_MS } from './remote-mmio.ts';
export type { ChannelStats, SyncChannelOptions } from './remote-mmio.ts';
