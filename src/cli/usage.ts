/**
 * Usage errors, the same for every command: an unknown command or option, a missing or malformed
 * argument print one line, `error: EINVAL: message`, and exit 2; `--help` and `--version` exit 0.
 * A bare `ioasid` (no command) prints the help on stderr and exits 2 as well.
 */
import type { Command } from 'commander';

/** What the usage rules need of the process (tests pass their own). */
export interface UsageIo {
  readonly stdout: (s: string) => void;
  readonly stderr: (s: string) => void;
  readonly stderrIsTTY: boolean;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** End now. Must not return. */
  readonly exit: (code: number) => never;
}

export const EXIT_USAGE = 2;

export function processUsageIo(): UsageIo {
  return {
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
    stderrIsTTY: process.stderr.isTTY === true,
    env: process.env,
    exit: (code) => process.exit(code),
  };
}

/** `ioasid vm create`: the command's name with its parents'. */
function fullName(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c !== null; c = c.parent) names.unshift(c.name());
  return names[0] === 'ioasid' ? names.join(' ') : ['ioasid', ...names].join(' ');
}

/**
 * Apply the usage rules to a command and every subcommand it has now. Each usage error line ends
 * with a hint: where to read the command's options.
 */
export function usageRules(cmd: Command, io: UsageIo): Command {
  // Colour as format.ts decides it (a terminal, NO_COLOR unset), without loading it: `ioasid
  // --version` loads this module and no other of the CLI's.
  const noColor = io.env.NO_COLOR;
  const bad = io.stderrIsTTY && (noColor === undefined || noColor === '') ? '\x1b[1;31merror:\x1b[0m' : 'error:';
  cmd
    .exitOverride((err) => {
      if (err.exitCode === 0) io.exit(0);
      // commander.help with a non-zero code: a command that needs a subcommand got none.
      if (err.code === 'commander.help') io.stderr(`${bad} EINVAL: ${cmd.name()} needs a command (listed above)\n`);
      io.exit(EXIT_USAGE);
    })
    .configureOutput({
      writeOut: io.stdout,
      writeErr: io.stderr,
      outputError: (s, write) => {
        const line = s.replace(/^error: /, '').trimEnd();
        write(`${bad} EINVAL: ${line}${line.includes('(hint:') ? '' : ` (hint: see ${fullName(cmd)} --help)`}\n`);
      },
    })
    .showSuggestionAfterError(true);
  for (const sub of cmd.commands) usageRules(sub, io);
  return cmd;
}
