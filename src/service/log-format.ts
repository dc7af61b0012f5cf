/**
 * The service's log lines: pino's JSON, one record per line (the default, for collectors), or the
 * same records as one readable line each (`--log-format text`, for a person at a terminal):
 *
 *   2025-11-23T19:34:15.038Z INFO  listening on http://127.0.0.1:7070 url=http://127.0.0.1:7070 store=memory
 *
 * Either way every line goes to one place (stderr by default), and nothing else is written there.
 */

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['json', 'text'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

const LEVEL_NAMES: Readonly<Record<number, string>> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** pino's own fields, shown in the line's head or left out (pid and hostname say nothing at a terminal). */
const HEAD = new Set(['level', 'time', 'msg', 'pid', 'hostname']);

function value(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (v !== null && typeof v === 'object') {
    const err = v as { message?: unknown; type?: unknown };
    // pino's error serialiser: the message says it; the stack is in the JSON format.
    if (typeof err.message === 'string' && typeof err.type === 'string') return JSON.stringify(err.message);
    return JSON.stringify(v);
  }
  return String(v);
}

/** One pino JSON record as a readable line; a line that is not a record is returned unchanged. */
export function textLine(json: string): string {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  if (r === null || typeof r !== 'object') return json;
  const time = typeof r.time === 'number' ? new Date(r.time).toISOString() : '';
  const level = (LEVEL_NAMES[typeof r.level === 'number' ? r.level : 0] ?? String(r.level)).padEnd(5);
  const msg = typeof r.msg === 'string' ? r.msg : '';
  // A field the message already says in full is left out (the JSON format keeps every field).
  const fields = Object.entries(r).filter(([k, v]) => !HEAD.has(k) && !(typeof v === 'string' && v.length > 0 && msg.includes(v))).map(([k, v]) => `${k}=${value(v)}`);
  return [time, level, msg, ...fields].filter((s) => s !== '').join(' ');
}

/** The stream pino writes to: each record, formatted, handed to `sink` as one line (no newline). */
export function logSink(format: LogFormat, sink: (line: string) => void): { write(chunk: string): void } {
  return {
    write(chunk: string) {
      for (const line of chunk.split('\n')) {
        if (line === '') continue;
        sink(format === 'text' ? textLine(line) : line);
      }
    },
  };
}
