/**
 * One line per command, shared by each command's definition and by `main.ts`, which lists the
 * commands it does not load (so `ioasid --help` stays fast and says the same thing).
 */
export const DESCRIPTIONS = {
  demo: 'a guided tour, narrated and checked: a host, a guest with two vIOMMUs, PASIDs through VCMD, min/max, quota, ownership, teardown',
  simulate: 'run a scenario file (YAML or JSON; see docs/scenarios.md) or a seeded random workload against a simulated host, checking the invariants after every step',
  serve: 'run the PASID authority service (HTTP API, events, metrics, dashboard)',
  vm: "create, list, inspect and destroy VMs; hot-plug vIOMMUs and devices; rotate a VM's token; migrate (admin token)",
  pasid: "allocate, free, list and inspect PASIDs (the VM's token or admin)",
  status: 'health, store, VMs and PASIDs of a running service, and the VMs using the most (admin token)',
  watch: "stream the service's events as they happen, one line each, until Ctrl-C (admin; or a VM's token with --vm)",
  cluster: 'cluster mode: the migration domain\'s status, and the reclaim of a dead host (admin token)',
  completion: 'print a shell completion script: ioasid completion bash (or zsh) > FILE, then source it',
} as const;

export type CommandName = keyof typeof DESCRIPTIONS;
