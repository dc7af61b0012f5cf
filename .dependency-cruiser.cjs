/**
 * The layer rules, checked by dependency-cruiser in `npm test` (test/layers.test.ts) and by
 * `npm run lint:layers`. Type-only imports count: a layer may not even name another's types
 * unless it may import it. See docs/decisions.md for the table and its one exception.
 */

/** What each layer (a folder of src/, and web/) may import of ours, besides itself. */
const ALLOWED = {
  core: [],
  vtd: ['core'],
  host: ['core', 'vtd'],
  sim: ['core', 'vtd', 'host'],
  store: ['core'],
  cluster: ['core', 'host', 'store'],
  api: ['core'],
  client: ['api'],
  remote: ['core', 'vtd', 'host', 'client'],
  service: ['core', 'vtd', 'host', 'store', 'cluster', 'api'],
  cli: ['client', 'host', 'sim', 'vtd'],
};

const layerRules = Object.entries(ALLOWED).map(([layer, allowed]) => ({
  name: `layer-${layer}`,
  comment: `src/${layer} may import only ${allowed.length ? allowed.join(', ') : 'nothing of ours'}`,
  severity: 'error',
  from: { path: `^src/${layer}/`, ...(layer === 'cli' ? { pathNot: '^src/cli/serve\\.ts$' } : {}) },
  to: { path: '^(src|web)/', pathNot: `^src/(${[layer, ...allowed].join('|')})/` },
}));

module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: 'layer-cli-serve',
      comment: 'src/cli/serve.ts runs the service: it may import the service besides what the CLI may import',
      severity: 'error',
      from: { path: '^src/cli/serve\\.ts$' },
      to: { path: '^(src|web)/', pathNot: '^src/(cli|client|host|sim|vtd|service)/' },
    },
    {
      name: 'layer-web',
      comment: 'the dashboard (web/) may import only the client and the VT-d decoders',
      severity: 'error',
      from: { path: '^web/' },
      to: { path: '^src/', pathNot: '^src/(client|vtd)/' },
    },
    {
      name: 'through-index',
      comment: "a layer reaches another only through that layer's index.ts",
      severity: 'error',
      from: { path: '^(src/[^/]+|web)/' },
      to: { path: '^src/[^/]+/', pathNot: '^($1/|src/[^/]+/index\\.ts$)' },
    },
    {
      name: 'pure-no-node',
      comment: 'core and vtd are pure: no node: module (the dashboard bundles vtd for the browser)',
      severity: 'error',
      from: { path: '^src/(core|vtd)/' },
      to: { dependencyTypes: ['core'] },
    },
    {
      name: 'pure-no-package',
      comment: 'core and vtd use no npm package either',
      severity: 'error',
      from: { path: '^src/(core|vtd)/' },
      to: { dependencyTypes: ['npm', 'npm-dev', 'npm-optional', 'npm-peer', 'npm-no-pkg', 'npm-unknown'] },
    },
    {
      name: 'contract-and-client-portable',
      comment: 'the contract and the client run in a browser: no node: module, and no npm package but json-schema-to-ts (its types only)',
      severity: 'error',
      from: { path: '^src/(api|client)/' },
      to: {
        dependencyTypesNot: ['local'],
        pathNot: '(^|/)node_modules/json-schema-to-ts/',
      },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'every import resolves',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    parser: 'swc',
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^dist/' },
    enhancedResolveOptions: { extensions: ['.ts', '.js', '.d.ts'], conditionNames: ['import', 'types', 'default'] },
  },
};
