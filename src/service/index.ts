/**
 * `ioasid/service`: the PASID authority as a network service (DESIGN 7): the authority (host +
 * store), the fastify app, the server lifecycle, and the typed client.
 */
export { PasidAuthority } from './authority.ts';
export type { AuthorityEvent, AuthorityOptions, CreateVmRequest, PasidInfo, VmInfo } from './authority.ts';
export { buildApp } from './app.ts';
export type { AppOptions } from './app.ts';
export { startServer, serveUntilSignalled, DEFAULT_PORT, DEFAULT_STORE } from './server.ts';
export type { RunningServer, ServeOptions } from './server.ts';
export { IoasidClient } from './client.ts';
export type { ClientOptions, DeviceSpecBody, NamespaceView, RegistersView, ViommuSpecBody, WebSocketLike } from './client.ts';
export { HTTP_STATUS, httpStatusOf } from './http-errors.ts';
export { ROUTES } from './routes.ts';
export { hashToken, newToken, tokenMatches } from './tokens.ts';
export { RemoteMmio, SyncServiceChannel, errorFromAnswer, DEFAULT_CHANNEL_TIMEOUT_MS } from './remote-mmio.ts';
export type { ChannelStats, SyncChannelOptions } from './remote-mmio.ts';
export { RemoteGuest } from './remote-guest.ts';
export type { RemoteGuestOptions } from './remote-guest.ts';
export { registerDashboard, buildDashboardAssets } from './dashboard.ts';
export type { DashboardOptions } from './dashboard.ts';
export { redactToken } from './app.ts';
