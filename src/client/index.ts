/**
 * `ioasid/client`: the typed client of the PASID authority service and the contract's types,
 * for Node and for a browser bundle. No server dependency: it reaches the service only over
 * HTTP and WebSocket, and takes every path, parameter and answer type from `src/api`.
 */
export { IoasidClient } from './client.ts';
export type { CallInput, ClientOptions, EventStreamOptions, FetchLike, WebSocketLike } from './client.ts';
export {
  EVENT_STREAM, HTTP_STATUS, IOASID_ERROR_CODES, IoasidError, OPERATIONS, PASID_MAX, PASID_MIN, PROBLEM_MEDIA_TYPE,
  decodeNamespaceMap, errorFromProblem, eventStreamProtocols, isIoasidError, isIoasidErrorCode,
} from '../api/index.ts';
export type {
  AllocBody, ApiEvent, ApiEventType, Binding, ClusterStatusView, CreateVmBody, CreatedVm, DestroyedVm, DeviceSpecBody, ErrorDetails,
  GapMessage, Health, IoasidErrorCode, MigrateResultView, MmioBody, NamespaceMap, NamespaceMapOwner, NamespaceView, OperationId,
  OpBody, OpParams, OpQuery, OpReply, PasidInfo, Problem, Ready, ReclaimBody, ReclaimReportView, RegistersView, StreamMessage,
  VcmdLogEntryView, ViommuConfig, ViommuSpecBody, ViommuView, VmInfo,
} from '../api/index.ts';
/** The event type under its former name (what the service records and streams). */
export type { ApiEvent as AuthorityEvent } from '../api/index.ts';
