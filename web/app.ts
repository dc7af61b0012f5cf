/**
 * The ioasid dashboard (served at `/` by `ioasid serve`; docs/dashboard.md). It signs in with the
 * admin token (kept only in this tab's sessionStorage), then:
 *  1. at once, checks the token (`/v1/vms`), opens the event stream (`/v1/events`) and loads the
 *     compact namespace map (`/v1/namespace/map`), then closes the window between map and stream
 *     by seq (see `#connect`), so no event is lost or applied twice;
 *  2. keeps the map, legend, VM table, PASID details and register inspector current from the
 *     events, within a frame for the map and within ~300 ms for what needs a request;
 *  3. fetches the map again every 30 s, after a gap in the event sequence and after reconnecting.
 * Everything goes through the typed client; the page holds no rule of the domain.
 */
import { IoasidClient, type AuthorityEvent, type NamespaceMap, type VmInfo } from '../src/client/index.ts';
import { afterFrame, byId, errorCode, errorMessage, fill, fmtPasid, h, hex, parsePasid, swatch, throttle } from './dom.ts';
import { EventFeed } from './event-feed.ts';
import { fmtRange, pasidsOf, toPageEvent, type PageEvent } from './events.ts';
import { describeView, lastShown } from './layout.ts';
import { MapView } from './map-view.ts';
import { CAPACITY, FREE, HOST, NamespaceModel, type Owner } from './model.ts';
import { Overview } from './overview.ts';
import { PasidDetail } from './pasid-detail.ts';
import { RegisterInspector } from './register-inspector.ts';
import { VmTable } from './vm-table.ts';

const TOKEN_KEY = 'ioasid.adminToken';
const RESYNC_MS = 30_000;
/** Most events fetched to close the window between the map and the stream (else reload). */
const CATCH_UP_MAX = 20_000;
const STRUCTURAL = new Set(['vm-created', 'vm-destroyed', 'viommu-added', 'viommu-removed', 'device-assigned', 'device-removed', 'bind', 'unbind', 'quota-exhausted']);

