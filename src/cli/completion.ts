/**
 * `ioasid completion bash|zsh`: a completion script made from the command tree itself (every
 * command, subcommand and option, as `--help` lists them), so it cannot fall behind the CLI.
 *
 *   ioasid completion bash > /etc/bash_completion.d/ioasid        (or: source <(ioasid completion bash))
 *   ioasid completion zsh > "${fpath[1]}/_ioasid"                 (or: source <(ioasid completion zsh))
 *
 * Both scripts share one function, `__ioasid_candidates WORD...`, written in the syntax bash and
 * zsh have in common: given the words typed so far (the last one being completed), it prints the
 * candidates, one per line, `name<TAB>description`, or `@files` when a file name is wanted.
 */
import { Command, InvalidArgumentError, type Option } from 'commander';
import { DESCRIPTIONS, type CommandName } from './descriptions.ts';

/** Values an option takes, when they are a closed set (its placeholder says it otherwise). */
const OPTION_VALUES: Readonly<Record<string, readonly string[]>> = {
  '--sync': ['full', 'normal'],
  '--log-level': ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
  '--log-format': ['json', 'text'],
  '--guest-profile': ['strict', 'linux-5.8', 'linux-5.11', 'linux-5.18', 'linux-6.x'],
  '--store': ['memory'],
};

interface Node {
  /** Space-separated command path below `ioasid`, '' for the root. */
  readonly path: string;
  readonly subs: readonly { name: string; description: string }[];
  readonly options: readonly { flag: string; description: string; takesValue: boolean; files: boolean }[];
}

function optionsOf(cmd: Command): Node['options'] {
  const out: { flag: string; description: string; takesValue: boolean; files: boolean }[] = [];
  const all = [...(cmd.options as readonly Option[]), ...(cmd.parent === null ? [] : [])];
  for (const o of all) {
    if (o.hidden || o.long === undefined) continue;
    out.push({ flag: o.long, description: o.description, takesValue: o.required || o.optional, files: /<(file|path)>/.test(o.flags) });
  }
  out.push({ flag: '--help', description: 'display help for command', takesValue: false, files: false });
  return out;
}

function walk(cmd: Command, path: string, out: Node[]): void {
  out.push({
    path,
    subs: cmd.commands.map((c) => ({ name: c.name(), description: c.description() })),
    options: optionsOf(cmd),
  });
  for (const c of cmd.commands) walk(c, path === '' ? c.name() : `${path} ${c.name()}`, out);
}

type Loaders = Readonly<Record<CommandName, () => Promise<Command>>>;

/** The whole tree: every command loaded. */
export async function commandTree(loaders: Loaders): Promise<Node[]> {
  const root = new Command('ioasid').version('0').description('');
  for (const [name, load] of Object.entries(loaders) as [CommandName, () => Promise<Command>][]) {
    root.addCommand(name === 'completion' ? completionCommand(loaders) : await load());
  }
  const nodes: Node[] = [];
  walk(root, '', nodes);
  return nodes;
}

/** A word for a shell single-quoted string. */
function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** One line of the candidate list: `name<TAB>description`, the description on one line. */
function entry(name: string, description: string): string {
  return `${name}\t${description.replace(/\s+/g, ' ').slice(0, 120)}`;
}

