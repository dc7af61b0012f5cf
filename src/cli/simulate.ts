/**
 * `ioasid simulate FILE` and `ioasid simulate --random`: run a scenario (or a seeded random
 * workload) against a simulated host and check the invariants after every step. Thin: reading
 * the file, the arguments, the progress bar and the exit code are here; parsing, running,
 * checking and the report are in src/host.
 *
 * Exit codes: 0 every step as expected and no violation; 1 an unexpected outcome or a violation;
 * 2 a bad scenario file or bad arguments.
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { PROFILES, isProfile, type Profile } from '../sim/index.ts';
import {
  ScenarioFormatError, formatIssue, formatReport, parseScenario, progressLine, runRandom, runScenario,
  type RunReport,
} from '../sim/index.ts';
import { wantColour } from './format.ts';
import { DESCRIPTIONS } from './descriptions.ts';

interface SimulateOptions {
  json?: boolean;
  random?: boolean;
  vms: number;
  steps: number;
  seed: number;
  fullEvery?: number;
  pasidMax?: number;
  keepGoing?: boolean;
  guestProfile?: Profile;
  progress: boolean;
  color: boolean;
}

function positiveInt(what: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${what} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
}

/** Progress on stderr, only on a terminal, and only once the run has taken a second. */
function progressBar(enabled: boolean): { onProgress: (done: number, total: number | null) => void; done: () => void } {
  const t0 = performance.now();
  let last = 0;
  let shown = false;
  return {
    onProgress(done, total) {
      if (!enabled) return;
      const now = performance.now();
      if (now - t0 < 1000 || now - last < 100) return;
      last = now;
      shown = true;
      process.stderr.write(`\r${progressLine(done, total, now - t0)}\x1b[K`);
    },
    done() {
      if (shown) process.stderr.write('\r\x1b[K');
    },
  };
}

function print(report: RunReport, opts: SimulateOptions): void {
  if (opts.json === true) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return;
  }
  const color = opts.color && wantColour(process.stdout.isTTY === true, process.env);
  process.stdout.write(formatReport(report, { color, width: process.stdout.columns ?? 120 }));
}

function usage(message: string, json: boolean | undefined): void {
  if (json === true) process.stdout.write(`${JSON.stringify({ ok: false, error: { code: 'EINVAL', message } }, null, 2)}\n`);
  else process.stderr.write(`error: EINVAL: ${message}\n`);
  process.exitCode = 2;
}

export function simulateCommand(): Command {
  return new Command('simulate')
    .description(DESCRIPTIONS.simulate)
    .argument('[file]', 'scenario file')
    .option('--json', 'machine-readable report on stdout')
    .option('--random', 'generate a random workload instead of reading a file')
    .option('--vms <n>', 'random: VMs on the host', positiveInt('--vms', 1), 10)
    .option('--steps <n>', 'random: steps to run', positiveInt('--steps', 0), 10_000)
    .option('--seed <s>', 'random: PRNG seed', positiveInt('--seed', 0), 1)
    .option('--pasid-max <n>', 'random: end of the host PASID range (small: VMs compete)', positiveInt('--pasid-max', 1))
    .option('--full-every <k>', 'full invariant check every K steps, 0 only at the end (default: 1 for a file, 10000 for --random)', positiveInt('--full-every', 0))
    .option('--keep-going', 'do not stop at the first failing step')
    .option('--guest-profile <profile>', `boot every guest with this profile instead of the file's (${PROFILES.join(', ')}): the same steps on another kernel`)
    .option('--no-progress', 'no progress bar')
    .option('--no-color', 'plain output')
    .addHelpText('after', '\nExit status: 0 all steps as expected and no invariant violated, 1 otherwise, 2 bad scenario file or arguments.')
    .action(async (file: string | undefined, opts: SimulateOptions) => {
      if (opts.guestProfile !== undefined && !isProfile(opts.guestProfile)) {
        return usage(`--guest-profile must be one of ${PROFILES.join(', ')}, got ${JSON.stringify(opts.guestProfile)}`, opts.json);
      }
      const bar = progressBar(opts.progress && process.stderr.isTTY === true);
      const common = {
        stopOnFailure: opts.keepGoing !== true,
        onProgress: bar.onProgress,
        progressEvery: 1000,
        ...(opts.fullEvery !== undefined ? { fullEvery: opts.fullEvery } : {}),
        ...(opts.guestProfile !== undefined ? { guestProfile: opts.guestProfile } : {}),
      };
      let report: RunReport;
      if (opts.random === true) {
        if (file !== undefined) return usage('give either a scenario file or --random, not both', opts.json);
        if (opts.guestProfile !== undefined) return usage('--guest-profile applies to a scenario file (the random workload picks each guest\'s profile)', opts.json);
        report = await runRandom({ vms: opts.vms, steps: opts.steps, seed: opts.seed, ...(opts.pasidMax !== undefined ? { pasidMax: opts.pasidMax } : {}), ...common });
      } else {
        if (file === undefined) return usage('give a scenario file, or --random (see ioasid simulate --help)', opts.json);
        let text: string;
        try {
          text = readFileSync(file, 'utf8');
        } catch (e) {
          return usage(`cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`, opts.json);
        }
        let scenario;
        try {
          scenario = parseScenario(text, file);
        } catch (e) {
          if (!(e instanceof ScenarioFormatError)) throw e;
          if (opts.json === true) process.stdout.write(`${JSON.stringify({ ok: false, file, error: { code: 'EINVAL', issues: e.issues } }, null, 2)}\n`);
          else {
            process.stderr.write(`error: EINVAL: ${file} is not a valid scenario (${e.issues.length} problem${e.issues.length === 1 ? '' : 's'}):\n`);
            for (const i of e.issues) process.stderr.write(`  ${formatIssue(i, file)}\n`);
          }
          process.exitCode = 2;
          return;
        }
        report = await runScenario(scenario, common);
      }
      bar.done();
      print(report, opts);
      process.exitCode = report.ok ? 0 : 1;
    });
}