class Dashboard {
  readonly model = new NamespaceModel();
  readonly map: MapView;
  readonly overview: Overview;
  readonly vms: VmTable;
  readonly feed: EventFeed;
  readonly inspector: RegisterInspector;
  readonly detail: PasidDetail;
  readonly #el = {
    conn: byId('conn', HTMLElement),
    banner: byId('banner', HTMLDivElement),
    signin: byId('signin', HTMLElement),
    signinForm: byId('signin-form', HTMLFormElement),
    token: byId('token', HTMLInputElement),
    signinError: byId('signin-error', HTMLElement),
    signinSubmit: byId('signin-submit', HTMLButtonElement),
    signout: byId('signout', HTMLButtonElement),
    main: byId('main', HTMLElement),
    canvas: byId('map', HTMLCanvasElement),
    nsSummary: byId('ns-summary', HTMLElement),
    zoomReadout: byId('zoom-readout', HTMLElement),
    fit: byId('zoom-fit', HTMLButtonElement),
    whole: byId('zoom-reset', HTMLButtonElement),
    runs: byId('runs', HTMLElement),
    runsStatus: byId('runs-status', HTMLElement),
    runPrev: byId('run-prev', HTMLButtonElement),
    runNext: byId('run-next', HTMLButtonElement),
    runAll: byId('run-all', HTMLButtonElement),
    ownerClear: byId('owner-clear', HTMLButtonElement),
    cursor: byId('cursor-status', HTMLElement),
    hover: byId('hover-status', HTMLElement),
    legend: byId('legend', HTMLUListElement),
    goto: byId('goto', HTMLInputElement),
    gotoError: byId('goto-error', HTMLElement),
    feedPause: byId('feed-pause', HTMLButtonElement),
  };
  #client: IoasidClient | null = null;
  #stopEvents: (() => void) | null = null;
  /** Bumped at sign-out: callbacks of an older session do nothing. */
  #generation = 0;
  /** Bumped by every (re)connection: callbacks of an older one do nothing. */
  #attempt = 0;
  #signedIn = false;
  /** Stream events are applied to the model (else held until the map and the stream line up). */
  #live = false;
  #held: PageEvent[] = [];
  /** While live, events received during a map reload (re-applied on top of it). */
  #buffer: PageEvent[] | null = null;
  /** The owner pressed in the legend (its PASIDs framed, the others dimmed), and which run is framed (-1: all). */
  #selected: number | null = null;
  #run = -1;
  /** The legend's run counts are being counted (after the current frame). */
  #runsDue = false;
  #mapDrawn = false;
  /** The stream opened before in this session (a reopened stream may be a restarted service's). */
  #streamOpened = false;
  #resyncTimer: ReturnType<typeof setInterval> | null = null;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #retryDelay = 1000;
  #rendered = false;
  #resyncing: Promise<void> | null = null;
  #resyncAgain = false;
  #legendFrame = 0;
  readonly #refreshVms = throttle(() => void this.loadVms(), 300);
  readonly #refreshInspector = throttle(() => void this.inspector.refresh(), 300);

  constructor() {
    const el = this.#el;
    this.map = new MapView(el.canvas, this.model, {
      onOpen: (p) => void this.openPasid(p),
      onCursor: (p) => this.#describeCursor(p),
      onHover: (cell) => {
        el.hover.textContent = cell === null ? '' : `Pointer: ${cell.count === 1 ? this.#describe(cell.first) : this.#describeCell(cell.first, cell.count)}`;
      },
      onView: () => {
        this.#describeView();
        this.#describeCursor(this.map.cursor);
        this.overview.schedule();
      },
      onKey: (ev) => {
        if (ev.key === ']' || ev.key === '[') {
          if (this.#selected === null) return false;
          this.#step(ev.key === ']' ? 1 : -1);
          return true;
        }
        if (ev.key === 'Escape' && this.#selected !== null) {
          this.#select(null);
          return true;
        }
        return false;
      },
    });
    this.overview = new Overview(byId('overview', HTMLCanvasElement), this.model, this.map, (p) => {
      if (this.map.view.zoom === 0) this.map.zoomBy(1, p);
      this.map.moveTo(p, true);
    });
    this.vms = new VmTable(byId('vms-body', HTMLTableSectionElement), byId('vms-summary', HTMLElement), this.model, {
      onInspect: (vm, seg) => {
        void this.inspector.show(vm, seg);
        byId('regs-vm', HTMLSelectElement).focus();
        byId('inspector', HTMLElement).scrollIntoView({ block: 'start' });
      },
      onPasid: (p) => void this.openPasid(p, true),
      onShow: (vm) => {
        const o = this.model.find(vm);
        if (o === undefined) return;
        this.#select(o.index);
        byId('map-h', HTMLElement).scrollIntoView({ block: 'start' });
        el.canvas.focus({ preventScroll: true });
      },
    });
    this.feed = new EventFeed(byId('feed', HTMLOListElement), byId('feed-count', HTMLElement), {
      onPasid: (p) => void this.openPasid(p, true),
      onRange: (a, b) => {
        this.map.frameRange(a, b);
        byId('map-h', HTMLElement).scrollIntoView({ block: 'start' });
      },
    });
    this.inspector = new RegisterInspector(byId('regs-form', HTMLFormElement), byId('regs-vm', HTMLSelectElement), byId('regs-seg', HTMLSelectElement),
      byId('regs-out', HTMLElement), byId('regs-status', HTMLElement));
    this.detail = new PasidDetail(byId('detail', HTMLElement), byId('detail-h', HTMLElement), byId('detail-body', HTMLElement), byId('detail-close', HTMLButtonElement), this.model,
      (p) => {
        this.map.moveTo(p, !this.#inView(p));
        el.canvas.focus({ preventScroll: true });
        byId('map-h', HTMLElement).scrollIntoView({ block: 'nearest' });
      });

    this.model.onGap = () => void this.resync();
    this.model.on((c) => {
      if (c.kind !== 'bindings') this.#scheduleLegend();
    });

    el.signinForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.signIn(el.token.value.trim(), false);
    });
    el.signout.addEventListener('click', () => this.signOut(null));
    byId('zoom-in', HTMLButtonElement).addEventListener('click', () => this.map.zoomBy(1));
    byId('zoom-out', HTMLButtonElement).addEventListener('click', () => this.map.zoomBy(-1));
    el.whole.addEventListener('click', () => this.map.showWhole());
    el.fit.addEventListener('click', () => this.map.fitAllocated());
    byId('goto-form', HTMLFormElement).addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.#goto();
    });
    el.legend.addEventListener('click', (ev) => {
      const b = (ev.target as Element).closest('button');
      if (b === null || b.dataset.index === undefined) return;
      const i = Number(b.dataset.index);
      this.#select(this.#selected === i ? null : i);
    });
    el.runPrev.addEventListener('click', () => this.#step(-1));
    el.runNext.addEventListener('click', () => this.#step(1));
    el.runAll.addEventListener('click', () => this.#frameSelected(-1));
    el.ownerClear.addEventListener('click', () => this.#select(null));
    el.feedPause.addEventListener('click', () => {
      const p = !this.feed.paused;
      this.feed.setPaused(p);
      el.feedPause.setAttribute('aria-pressed', String(p));
      el.feedPause.textContent = p ? 'Resume' : 'Pause';
    });
    this.#describeView();
    this.#describeCursor(this.map.cursor);

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved !== null && saved !== '') void this.signIn(saved, true);
    else el.token.focus();
  }

  // ---------------------------------------------------------------- session

  #setConn(state: 'live' | 'connecting' | 'offline' | 'out', text: string): void {
    this.#el.conn.dataset.state = state;
    this.#el.conn.textContent = text;
  }

  #banner(text: string | null): void {
    const b = this.#el.banner;
    if (text === null) {
      b.hidden = true;
      b.textContent = '';
    } else {
      b.hidden = false;
      b.textContent = text;
    }
  }

  /** What to tell the user about a failed call. */
  #explain(e: unknown): string {
    switch (errorCode(e)) {
      case 'EPERM': return 'The token is not valid: the service does not know it. Paste the admin token (the admin.token file of the service).';
      case 'EACCES': return 'This token belongs to a VM; the dashboard needs the admin token.';
      case 'ENODEV': return `The service at ${location.origin} is unreachable. Is "ioasid serve" running?`;
      default: return `The service refused: ${errorMessage(e)}`;
    }
  }

  async signIn(token: string, auto: boolean): Promise<void> {
    const el = this.#el;
    el.signinError.textContent = '';
    el.token.removeAttribute('aria-invalid');
    if (token === '') {
      el.signinError.textContent = 'Enter the admin token.';
      el.token.setAttribute('aria-invalid', 'true');
      el.token.focus();
      return;
    }
    this.#teardown();
    const gen = ++this.#generation;
    el.signinSubmit.disabled = true;
    this.#setConn('connecting', 'Signing in…');
    const client = new IoasidClient({ url: location.origin, token });
    this.#client = client;
    this.#signedIn = false;
    this.#streamOpened = false;
    // The VM list checks the token; the event stream and the map start at the same time.
    const vmsP = client.listVms();
    void this.#connect(gen);
    let vms: VmInfo[];
    try {
      vms = await vmsP;
    } catch (e) {
      if (gen !== this.#generation) return;
      this.#generation++;
      this.#teardown();
      this.#client = null;
      el.signinSubmit.disabled = false;
      const code = errorCode(e);
      if (code === 'EPERM' || code === 'EACCES') sessionStorage.removeItem(TOKEN_KEY);
      this.#showSignIn();
      el.signinError.textContent = auto && (code === 'EPERM' || code === 'EACCES') ? `The saved token no longer works. ${this.#explain(e)}` : this.#explain(e);
      if (code !== 'ENODEV') el.token.setAttribute('aria-invalid', 'true');
      this.#setConn(code === 'ENODEV' ? 'offline' : 'out', code === 'ENODEV' ? 'Service unreachable' : 'Not signed in');
      el.token.focus();
      return;
    }
    if (gen !== this.#generation) return;
    performance.mark('ioasid:signed-in');
    this.#signedIn = true;
    el.signinSubmit.disabled = false;
    sessionStorage.setItem(TOKEN_KEY, token);
    el.token.value = '';
    this.inspector.setClient(client);
    this.detail.setClient(client);
    el.signin.hidden = true;
    el.main.hidden = false;
    el.signout.hidden = false;
    if (!this.#live) this.#setConn('connecting', 'Connecting to the event stream…');
    this.#showVms(vms);
    this.#maybeRendered();
    void client.recentEvents(50).then((evs) => {
      if (gen === this.#generation) this.feed.backfill(evs.map(toPageEvent));
    }, () => {});
    if (!auto) el.canvas.focus();
  }

  #showSignIn(): void {
    this.#el.signin.hidden = false;
    this.#el.main.hidden = true;
    this.#el.signout.hidden = true;
  }

  /** Stop the event stream and the timers of the current session. */
  #teardown(): void {
    this.#attempt++;
    this.#stopEvents?.();
    this.#stopEvents = null;
    if (this.#resyncTimer !== null) clearInterval(this.#resyncTimer);
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#resyncTimer = null;
    this.#retryTimer = null;
    this.#live = false;
    this.#held = [];
    this.#buffer = null;
  }

  signOut(message: string | null): void {
    this.#generation++;
    this.#teardown();
    this.#client = null;
    this.#signedIn = false;
    this.inspector.setClient(null);
    this.detail.setClient(null);
    this.detail.close();
    this.feed.clear();
    sessionStorage.removeItem(TOKEN_KEY);
    this.#banner(null);
    this.#showSignIn();
    this.#setConn('out', 'Not signed in');
    this.#el.signinError.textContent = message ?? '';
    this.#el.token.focus();
  }

  /**
   * Open the event stream and load the map at the same time, then close the window between them:
   * events up to the map's seq are in it; those after it that the stream carries are applied on
   * top; any in between (the stream opened after the map was taken) are fetched from
   * `/v1/events/recent`. Until then the stream's events are held, so they apply in seq order.
   */
  async #connect(gen: number): Promise<void> {
    const client = this.#client;
    if (client === null) return;
    this.#teardown();
    const attempt = this.#attempt;
    const stale = () => gen !== this.#generation || attempt !== this.#attempt;
    let opened = false;
    let open: () => void = () => {};
    let fail: (e: Error) => void = () => {};
    const openP = new Promise<void>((res, rej) => {
      open = res;
      fail = rej;
    });
    openP.catch(() => {});
    this.#stopEvents = client.events((e) => {
      if (!stale()) this.#onEvent(e);
    }, {
      onOpen: () => {
        if (stale()) return;
        opened = true;
        performance.mark('ioasid:events-open');
        if (this.#streamOpened) this.feed.newStream();
        this.#streamOpened = true;
        open();
      },
      onClose: (code, reason) => {
        if (stale()) return;
        fail(new Error(`event stream closed (${code})`));
        this.#stopEvents = null;
        this.#lost(gen, code, reason, opened);
      },
    });

    let map: NamespaceMap;
    try {
      map = await client.namespaceMap();
    } catch (e) {
      if (stale()) return;
      this.#mapFailed(gen, e);
      return;
    }
    if (stale()) return;
    performance.mark('ioasid:map-decoded');
    this.model.load(map);
    performance.mark('ioasid:map-loaded');
    this.#afterLoad();
    await this.map.drawn();
    if (stale()) return;
    this.#mapDrawn = true;
    this.#maybeRendered();

    try {
      await openP;
    } catch {
      return; // #lost retries
    }
    if (stale()) return;
    const missing = await this.#missing(client, map.seq, stale);
    if (stale() || missing === undefined) return;
    const all = [...(missing ?? []), ...this.#held].sort((a, b) => a.seq - b.seq);
    this.#held = [];
    this.#live = true;
    for (const e of all) this.model.apply(e);
    // Events fetched to close the window were never in the stream: the feed shows them too.
    for (const e of missing ?? []) this.feed.push(e);
    if (missing === null) void this.resync(); // the window could not be closed from the event log
    this.#retryDelay = 1000;
    this.#banner(null);
    this.#setConn('live', 'Live');
    this.#resyncTimer ??= setInterval(() => void this.resync(), RESYNC_MS);
  }

  /** Events after `seq` the stream did not carry: [] none, null unknown (resync), undefined stale. */
  async #missing(client: IoasidClient, seq: number, stale: () => boolean): Promise<PageEvent[] | null | undefined> {
    const covered = () => (this.#held[0]?.seq ?? Infinity) <= seq + 1;
    if (covered()) return [];
    try {
      const latest = (await client.recentEvents(1))[0]?.seq ?? 0;
      if (stale()) return undefined;
      if (latest <= seq || covered()) return [];
      const need = latest - seq + 1000;
      if (need > CATCH_UP_MAX) return null;
      const after = (await client.recentEvents(need)).filter((e) => e.seq > seq).map(toPageEvent);
      if (stale()) return undefined;
      return after[0]?.seq === seq + 1 ? after : null;
    } catch {
      return stale() ? undefined : null;
    }
  }

  #lost(gen: number, code: number, reason: string, opened: boolean): void {
    this.#live = false;
    if (!this.#signedIn) return; // the sign-in says what went wrong
    if (code === 4401) {
      this.signOut(`The service no longer accepts this token (${reason || 'a valid token is required'}). Sign in again with the admin token.`);
      return;
    }
    this.#retryLater(gen, `${opened ? 'Live updates stopped' : 'Cannot reach the event stream'}: the service at ${location.origin} is unreachable.`);
  }

  #mapFailed(gen: number, e: unknown): void {
    if (!this.#signedIn) return;
    const code = errorCode(e);
    if (code === 'EPERM' || code === 'EACCES') {
      this.signOut(this.#explain(e));
      return;
    }
    this.#retryLater(gen, `Could not load the namespace map. ${this.#explain(e)}`);
  }

  #retryLater(gen: number, why: string): void {
    const wait = this.#retryDelay;
    this.#retryDelay = Math.min(10_000, this.#retryDelay * 2);
    this.#teardown();
    this.#setConn('offline', 'Offline');
    this.#banner(`${why} Retrying in ${Math.round(wait / 1000)} s; the map shows the last state seen.`);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (gen === this.#generation) void this.#connect(gen);
    }, wait);
  }

  #maybeRendered(): void {
    if (this.#rendered || !this.#signedIn || !this.#mapDrawn) return;
    this.#rendered = true;
    performance.mark('ioasid:rendered');
    document.documentElement.dataset.rendered = 'true';
  }

  #afterLoad(): void {
    this.#renderLegend();
    this.vms.updateUsed();
    this.#describeCursor(this.map.cursor);
  }

  #onEvent(raw: AuthorityEvent): void {
    const e = toPageEvent(raw);
    if (this.#live) {
      this.#buffer?.push(e);
      this.model.apply(e);
    } else this.#held.push(e);
    this.feed.push(e);
    if (STRUCTURAL.has(e.type)) this.#refreshVms();
    this.detail.touched(pasidsOf(e));
    if (e.vm !== null && e.vm === this.inspector.vm) this.#refreshInspector();
  }

  /** While live: load the map again and re-apply the events that arrived meanwhile (one at a time). */
  resync(): Promise<void> {
    if (this.#resyncing !== null) {
      this.#resyncAgain = true;
      return this.#resyncing;
    }
    this.#resyncing = (async () => {
      do {
        this.#resyncAgain = false;
        await this.#reload();
      } while (this.#resyncAgain && this.#live);
    })().finally(() => {
      this.#resyncing = null;
    });
    return this.#resyncing;
  }

  async #reload(): Promise<void> {
    const client = this.#client;
    if (client === null || !this.#live) return;
    const gen = this.#generation;
    const attempt = this.#attempt;
    this.#buffer = [];
    try {
      const map = await client.namespaceMap();
      if (gen !== this.#generation || attempt !== this.#attempt) return;
      const pending = this.#buffer ?? [];
      this.#buffer = null;
      this.model.load(map);
      for (const e of pending) this.model.apply(e);
      this.#afterLoad();
    } catch (e) {
      if (gen !== this.#generation || attempt !== this.#attempt) return;
      this.#buffer = null;
      this.#mapFailed(gen, e);
    }
  }

  async loadVms(): Promise<void> {
    const client = this.#client;
    if (client === null) return;
    const gen = this.#generation;
    try {
      const vms = await client.listVms();
      if (gen === this.#generation) this.#showVms(vms);
    } catch (e) {
      if (gen === this.#generation) this.#banner(`Could not list the VMs: ${this.#explain(e)}`);
    }
  }

  #showVms(vms: VmInfo[]): void {
    this.model.setVms(vms);
    this.model.setBindings(vms);
    this.vms.render(vms);
    this.inspector.setVms(vms);
    this.#scheduleLegend();
  }

  async openPasid(p: number, center = false): Promise<void> {
    if (p < 1 || p >= CAPACITY) return;
    if (center) {
      if (this.map.view.zoom < 5) this.map.zoomBy(5 - this.map.view.zoom, p);
      this.map.moveTo(p, true);
    }
    await this.detail.open(p);
  }

  #goto(): void {
    const el = this.#el;
    const p = parsePasid(el.goto.value);
    if (p === null) {
      el.goto.setAttribute('aria-invalid', 'true');
      el.gotoError.textContent = 'A PASID is 1 to 1048575 (0xfffff), decimal or 0x-hex.';
      return;
    }
    el.goto.removeAttribute('aria-invalid');
    el.gotoError.textContent = '';
    void this.openPasid(p, true);
  }

  #inView(p: number): boolean {
    const v = this.map.view;
    return p >= v.start && p <= lastShown(v);
  }

  // ---------------------------------------------------------------- owners

  /** Press an owner: dim the others and frame its PASIDs (null: every owner again, the window stays). */
  #select(index: number | null): void {
    this.#selected = index;
    this.#run = -1;
    this.map.setHighlight(index);
    if (index !== null) this.#frameSelected(-1);
    this.#renderLegend();
  }

  /** Frame all of the selected owner's PASIDs (run -1) or one of its runs. */
  #frameSelected(run: number): void {
    const index = this.#selected;
    if (index === null) return;
    const runs = this.model.runsOf(index);
    const n = runs.length / 2;
    this.#run = n === 0 ? -1 : Math.max(-1, Math.min(n - 1, run));
    if (n > 0) {
      if (this.#run < 0) this.map.frameRange(runs[0] as number, (runs[2 * n - 2] as number) + (runs[2 * n - 1] as number) - 1);
      else {
        const start = runs[2 * this.#run] as number;
        this.map.frameRange(start, start + (runs[2 * this.#run + 1] as number) - 1);
      }
    }
    this.#describeRuns();
  }

  /** The next (1) or previous (-1) run of the selected owner, wrapping. */
  #step(dir: 1 | -1): void {
    if (this.#selected === null) return;
    const n = this.model.runsOf(this.#selected).length / 2;
    if (n === 0) return;
    const at = this.#run < 0 ? (dir > 0 ? 0 : n - 1) : (this.#run + dir + n) % n;
    this.#frameSelected(at);
  }

  #describeRuns(): void {
    const el = this.#el;
    const index = this.#selected;
    const o = index === null ? undefined : this.model.owners[index];
    el.runs.hidden = o === undefined;
    if (o === undefined) return;
    const runs = this.model.runsOf(o.index);
    const n = runs.length / 2;
    const name = ownerName(o);
    // Disabled only when there is nothing to frame (a button that loses focus under the user is worse).
    el.runPrev.disabled = el.runNext.disabled = el.runAll.disabled = n === 0;
    if (n === 0) {
      el.runsStatus.textContent = `${name} holds no PASIDs.`;
      return;
    }
    if (this.#run >= n) this.#run = n - 1; // its runs merged or went since
    const head = `${name}: ${o.count.toLocaleString('en')} PASID${o.count === 1 ? '' : 's'} in ${n.toLocaleString('en')} run${n === 1 ? '' : 's'}.`;
    if (this.#run < 0) {
      const last = (runs[2 * n - 2] as number) + (runs[2 * n - 1] as number) - 1;
      el.runsStatus.textContent = `${head} Framing all of them: ${fmtRange([runs[0] as number, last])}.`;
    } else {
      const start = runs[2 * this.#run] as number;
      const len = runs[2 * this.#run + 1] as number;
      el.runsStatus.textContent = `${head} Framing run ${(this.#run + 1).toLocaleString('en')} of ${n.toLocaleString('en')}: ${fmtRange([start, start + len - 1])} (${len.toLocaleString('en')} PASID${len === 1 ? '' : 's'}).`;
    }
  }

  // ---------------------------------------------------------------- text

  #describe(p: number): string {
    if (p === 0) return 'PASID 0x00000 (0) · no PASID (reserved: requests without a PASID)';
    const o = this.model.ownerAt(p);
    const owner = o.index === FREE ? 'free' : o.id === null ? 'the host' : o.label;
    const bound = this.model.bound.get(p);
    return `PASID ${fmtPasid(p)} · ${owner}${bound !== undefined && bound.size > 0 ? ` · bound to ${[...bound].join(', ')}` : ''}`;
  }

  #describeCursor(p: number): void {
    const k = this.map.view.perCell;
    const first = Math.floor(p / k) * k;
    this.#el.cursor.textContent = `Cursor: ${this.#describe(p)}${k > 1 ? ` · its cell ${this.#describeCell(first, k)}` : ''}`;
  }

  /** A cell of several PASIDs: its range and who holds how many of them. */
  #describeCell(first: number, count: number): string {
    const last = Math.min(CAPACITY - 1, first + count - 1);
    const by = new Map<number, number>();
    for (let p = first; p <= last; p++) {
      const o = this.model.cells[p] as number;
      by.set(o, (by.get(o) ?? 0) + 1);
    }
    const parts = [...by].sort((a, b) => b[1] - a[1] || a[0] - b[0])
      .map(([i, n]) => `${ownerName(this.model.owners[i] as Owner)} ${n.toLocaleString('en')}`);
    return `PASIDs ${hex(first)}–${hex(last)}: ${parts.slice(0, 4).join(', ')}${parts.length > 4 ? `, and ${parts.length - 4} more owners` : ''}`;
  }

  #describeView(): void {
    const el = this.#el;
    const m = this.map;
    const v = m.view;
    const text = describeView(v);
    el.zoomReadout.textContent = text;
    el.fit.setAttribute('aria-pressed', String(m.mode === 'fit'));
    el.whole.setAttribute('aria-pressed', String(m.mode === 'whole'));
    const what = m.mode === 'fit' ? 'the allocated PASIDs framed' : m.mode === 'whole' ? 'the whole namespace' : 'a window of the namespace';
    el.canvas.setAttribute('aria-label', `Map of ${what}: ${text}, coloured by owner`);
  }

  #scheduleLegend(): void {
    if (this.#legendFrame !== 0) return;
    this.#legendFrame = requestAnimationFrame(() => {
      this.#legendFrame = 0;
      this.#renderLegend();
      this.vms.updateUsed();
      this.#describeCursor(this.map.cursor);
    });
  }

  #renderLegend(): void {
    const legend = this.model.legend();
    // Runs cost a pass over the namespace: counted just after this frame, then the legend again.
    const summary = this.model.summaryIfCurrent();
    if (summary === null && !this.#runsDue && this.model.loaded) {
      this.#runsDue = true;
      afterFrame(() => {
        this.#runsDue = false;
        this.model.summary();
        this.#scheduleLegend();
      });
    }
    const hi = this.model.loaded ? this.model.bounds().hi : -1;
    const used = CAPACITY - 1 - (this.model.owners[FREE]?.count ?? 0);
    this.#el.nsSummary.textContent = `${used.toLocaleString('en')} of ${(CAPACITY - 1).toLocaleString('en')} PASIDs allocated${hi > 0 ? `, the highest ${hex(hi)}` : ''}`;
    if (this.#selected !== null && this.model.owners[this.#selected]?.alive === false) this.#select(null);
    const sel = this.#selected;
    const focused = document.activeElement instanceof HTMLElement && this.#el.legend.contains(document.activeElement) ? document.activeElement.dataset.index : undefined;
    fill(this.#el.legend, legend.map((o) => {
      const runs = summary?.runs[o.index];
      const parts = [
        swatch(o.css, o.pattern),
        h('span', { class: 'label' }, o.index === FREE ? 'free' : o.id === null ? 'host' : o.label),
        h('span', { class: 'num' }, o.count.toLocaleString('en')),
        h('span', { class: 'runs-n num' }, o.index === FREE ? '' : runs === undefined ? '…' : `${runs.toLocaleString('en')} run${runs === 1 ? '' : 's'}`),
      ];
      // Free is no owner to frame: a row, not a button.
      return h('li', { 'data-owner': o.id ?? (o.index === HOST ? '(host)' : '(free)') }, o.index === FREE
        ? h('div', { class: 'owner-row' }, parts)
        : h('button', { type: 'button', 'data-index': o.index, 'aria-pressed': String(sel === o.index), title: `Frame ${ownerName(o)}'s PASIDs on the map` }, parts));
    }));
    if (focused !== undefined) this.#el.legend.querySelector<HTMLButtonElement>(`button[data-index="${focused}"]`)?.focus();
    // The tests and the pictures wait for the runs to be counted.
    this.#el.legend.dataset.seq = summary === null ? '' : String(this.model.seq);
    this.#describeRuns();
  }
}

function ownerName(o: Owner): string {
  return o.index === FREE ? 'free' : o.id === null ? 'the host' : o.label;
}

performance.mark('ioasid:script');
new Dashboard();
