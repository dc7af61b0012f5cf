/**
 * `ioasid/service`: the PASID authority as a network service: the authority (host + store), the
 * fastify app whose routes are the contract's operations (`ioasid/api`), the server lifecycle and
 * the dashboard. Its client is `ioasid/client`; a guest kernel in another process is
 * `ioasid/remote`.
 */
export { PasidAuthority } from './authority.ts';
export type { AuthorityEvent, AuthorityOptions, CreateVmRequest, PasidInfo, VmInfo } from './authority.ts';
export { buildApp, redactToken, DEFAULT_LIMITS } from './app.ts';
export type { AppOptions, ConnectionLimits, ConnectionStats, MetricsAccess, ServiceApp } from './app.ts';
export { startServer, serveUntilSignalled, checkServeOptions, StartError, ADMIN_TOKEN_MIN_LENGTH, DEFAULT_PORT, DEFAULT_STORE, DEFAULT_SYNC } from './server.ts';
export { LOG_FORMATS, LOG_LEVELS, textLine } from './log-format.ts';
export type { LogFormat, LogLevel } from './log-format.ts';
export type { RunningServer, ServeOptions } from './server.ts';
export { HANDLERS, ROUTES } from './routes.ts';
export type { Handler, RouteDef, RouteRequest, ServiceContext } from './routes.ts';
export { HTTP_STATUS, httpStatusOf } from '../api/index.ts';
export { bearerOfHeader, bearerOfProtocols, hashToken, newToken, readTokenFile, tokenMatches } from './tokens.ts';
export { registerDashboard, buildDashboardAssets } from './dashboard.ts';
export type { DashboardOptions } from './dashboard.ts';
export type { EtcdSecurityOptions } from '../store/index.ts';
