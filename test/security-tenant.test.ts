/**
 * Issue 13, item 9: a VM token cannot tell another VM's PASID from a free one through its own path.
 * Decision (docs/security.md, docs/decisions.md): in a VM token's view, a PASID that is not its
 * own is not found (404 ENOENT, one message) whether it is free, freed, another VM's or the host's,
 * on every PASID operation of the VM's path and in the error text of a guest's Free command in its
 * vIOMMU's command log (whose status register already says "invalid PASID" for both). The admin
 * keeps the host's ownership rule (403 EACCES for another VM's, 404 ENOENT for a free one), and the
 * host model keeps EACCES (test/host.test.ts). Nothing any of these requests does changes state.
 */
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildApp, hashToken, PasidAuthority, type ServiceApp } from '../src/service/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { VCMD_CMD, encodeVcmd, registerMap, registerOffset } from '../src/vtd/index.ts';

const ADMIN = 'tenant-admin-token-0123456789abcdef';

describe('security: a VM token learns nothing of the PASIDs it does not hold', () => {
  let app: ServiceApp;
  let authority: PasidAuthority;
  let mine = '';
  let theirs: number;
  let freed: number;
  const FREE = 4000;
  before(async () => {
    authority = await PasidAuthority.open({ store: new MemoryStore() });
    await authority.setAdminTokenHash(hashToken(ADMIN));
    mine = (await authority.createVm({ id: 'vm1', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] })).token;
    await authority.createVm({ id: 'vm2', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:04.0' }] });
    await authority.allocPasids('vm1', { count: 2 });
    [theirs] = (await authority.allocPasids('vm2')) as [number];
    await authority.bind('vm2', theirs, '0000:00:04.0');
    // A PASID vm1 held once: it has a history, and is free now.
    [freed] = (await authority.allocPasids('vm1')) as [number];
    await authority.freePasid('vm1', freed);
    app = await buildApp({ authority });
  });
  after(() => app.close());

  const call = async (token: string, method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown) => {
    const r = await app.inject({ method, url, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { payload: JSON.stringify(body) } : {}) });
    return { status: r.statusCode, body: r.json() as { code: string; message: string; details: Record<string, unknown> } };
  };
  const requests = (p: number): [string, 'GET' | 'POST' | 'DELETE', string, unknown?][] => [
    ['show', 'GET', `/v1/vms/vm1/pasids/${p}`],
    ['free', 'DELETE', `/v1/vms/vm1/pasids/${p}`],
    ['bind', 'POST', `/v1/vms/vm1/pasids/${p}/bindings`, { bdf: '0000:00:02.0' }],
    ['unbind', 'DELETE', `/v1/vms/vm1/pasids/${p}/bindings/0000%3A00%3A02.0`],
  ];
  /** The answer with the PASID's number taken out, to compare answers about different PASIDs. */
  const shape = (r: Awaited<ReturnType<typeof call>>, p: number) => JSON.parse(JSON.stringify(r).split(`${p} (0x${p.toString(16)})`).join('P').replaceAll(`"pasid":${p}`, '"pasid":"P"').replaceAll(`/pasids/${p}`, '/pasids/P'));

  it('another VM\'s PASID, a free one, one it freed and the host\'s: the same 404 ENOENT, on every operation of its path', async () => {
    const before = authority.host.snapshot();
    const host = 1048575; // the top PASID is the host's (never a VM's)
    for (let i = 0; i < 4; i++) {
      const answers = [theirs, FREE, freed, host].map(async (p) => {
        const [what, method, url, body] = requests(p)[i]!;
        const r = await call(mine, method, url, body);
        return { what, p, r };
      });
      const got = await Promise.all(answers);
      for (const { what, p, r } of got) {
        assert.equal(r.status, 404, `${what} ${p}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, 'ENOENT');
        assert.equal(r.body.message, `VM vm1 holds no PASID ${p} (0x${p.toString(16)})`, `${what} ${p}`);
      }
      const [a, ...rest] = got.map(({ r, p }) => shape(r, p));
      for (const b of rest) assert.deepEqual(b, a, `${got[0]!.what}: the answers differ only by the PASID's number`);
    }
    assert.deepEqual(authority.host.snapshot(), before, 'nothing changed');
  });

  it('the admin keeps the host\'s rule: 403 EACCES for another VM\'s PASID, 404 ENOENT for a free one', async () => {
    const t = await call(ADMIN, 'GET', `/v1/vms/vm1/pasids/${theirs}`);
    assert.equal(t.status, 403);
    assert.equal(t.body.code, 'EACCES');
    const f = await call(ADMIN, 'GET', `/v1/vms/vm1/pasids/${FREE}`);
    assert.equal(f.status, 404);
    assert.equal(f.body.code, 'ENOENT');
    // And the host model itself: EACCES, the kernel's ownership rule.
    assert.throws(() => authority.vm('vm1').lookup(theirs), (e: unknown) => (e as { code?: string }).code === 'EACCES');
  });

  it('its guest\'s Free of another VM\'s PASID and of a free one read the same in its vIOMMU\'s registers and command log', async () => {
    const mmio = (token: string, body: unknown) => call(token, 'POST', '/v1/vms/vm1/viommus/0/mmio', body);
    const view = (await call(mine, 'GET', '/v1/vms/vm1/viommus/0')).body as unknown as { config: { layout: 'A' | 'B' } };
    const map = registerMap(view.config.layout);
    const freeThroughVcmd = async (p: number) => {
      assert.equal((await mmio(mine, { op: 'write', offset: registerOffset(map, 'VCMD_REG'), size: 8, value: `0x${encodeVcmd(map, VCMD_CMD.FREE, p).toString(16)}` })).status, 200);
      let rsp = 1n;
      for (let i = 0; i < 100 && (rsp & 1n) === 1n; i++) {
        const r = await mmio(mine, { op: 'read', offset: registerOffset(map, 'VCRSP_REG'), size: 8 });
        rsp = BigInt((r.body as unknown as { value: string }).value);
      }
      return rsp;
    };
    const rspTheirs = await freeThroughVcmd(theirs);
    const rspFree = await freeThroughVcmd(FREE);
    assert.equal(rspTheirs, rspFree, 'VCRSP reads the same: invalid PASID');
    const regs = async (token: string) => ((await call(token, 'GET', '/v1/vms/vm1/viommus/0/registers')).body as unknown as { recent: { command: string; operand: number | null; error: string | null }[] }).recent.filter((e) => e.command === 'Free PASID');
    const seen = await regs(mine);
    assert.deepEqual(seen.slice(-2).map((e) => e.error), [`ENOENT: VM vm1 holds no PASID ${theirs} (0x${theirs.toString(16)})`, `ENOENT: VM vm1 holds no PASID ${FREE} (0x${FREE.toString(16)})`]);
    const admin = await regs(ADMIN);
    assert.match(admin.at(-2)?.error ?? '', /^EACCES: /, 'the admin sees whose it was');
    assert.match(admin.at(-1)?.error ?? '', /^ENOENT: .* is not allocated/);
    assert.deepEqual(authority.vm('vm2').pasids(), [theirs], 'the other VM kept its PASID');
  });
});
