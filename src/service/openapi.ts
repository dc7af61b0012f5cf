/**
 * The OpenAPI 3.1 document, generated from the route table: the schemas that validate requests
 * are the ones documented.
 */
import type { RouteDef } from './routes.ts';

export function buildOpenApi(routes: readonly RouteDef[], errorSchema: object): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const path = r.url.replace(/:([A-Za-z]+)/g, '{$1}');
    const params = r.schema.params as { properties?: Record<string, object> } | undefined;
    const query = r.schema.querystring as { properties?: Record<string, object> } | undefined;
    const parameters = [
      ...Object.entries(params?.properties ?? {}).map(([name, schema]) => ({ name, in: 'path', required: true, schema })),
      ...Object.entries(query?.properties ?? {}).map(([name, schema]) => ({ name, in: 'query', required: false, schema })),
    ];
    const ok = String(r.status ?? 200);
    const op: Record<string, unknown> = {
      operationId: r.operationId,
      summary: r.summary,
      tags: [r.tag],
      ...(parameters.length ? { parameters } : {}),
      ...(r.schema.body ? { requestBody: { required: true, content: { 'application/json': { schema: r.schema.body } } } } : {}),
      ...(r.auth === 'none' ? { security: [] } : {}),
      responses: {
        [ok]: ok === '204'
          ? { description: 'done' }
          : r.produces !== undefined && r.produces !== 'application/json'
            ? { description: 'success', content: { [r.produces]: { schema: { type: 'string', format: 'binary' } } } }
            : { description: 'success', content: { 'application/json': { schema: r.schema.response } } },
        default: { description: 'an errno-coded error (docs/error-codes.md)', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
      },
      'x-auth': r.auth,
    };
    paths[path] = { ...(paths[path] ?? {}), [r.method.toLowerCase()]: op };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'ioasid PASID authority', version: '1', description: 'System-wide PASID allocation for virtualised IOMMUs: VMs, vIOMMUs, devices, PASIDs, bindings and trapped VCMD registers.' },
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'the admin token, or a VM token (acts on that VM only)' } },
      schemas: { Error: errorSchema },
    },
    security: [{ bearer: [] }],
    paths,
  };
}
