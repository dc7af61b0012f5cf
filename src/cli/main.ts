/**
 * The `ioasid` command. Thin: it parses arguments and calls the layers; no domain logic here.
 *
 * It starts fast: only the module of the command being run is loaded (`ioasid status` never
 * loads the service, the store drivers or the host model; `ioasid --version` loads none). The
 * other commands are listed by name and description, so `--help` and suggestions still work.
 *
 * Usage errors (an unknown command or option, a bad argument, no command at all) print
 * `error: EINVAL: message` and exit 2, for every command (usage.ts).
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { DESCRIPTIONS, type CommandName } from './descriptions.ts';
import { processUsageIo, usageRules } from './usage.ts';

/** Each command's module, loaded only to run it (`ioasid completion` gets them all). */
const LOADERS: Readonly<Record<CommandName, () => Promise<Command>>> = {
  demo: async () => (await import('./demo.ts')).demoCommand(),
  simulate: async () => (await import('./simulate.ts')).simulateCommand(),
  serve: async () => (await import('./serve.ts')).serveCommand(),
  vm: async () => (await import('./client-commands.ts')).vmCommand(),
  pasid: async () => (await import('./client-commands.ts')).pasidCommand(),
  status: async () => (await import('./client-commands.ts')).statusCommand(),
  watch: async () => (await import('./client-commands.ts')).watchCommand(),
  cluster: async () => (await import('./client-commands.ts')).clusterCommand(),
  completion: async () => (await import('./completion.ts')).completionCommand(LOADERS),
};

/** The package's version, from its package.json (beside src/ and dist/ alike). */
function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
}

const program = new Command('ioasid')
  .description('System-wide PASID allocation for virtualised IOMMUs: the Linux IOASID framework, the VT-d virtual command interface, and a PASID authority service')
  .version(version());

// The command to run: the first argument, or the one after `help`.
const args = process.argv.slice(2);
const wanted = args[0] === 'help' ? args[1] : args[0];
for (const [name, load] of Object.entries(LOADERS) as [CommandName, () => Promise<Command>][]) {
  program.addCommand(name === wanted ? await load() : new Command(name).description(DESCRIPTIONS[name]));
}
usageRules(program, processUsageIo());

await program.parseAsync(process.argv);
