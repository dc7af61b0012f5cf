/**
 * The `ioasid` command. Thin: it parses arguments and calls the layers; no domain logic here.
 */
import { Command } from 'commander';
import { demoCommand } from './demo.ts';
import { simulateCommand } from './simulate.ts';
import { serveCommand } from './serve.ts';
import { pasidCommand, statusCommand, vmCommand, watchCommand } from './client-commands.ts';

const program = new Command('ioasid')
  .description('System-wide PASID allocation for virtualised IOMMUs: the Linux IOASID framework, the VT-d virtual command interface, and a PASID authority service')
  .version('0.1.0');

program.addCommand(demoCommand());
program.addCommand(simulateCommand());
program.addCommand(serveCommand());
program.addCommand(vmCommand());
program.addCommand(pasidCommand());
program.addCommand(statusCommand());
program.addCommand(watchCommand());

await program.parseAsync(process.argv);
