/**
 * Failpoints, for the crash tests: with `IOASID_FAILPOINT=NAME[:N]` in its environment the service
 * kills itself (SIGKILL, as a power cut or the OOM killer would) the N-th time (default the first)
 * it reaches `failpoint(NAME)`. Unset, as in production, `failpointsArmed` is false and callers
 * skip even building the name. The names are listed in docs/store.md (crash tests).
 */
const spec = /^([a-z0-9:-]+?)(?::(\d+))?$/.exec(process.env['IOASID_FAILPOINT'] ?? '');
const armed = spec?.[1] ?? null;
const at = Number(spec?.[2] ?? 1);
let hits = 0;

/** Whether a failpoint is set in this process (callers test it before building a name). */
export const failpointsArmed = armed !== null;

export function failpoint(name: string): void {
  if (name !== armed) return;
  if (++hits === at) process.kill(process.pid, 'SIGKILL');
}