/** The shared function: POSIX-ish shell that bash and zsh run alike (no arrays, no [[ ]]). */
function candidatesFunction(nodes: readonly Node[]): string {
  const subsOf = nodes.map((n) => `    ${q(n.path)}) __ioasid_subs=${q(n.subs.map((s) => s.name).join(' '))} ;;`).join('\n');
  const listOf = nodes.map((n) => {
    const lines = [...n.subs.map((s) => entry(s.name, s.description))];
    return `    ${q(n.path)}) printf '%s\\n' ${lines.map(q).join(' ') || "''"} ;;`;
  }).join('\n');
  const optsOf = nodes.map((n) => `    ${q(n.path)}) printf '%s\\n' ${n.options.map((o) => q(entry(o.flag, o.description))).join(' ')} ;;`).join('\n');
  const valued = new Map<string, string>();
  for (const n of nodes) {
    for (const o of n.options) {
      if (!o.takesValue) continue;
      const values = OPTION_VALUES[o.flag];
      valued.set(o.flag, values !== undefined ? `printf '%s\\n' ${values.map((v) => q(entry(v, ''))).join(' ')}` : o.files ? "echo '@files'" : 'echo');
    }
  }
  const valuesOf = [...valued].map(([flag, body]) => `    ${flag}) ${body} ;;`).join('\n');
  return `# The candidates for the last word, given every word typed (the command name first).
__ioasid_candidates() {
  __ioasid_path=''
  __ioasid_prev=''
  __ioasid_n=$#
  __ioasid_i=1
  for __ioasid_w in "$@"; do
    if [ "$__ioasid_i" -gt 1 ] && [ "$__ioasid_i" -lt "$__ioasid_n" ]; then
      case "$__ioasid_w" in
        -*) ;;
        *)
          __ioasid_subcommands "$__ioasid_path"
          case " $__ioasid_subs " in *" $__ioasid_w "*) __ioasid_path="\${__ioasid_path:+$__ioasid_path }$__ioasid_w" ;; esac
          ;;
      esac
    fi
    if [ "$__ioasid_i" -eq "$((__ioasid_n - 1))" ]; then __ioasid_prev="$__ioasid_w"; fi
    __ioasid_cur="$__ioasid_w"
    __ioasid_i=$((__ioasid_i + 1))
  done
  # The value of the option before the cursor.
  case "$__ioasid_prev" in
    --*)
      if __ioasid_option_values "$__ioasid_prev"; then return 0; fi
      ;;
  esac
  case "$__ioasid_cur" in
    -*) __ioasid_options "$__ioasid_path" ;;
    *)
      __ioasid_subcommands "$__ioasid_path"
      if [ -n "$__ioasid_subs" ]; then __ioasid_subcommand_list "$__ioasid_path"; else echo '@files'; fi
      ;;
  esac
}
__ioasid_subcommands() {
  case "$1" in
${subsOf}
    *) __ioasid_subs='' ;;
  esac
}
__ioasid_subcommand_list() {
  case "$1" in
${listOf}
  esac
}
__ioasid_options() {
  case "$1" in
${optsOf}
  esac
}
# Succeeds (after printing what it takes) when the option takes a value.
__ioasid_option_values() {
  case "$1" in
${valuesOf}
    *) return 1 ;;
  esac
  return 0
}`;
}

export function bashScript(nodes: readonly Node[]): string {
  return `# bash completion for ioasid (made by: ioasid completion bash)
#   source <(ioasid completion bash)      or put it in /etc/bash_completion.d/ioasid
${candidatesFunction(nodes)}
_ioasid() {
  local IFS=$'\\n' line cur="\${COMP_WORDS[COMP_CWORD]}"
  local -a out
  COMPREPLY=()
  for line in $(__ioasid_candidates "\${COMP_WORDS[@]:0:COMP_CWORD+1}"); do
    if [ "$line" = '@files' ]; then
      COMPREPLY+=($(compgen -f -- "$cur"))
      continue
    fi
    line="\${line%%$'\\t'*}"
    [ -n "$line" ] && out+=("$line")
  done
  [ \${#out[@]} -gt 0 ] && COMPREPLY+=($(compgen -W "\${out[*]}" -- "$cur"))
  return 0
}
complete -o default -F _ioasid ioasid
`;
}

export function zshScript(nodes: readonly Node[]): string {
  return `#compdef ioasid
# zsh completion for ioasid (made by: ioasid completion zsh)
#   ioasid completion zsh > "\${fpath[1]}/_ioasid"     or: source <(ioasid completion zsh)
${candidatesFunction(nodes)}
_ioasid() {
  local line name desc
  local -a described
  local files=0
  for line in "\${(@f)$(__ioasid_candidates "\${(@)words[1,CURRENT]}")}"; do
    if [[ $line == @files ]]; then files=1; continue; fi
    [[ -z $line ]] && continue
    name=\${line%%$'\\t'*}
    desc=\${line#*$'\\t'}
    described+=("\${name//:/\\\\:}:$desc")
  done
  (( \${#described} )) && _describe -t ioasid 'ioasid' described
  (( files )) && _files
  return 0
}
if (( $+functions[compdef] )); then compdef _ioasid ioasid; fi
`;
}

const SHELLS = ['bash', 'zsh'] as const;

export function completionCommand(loaders: Loaders): Command {
  return new Command('completion')
    .description(DESCRIPTIONS.completion)
    .argument('<shell>', `the shell: ${SHELLS.join(' or ')}`, (v: string) => {
      if (!(SHELLS as readonly string[]).includes(v)) throw new InvalidArgumentError(`the shell must be ${SHELLS.join(' or ')}, got ${JSON.stringify(v)}`);
      return v as (typeof SHELLS)[number];
    })
    .addHelpText('after', '\nExamples:\n  source <(ioasid completion bash)\n  ioasid completion zsh > "${fpath[1]}/_ioasid"   # then start a new zsh')
    .action(async (shell: (typeof SHELLS)[number]) => {
      const nodes = await commandTree(loaders);
      process.stdout.write(shell === 'bash' ? bashScript(nodes) : zshScript(nodes));
    });
}
