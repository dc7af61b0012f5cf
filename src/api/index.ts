/**
 * `ioasid/api`: the wire contract of the PASID authority service, written once: request,
 * response, error and event schemas (plain JSON Schema data), the TypeScript types derived from
 * them, the operation table, the OpenAPI document, RFC 9457 problems, and the namespace map's
 * binary format. Pure: no I/O, no Node module, safe in a browser bundle. Imports only core's ids
 * and errors (re-exported here for the client).
 */
export * from './schemas.ts';
export { OPERATIONS, EVENT_STREAM, NAMESPACE_MAP_MEDIA_TYPE, METRICS_MEDIA_TYPE, eventStreamProtocols } from './operations.ts';
export type { Auth, OperationDef, OperationId, OpBody, OpParams, OpQuery, OpReply } from './operations.ts';
export { buildOpenApi, errorStatuses } from './openapi.ts';
export { HTTP_STATUS, TRANSPORT_STATUS, PROBLEM_MEDIA_TYPE, PROBLEM_TITLES, errorFromProblem, httpStatusOf, problemType, toProblem } from './errors.ts';
export { NAMESPACE_MAP_MAGIC, NAMESPACE_MAP_VERSION, decodeNamespaceMap, encodeNamespaceMap } from './namespace-map.ts';
export type { NamespaceMap, NamespaceMapOwner } from './namespace-map.ts';
export { ERRNO, IOASID_ERROR_CODES, IoasidError, isIoasidError, isIoasidErrorCode, PASID_MIN, PASID_MAX } from '../core/index.ts';
export type { IoasidErrorCode, ErrorDetails } from '../core/index.ts';
