/**
 * Each command's module, loaded only to run it (`main.ts`), or all of them to describe the whole
 * command tree (`ioasid completion`).
 */
import type { Command } from 'commander';
import type { CommandName } from './descriptions.ts';

export const LOADERS: Readonly<Record<CommandName, () => Promise<Command>>> = {
  demo: async () => (await import('./demo.ts')).demoCommand(),
  simulate: async () => (await import('./simulate.ts')).simulateCommand(),
  serve: async () => (await import('./serve.ts')).serveCommand(),
  vm: async () => (await import('./client-commands.ts')).vmCommand(),
  pasid: async () => (await import('./client-commands.ts')).pasidCommand(),
  status: async () => (await import('./client-commands.ts')).statusCommand(),
  watch: async () => (await import('./client-commands.ts')).watchCommand(),
  cluster: async () => (await import('./client-commands.ts')).clusterCommand(),
  completion: async () => (await import('./completion.ts')).completionCommand(),
};
