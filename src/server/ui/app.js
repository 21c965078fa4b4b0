/* cauce dashboard: a hash-routed page over the REST API (/api/v1). No dependencies, no build.
 *
 * Routes: #/ (overview), #/pipelines/NAME[?run=ID], #/runs/ID[?task=TASK].
 * Every page builds its markup as strings in one pass and listens through a handful of
 * delegated listeners on document, so a run with a thousand tasks renders in one go.
 * Pages own an AbortController and timers; leaving a page stops its fetches, streams and polls.
 */
'use strict';
(() => {
  // ------------------------------------------------------------------ constants
  const TOKEN_KEY = 'cauce.token';
  const OVERVIEW_POLL_MS = 5000;
  const PIPELINE_POLL_MS = 5000;
  const RUN_POLL_MS = 2000;
  const LOG_TAIL_BYTES = 65536;
  const LOG_MAX_CHARS = 2 * 1024 * 1024;
  const HISTORY_PAGE = 50;
  const RUN_STATES = ['running', 'success', 'partial', 'failed', 'cancelled'];
  const TASK_STATES = ['pending', 'queued', 'running', 'retrying', 'success', 'failed', 'skipped', 'cancelled'];
  const TASK_FINAL = new Set(['success', 'failed', 'skipped', 'cancelled']);
  const ATTEMPT_FINAL = new Set(['success', 'failed', 'lost', 'cancelled']);
  const DASH = '\u2013';

  const main = document.getElementById('main');
  const statusEl = document.getElementById('status');
  const userEl = document.getElementById('user');
  const whoamiEl = document.getElementById('whoami');
  const crumbsEl = document.getElementById('crumbs');

  // ------------------------------------------------------------------ small helpers
  const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  const esc = (v) => (v == null ? '' : String(v).replace(/[&<>"']/g, (c) => ESC[c]));
  const enc = encodeURIComponent;
  const $ = (sel, root = document) => root.querySelector(sel);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  const utf8 = new TextEncoder();

  // The server's clock, as far as we can tell (relative times are computed against it).
  let skew = 0;
  const now = () => Date.now() + skew;

  function fmtAbs(ms) {
    if (ms == null) return DASH;
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtClock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtDur(sec) {
    if (sec == null || !Number.isFinite(sec)) return DASH;
    if (sec < 0) sec = 0;
    if (sec < 1) return `${Math.round(sec * 1000)}ms`;
    if (sec < 10) return `${(Math.floor(sec * 10) / 10).toFixed(1)}s`;
    if (sec < 60) return `${Math.floor(sec)}s`;
    const s = Math.floor(sec);
    if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }
  function fmtSpan(sec) {
    // A coarser duration for ages ("3h 12m", "5d 2h").
    if (sec == null) return DASH;
    const s = Math.max(0, Math.floor(sec));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m`;
    if (s < 86400) { const m = Math.floor((s % 3600) / 60); return `${Math.floor(s / 3600)}h${m ? ` ${m}m` : ''}`; }
    const h = Math.floor((s % 86400) / 3600);
    return `${Math.floor(s / 86400)}d${h ? ` ${h}h` : ''}`;
  }
  function fmtAgo(ms) {
    if (ms == null) return DASH;
    const diff = (now() - ms) / 1000;
    if (diff < -5) return `in ${fmtSpan(-diff)}`;
    if (diff < 5) return 'just now';
    if (diff > 45 * 86400) return fmtAbs(ms).slice(0, 10);
    return `${fmtSpan(diff)} ago`;
  }
  function timeTag(ms, text) {
    if (ms == null) return `<span class="dash">${DASH}</span>`;
    return `<time datetime="${new Date(ms).toISOString()}" title="${esc(fmtAbs(ms))}">${esc(text ?? fmtAgo(ms))}</time>`;
  }
  function fmtPct(x) {
    if (x == null || !Number.isFinite(x)) return DASH;
    let p = Math.round(x * 100);
    if (p === 100 && x < 1) p = 99;
    if (p === 0 && x > 0) p = 1;
    return `${p}%`;
  }
  const fmtInt = (n) => (n == null || n === '' ? DASH : Number(n).toLocaleString('en-US'));
  function fmtKb(kb) {
    if (kb == null) return DASH;
    if (kb < 1024) return `${kb} KiB`;
    if (kb < 1024 * 1024) return `${(kb / 1024).toFixed(kb < 10240 ? 1 : 0)} MiB`;
    return `${(kb / 1048576).toFixed(2)} GiB`;
  }
  // Logical dates come as given: a day, or a full RFC 3339 time for runs started "now".
  function fmtLogical(ld) {
    const m = /^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d)/.exec(ld || '');
    return m ? `${m[1]} ${m[2]}` : ld || DASH;
  }
  const firstLine = (s) => String(s ?? '').split('\n', 1)[0];
  function trunc(s, n) {
    s = String(s);
    return s.length > n ? `${s.slice(0, n - 1)}\u2026` : s;
  }
  const badge = (state, extra = '') => `<span class="badge st-${esc(state)}${extra ? ` ${extra}` : ''}">${esc(state)}</span>`;
  const runHref = (id, task) => `#/runs/${enc(id)}${task ? `?task=${enc(task)}` : ''}`;
  const pipeHref = (name) => `#/pipelines/${enc(name)}`;
  const isOperator = () => !!auth.me && (auth.me.role === 'operator' || auth.me.role === 'admin');
  function fromHtml(html) {
    const t = document.createElement('template');
    t.innerHTML = html;
    return t.content.firstElementChild;
  }

  // Focus survives a region being rebuilt: remember what had it, find its twin afterwards.
  function focusKey(root) {
    const a = document.activeElement;
    if (!a || a === document.body || !root.contains(a)) return null;
    for (const attr of ['id', 'data-logs', 'data-retry-task', 'data-run', 'data-sort', 'href', 'name']) {
      const v = a.getAttribute(attr);
      if (v != null) return `${a.localName}[${attr}="${CSS.escape(v)}"]`;
    }
    return null;
  }
  function restoreFocus(root, key) {
    if (!key) return;
    const el = root.querySelector(key);
    if (el && document.activeElement !== el) el.focus({ preventScroll: true });
  }
  function setHtml(el, html) {
    const key = focusKey(el);
    el.innerHTML = html;
    restoreFocus(el, key);
  }
  // Rebuilds a list of rows, replacing only the rows whose markup changed when the keys are
  // the same as last time (so hover, focus and selection mostly survive a refresh).
  function patchRows(container, items, cache, emptyHtml) {
    const key = focusKey(container);
    if (!items.length) {
      container.innerHTML = emptyHtml;
      cache.keys = null;
      cache.htmls = null;
    } else if (cache.keys && cache.keys.length === items.length && container.children.length === items.length &&
      cache.keys.every((k, i) => k === items[i].key)) {
      const rows = container.children;
      for (let i = 0; i < items.length; i++) {
        if (cache.htmls[i] !== items[i].html) rows[i].replaceWith(fromHtml(items[i].html));
      }
      cache.htmls = items.map((i) => i.html);
    } else {
      container.innerHTML = items.map((i) => i.html).join('');
      cache.keys = items.map((i) => i.key);
      cache.htmls = items.map((i) => i.html);
    }
    restoreFocus(container, key);
  }

  let toastTimer = null;
  function say(message, kind = '') {
    statusEl.innerHTML = `<div class="toast ${kind}">${esc(message)}</div>`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { statusEl.textContent = ''; }, kind === 'error' ? 9000 : 5000);
  }

  // ------------------------------------------------------------------ API
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  const auth = { token: sessionStorage.getItem(TOKEN_KEY), me: null };

  function noteClock(res) {
    const d = Date.parse(res.headers.get('date') || '');
    if (!Number.isFinite(d)) return;
    const s = d - Date.now();
    // The Date header has one-second precision: only follow it for a real difference.
    if (Math.abs(s - skew) > 2500) skew = s;
  }

  async function toError(res) {
    let code = `http_${res.status}`;
    let message = `${res.status} ${res.statusText}`.trim();
    try {
      const body = await res.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch { /* not JSON */ }
    return new ApiError(res.status, code, message);
  }

  async function request(path, { method = 'GET', body, signal, token = auth.token, quiet401 = false, accept = 'application/json' } = {}) {
    const headers = { Accept: accept };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(`/api/v1${path}`, {
        method, headers, signal, cache: 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', `Cannot reach the server (${e.message}).`);
    }
    noteClock(res);
    if (res.status === 401) {
      const err = await toError(res);
      if (!quiet401 && token === auth.token) unauthorized(err.message);
      throw err;
    }
    if (!res.ok) throw await toError(res);
    return res;
  }

  async function api(path, opts = {}) {
    const res = await request(path, opts);
    if (res.status === 204) return null;
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  }

  const isAbort = (e) => e && (e.name === 'AbortError' || e.code === 'aborted');

  // ------------------------------------------------------------------ pages
  // One page at a time. A page object carries its abort signal, its timers and its handlers
  // for the document-level listeners (onClick, onInput, onChange, onSubmit, ...).
  let pg = null;

  function startPage(name) {
    stopPage();
    pg = { name, ctrl: new AbortController(), timers: new Set() };
    document.body.dataset.page = name;
    delete document.body.dataset.loaded;
    return pg;
  }
  function stopPage() {
    if (!pg) return;
    pg.ctrl.abort();
    for (const t of pg.timers) clearTimeout(t);
    pg.timers.clear();
    pg = null;
  }
  const alive = (p) => p === pg && !p.ctrl.signal.aborted;
  function later(p, ms, fn) {
    const t = setTimeout(() => {
      p.timers.delete(t);
      if (alive(p)) fn();
    }, ms);
    p.timers.add(t);
    return t;
  }
  function markLoaded(p) {
    if (alive(p)) document.body.dataset.loaded = '1';
  }

  // Calls fn now and then every `ms` after each call ends, while the page lives.
  // `every` may be a function (the pause depends on what was seen). Hidden tabs are not polled.
  function poller(p, every, fn) {
    let timer = null;
    let busy = false;
    let again = false;
    const tick = async () => {
      if (timer) { clearTimeout(timer); p.timers.delete(timer); timer = null; }
      if (!alive(p)) return;
      if (busy) { again = true; return; }
      busy = true;
      do {
        again = false;
        try { await fn(); } catch (e) { if (!isAbort(e) && alive(p)) console.warn(e); }
      } while (again && alive(p));
      busy = false;
      schedule();
    };
    const schedule = () => {
      if (!alive(p)) return;
      const ms = typeof every === 'function' ? every() : every;
      if (ms == null) return;
      if (timer) { clearTimeout(timer); p.timers.delete(timer); }
      timer = later(p, ms, () => {
        timer = null;
        if (document.hidden) schedule(); else tick();
      });
    };
    return { now: tick, schedule };
  }

  function setTitle(t) {
    document.title = t ? `${t} \u00b7 cauce` : 'cauce';
  }
  function setCrumbs(items) {
    crumbsEl.innerHTML = items.map((it, i) => {
      const sep = '<span class="sep" aria-hidden="true">/</span>';
      const body = it.href ? `<a href="${esc(it.href)}">${esc(it.label)}</a>` : `<span class="cur" aria-current="page">${esc(it.label)}</span>`;
      return (i ? sep : '') + body;
    }).join('');
  }

  let navigated = false; // true after the first route: move focus to the new page's heading
  function afterRender() {
    if (!navigated) { navigated = true; return; }
    window.scrollTo(0, 0);
    const h = $('h1', main);
    if (h) h.focus({ preventScroll: true });
  }

  // Replaces the page's content; a heading that had the focus (just navigated here) keeps it.
  function replaceMain(html) {
    const a = document.activeElement;
    const keep = a && a.localName === 'h1' && main.contains(a);
    main.innerHTML = html;
    if (keep) { const h = $('h1', main); if (h) h.focus({ preventScroll: true }); }
  }

  function errorPage(p, title, err) {
    replaceMain(`<div class="page-head"><div class="titles"><h1 tabindex="-1">${esc(title)}</h1></div></div>
      <div class="notice error" role="alert">${esc(err.message || String(err))}</div>
      <p class="muted"><a href="#/">Back to the overview</a></p>`);
    markLoaded(p);
  }

  // ------------------------------------------------------------------ sign-in
  function renderUser() {
    if (auth.me) {
      whoamiEl.innerHTML = `<b>${esc(auth.me.name)}</b> \u00b7 ${esc(auth.me.role)}`;
      userEl.hidden = false;
    } else {
      whoamiEl.textContent = '';
      userEl.hidden = true;
    }
  }

  function signinPage(message = '', isError = false) {
    const p = startPage('signin');
    setTitle('Sign in');
    setCrumbs([]);
    renderUser();
    main.innerHTML = `<div class="signin panel">
      <form id="signin-form" class="panel-body" autocomplete="off">
        <h1 tabindex="-1">Sign in</h1>
        <p class="muted small">Paste an API token from <code>server.tokens</code> in cauce.yaml.
          It is kept in this browser tab only.</p>
        <div class="field">
          <label for="token">API token</label>
          <input id="token" name="token" class="input" type="password" required spellcheck="false" autocapitalize="off" aria-describedby="signin-error">
        </div>
        <p id="signin-error" class="${isError ? 'form-error' : 'muted small'}" role="alert">${esc(message)}</p>
        <div class="form-actions"><button id="signin" type="submit" class="btn btn-primary">Sign in</button></div>
      </form></div>`;
    p.onSubmit = async (e) => {
      if (e.target.id !== 'signin-form') return;
      e.preventDefault();
      const input = $('#token');
      const btn = $('#signin');
      const errEl = $('#signin-error');
      const token = input.value.trim();
      if (!token) {
        errEl.className = 'form-error';
        errEl.textContent = 'Enter a token.';
        input.focus();
        return;
      }
      btn.disabled = true;
      errEl.className = 'muted small';
      errEl.textContent = 'Checking\u2026';
      try {
        const me = await api('/me', { token, quiet401: true });
        if (!alive(p)) return;
        auth.token = token;
        auth.me = me;
        sessionStorage.setItem(TOKEN_KEY, token);
        renderUser();
        say(`Signed in as ${me.name} (${me.role})`);
        navigated = true; // focus goes to the page's heading, not lost with the form
        route();
      } catch (err) {
        if (!alive(p)) return;
        btn.disabled = false;
        errEl.className = 'form-error';
        errEl.textContent = err.status === 401 ? 'This token was refused. Check it and try again.' : err.message;
        input.focus();
        input.select();
      }
    };
    $('#token').focus();
    markLoaded(p);
  }

  function unauthorized(message) {
    auth.token = null;
    auth.me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    signinPage(`Signed out: ${message || 'the token was refused'}. Sign in again.`, true);
  }

  function signOut() {
    auth.token = null;
    auth.me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    signinPage('Signed out.');
    say('Signed out');
  }

  // ------------------------------------------------------------------ overview
  const ov = { name: '', state: '', category: '', sort: 'name', dir: 1 };
  const STATE_RANK = { failed: 0, partial: 1, cancelled: 2, running: 3, success: 4 };

  async function fetchOverview(signal) {
    try {
      return await api('/overview', { signal });
    } catch (e) {
      if (e.status !== 404 || e.message !== 'no such endpoint') throw e;
    }
    // Servers without /overview: build what we can from /pipelines and /runs.
    const [pipes, running] = await Promise.all([
      api('/pipelines', { signal }),
      api('/runs?state=running&limit=200', { signal }),
    ]);
    return {
      generated_at: now(),
      partial: true,
      pipelines: pipes.map((s) => ({
        name: s.name, description: s.description, schedule: s.schedule, timezone: s.timezone,
        next_run: s.next_runs[0] ?? null, categories: [], valid: s.valid, error: s.error,
        last_run: s.last_run, success_rate_7d: null, success_rate_30d: null, runs_7d: null,
        runs_30d: null, median_duration_s: null, durations: [], last_success_at: null,
        freshness_s: null, sla_seconds: s.sla_seconds, stale: false,
      })),
      running: running.runs,
    };
  }

  function overviewPage(query) {
    const p = startPage('overview');
    setTitle('Overview');
    setCrumbs([]);
    for (const k of ['name', 'state', 'category']) if (query.has(k)) ov[k] = query.get(k);
    p.data = null;
    p.rowCache = {};
    p.runCache = {};
    p.cats = '';

    const sortTh = (key, label, cls = '', extra = '') =>
      `<th scope="col" class="${cls}" data-sortcol="${key}"${extra}><button type="button" class="sort" data-sort="${key}">${label}</button></th>`;
    const stateOpts = RUN_STATES.map((s) => `<option value="${s}">${s}</option>`).join('');
    main.innerHTML = `
      <div class="page-head">
        <div class="titles"><h1 tabindex="-1">Pipelines</h1><p class="subtitle" id="ov-sub">Loading\u2026</p></div>
      </div>
      <div class="summary" id="ov-summary" aria-label="Summary"></div>
      <section class="panel" aria-labelledby="running-h">
        <div class="panel-head"><h2 id="running-h">In progress</h2><span class="hint" id="running-count" aria-live="polite"></span></div>
        <div class="table-wrap running-wrap"><ul id="running" class="running-list" aria-labelledby="running-h"><li class="empty">Loading\u2026</li></ul></div>
      </section>
      <section class="panel" aria-labelledby="pl-h">
        <div class="panel-head">
          <h2 id="pl-h">All pipelines</h2>
          <form class="filters" id="ov-filters" role="search" aria-label="Filter pipelines">
            <div class="field"><label for="filter-name">Name</label>
              <input id="filter-name" class="input" type="search" placeholder="Filter by name" spellcheck="false" autocomplete="off"></div>
            <div class="field"><label for="filter-state">Last run</label>
              <select id="filter-state" class="input"><option value="">Any state</option>${stateOpts}<option value="none">never run</option></select></div>
            <div class="field"><label for="filter-category">Category</label>
              <select id="filter-category" class="input"><option value="">Any category</option></select></div>
          </form>
        </div>
        <div class="table-wrap">
          <table id="overview" class="data">
            <caption class="sr-only">Pipelines with their schedule, last run, success rates, durations and freshness</caption>
            <thead><tr>
              ${sortTh('name', 'Pipeline', 'sticky-col')}
              ${sortTh('next', 'Schedule \u00b7 next')}
              ${sortTh('last', 'Last run')}
              ${sortTh('when', 'When')}
              ${sortTh('success7', 'Success 7d', 'num')}
              ${sortTh('success30', 'Success 30d', 'num')}
              ${sortTh('runs7', 'Runs 7d', 'num')}
              ${sortTh('duration', 'Median duration', 'num')}
              ${sortTh('freshness', 'Freshness')}
            </tr></thead>
            <tbody id="ov-body"><tr><td colspan="9" class="empty">Loading\u2026</td></tr></tbody>
          </table>
        </div>
      </section>`;
    $('#filter-name').value = ov.name;
    $('#filter-state').value = ov.state;
    updateSortHeaders();

    const refresh = async () => {
      let data;
      try {
        data = await fetchOverview(p.ctrl.signal);
      } catch (e) {
        if (isAbort(e) || !alive(p)) return;
        $('#ov-sub').innerHTML = `<span class="stale">Refresh failed: ${esc(e.message)}</span> \u00b7 retrying`;
        if (!p.data) {
          $('#ov-body').innerHTML = `<tr><td colspan="9" class="empty">${esc(e.message)}</td></tr>`;
          markLoaded(p);
        }
        return;
      }
      if (!alive(p)) return;
      if (Number.isFinite(data.generated_at)) skew = data.generated_at - Date.now();
      p.data = data;
      renderOverview(p);
      markLoaded(p);
    };
    p.poll = poller(p, OVERVIEW_POLL_MS, refresh);
    p.onVisible = () => p.poll.now();
    p.onInput = (e) => {
      if (e.target.id === 'filter-name') {
        ov.name = e.target.value;
        syncOverviewHash();
        renderOverviewRows(p);
      }
    };
    p.onChange = (e) => {
      if (e.target.id === 'filter-state') ov.state = e.target.value;
      else if (e.target.id === 'filter-category') ov.category = e.target.value;
      else return;
      syncOverviewHash();
      renderOverviewRows(p);
    };
    p.onSubmit = (e) => { if (e.target.id === 'ov-filters') e.preventDefault(); };
    p.onClick = (e) => {
      const b = e.target.closest('button[data-sort]');
      if (!b) return;
      const key = b.dataset.sort;
      if (ov.sort === key) ov.dir = -ov.dir;
      else { ov.sort = key; ov.dir = key === 'name' || key === 'next' ? 1 : -1; }
      updateSortHeaders();
      renderOverviewRows(p);
    };
    p.poll.now();
    afterRender();
  }

  function syncOverviewHash() {
    const q = new URLSearchParams();
    for (const k of ['name', 'state', 'category']) if (ov[k]) q.set(k, ov[k]);
    const s = q.toString();
    history.replaceState(null, '', `#/${s ? `?${s}` : ''}`);
  }

  function updateSortHeaders() {
    for (const th of main.querySelectorAll('th[data-sortcol]')) {
      if (th.dataset.sortcol === ov.sort) th.setAttribute('aria-sort', ov.dir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
  }

  function renderOverview(p) {
    const d = p.data;
    const pls = d.pipelines || [];
    // Category options: the union of every pipeline's categories.
    const cats = [...new Set(pls.flatMap((x) => x.categories || []))].sort();
    if (ov.category && !cats.includes(ov.category)) cats.push(ov.category);
    const catKey = cats.join('\u0000');
    if (catKey !== p.cats) {
      p.cats = catKey;
      const sel = $('#filter-category');
      sel.innerHTML = `<option value="">Any category</option>${cats.map((c) => `<option value="${esc(c)}">${esc(c)}</option>`).join('')}`;
      sel.value = ov.category;
    }

    const failing = pls.filter((x) => x.last_run && (x.last_run.state === 'failed')).length;
    const partial = pls.filter((x) => x.last_run && x.last_run.state === 'partial').length;
    const stale = pls.filter((x) => x.stale).length;
    const invalid = pls.filter((x) => !x.valid).length;
    const running = d.running || [];
    $('#ov-summary').innerHTML = [
      `<span class="chip"><b>${pls.length}</b> pipelines</span>`,
      `<span class="chip run"><b>${running.length}</b> running</span>`,
      `<span class="chip${failing ? ' bad' : ''}"><b>${failing}</b> last run failed</span>`,
      partial ? `<span class="chip warn"><b>${partial}</b> partial</span>` : '',
      `<span class="chip${stale ? ' bad' : ''}"><b>${stale}</b> stale</span>`,
      invalid ? `<span class="chip bad"><b>${invalid}</b> invalid</span>` : '',
    ].join('');
    $('#ov-sub').innerHTML = `Updated ${esc(fmtClock(d.generated_at))}${d.partial ? ' \u00b7 <span class="stale">this server has no /api/v1/overview: statistics are missing</span>' : ''}`;

    // Runs in progress.
    $('#running-count').textContent = running.length ? `${running.length} run${running.length === 1 ? '' : 's'}` : '';
    const items = running.map((r) => ({
      key: r.id,
      html: `<li><span class="pulse-dot" aria-hidden="true"></span><a href="${runHref(r.id)}" data-run="${esc(r.id)}" title="Run ${esc(r.id)}">${esc(r.pipeline)}</a>` +
        `<span class="mono faint small rid">${esc(r.id)}</span>` +
        `<span class="meta">${esc(r.trigger)}${r.parent_run_id ? ' (child)' : ''} \u00b7 <span title="Started ${esc(fmtAbs(r.created_at))}">${esc(fmtDur((now() - r.created_at) / 1000))}</span></span></li>`,
    }));
    patchRows($('#running'), items, p.runCache, '<li class="empty">Nothing is running.</li>');
    renderOverviewRows(p);
  }

  function overviewSortValue(x, key) {
    const lr = x.last_run;
    switch (key) {
      case 'name': return x.name;
      case 'next': return x.next_run ? Date.parse(x.next_run) : null;
      case 'last': return lr ? STATE_RANK[lr.state] ?? 9 : null;
      case 'when': return lr ? lr.ended_at ?? lr.created_at : null;
      case 'success7': return x.success_rate_7d;
      case 'success30': return x.success_rate_30d;
      case 'runs7': return x.runs_7d;
      case 'duration': return x.median_duration_s;
      case 'freshness': return x.freshness_s ?? (x.stale ? Infinity : null);
      default: return null;
    }
  }

  function renderOverviewRows(p) {
    if (!p.data) return;
    const name = ov.name.trim().toLowerCase();
    let rows = (p.data.pipelines || []).filter((x) =>
      (!name || x.name.toLowerCase().includes(name) || (x.description || '').toLowerCase().includes(name)) &&
      (!ov.state || (ov.state === 'none' ? !x.last_run : x.last_run && x.last_run.state === ov.state)) &&
      (!ov.category || (x.categories || []).includes(ov.category)));
    const key = ov.sort;
    const dir = ov.dir;
    rows = rows.slice().sort((a, b) => {
      const va = overviewSortValue(a, key);
      const vb = overviewSortValue(b, key);
      if (va == null && vb == null) return a.name.localeCompare(b.name);
      if (va == null) return 1;
      if (vb == null) return -1;
      const c = typeof va === 'string' ? va.localeCompare(vb) : va - vb;
      return c ? c * dir : a.name.localeCompare(b.name);
    });
    const total = (p.data.pipelines || []).length;
    const empty = `<tr><td colspan="9" class="empty">${total ? 'No pipeline matches these filters.' : 'This project has no pipelines.'}</td></tr>`;
    patchRows($('#ov-body'), rows.map((x) => ({ key: x.name, html: overviewRow(x) })), p.rowCache, empty);
  }

  function rateCell(rate, ok, all, days) {
    if (rate == null) return `<span class="dash" title="No ended runs in ${days} days">${DASH}</span>`;
    const cls = rate >= 0.95 ? 'good' : rate >= 0.8 ? 'meh' : 'bad';
    const title = all != null ? `${Math.round(rate * all)} of ${all} ended runs in ${days} days succeeded` : `${days} days`;
    return `<span class="rate ${cls}" title="${esc(title)}">${fmtPct(rate)}</span>`;
  }

  function sparkline(durations) {
    const W = 84;
    const H = 20;
    if (!durations || !durations.length) return `<svg class="spark" width="${W}" height="${H}" aria-hidden="true"></svg>`;
    const max = Math.max(...durations.map((d) => d.seconds), 0.001);
    const bw = 3.2;
    const step = W / 20;
    const x0 = W - durations.length * step;
    let s = '';
    durations.forEach((d, i) => {
      const h = Math.max(2, (d.seconds / max) * (H - 2));
      s += `<rect class="bar st-${esc(d.state)}" x="${(x0 + i * step).toFixed(1)}" y="${(H - h).toFixed(1)}" width="${bw}" height="${h.toFixed(1)}" rx="0.8"><title>${esc(fmtAbs(d.created_at))} \u00b7 ${esc(d.state)} \u00b7 ${esc(fmtDur(d.seconds))}</title></rect>`;
    });
    return `<svg class="spark" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="Durations of the last ${durations.length} runs">` +
      `<line class="base" x1="0" x2="${W}" y1="${H - 0.5}" y2="${H - 0.5}"/>${s}</svg>`;
  }

  function overviewRow(x) {
    const lr = x.last_run;
    const nameCell = `<th scope="row" class="sticky-col" data-col="name"><a class="pname" href="${pipeHref(x.name)}">${esc(x.name)}</a>` +
      (x.valid ? '' : ` <span class="badge st-failed plain">invalid</span>`) +
      (x.valid ? (x.description ? `<span class="desc" title="${esc(x.description)}">${esc(x.description)}</span>` : '') :
        `<span class="err-line" title="${esc(x.error)}">${esc(firstLine(x.error))}</span>`) + '</th>';
    let sched = '<span class="muted">manual</span>';
    if (x.schedule) {
      const tz = x.timezone || 'UTC';
      sched = `<span class="sched" title="${esc(`${x.schedule} (${tz})`)}">${esc(x.schedule)}</span>`;
      if (x.next_run) {
        const t = Date.parse(x.next_run);
        sched += `<span class="sub">next <time datetime="${esc(x.next_run)}" title="${esc(`${fmtAbs(t)} local \u00b7 ${x.next_run} ${tz}`)}">${esc(fmtAgo(t))}</time></span>`;
      }
    }
    const last = lr
      ? `<a class="badge st-${esc(lr.state)}" href="${runHref(lr.id)}" title="Run ${esc(lr.id)} \u00b7 ${esc(lr.trigger)} \u00b7 ${esc(lr.logical_date)}">${esc(lr.state)}</a>`
      : `<span class="dash">${DASH}</span>`;
    const when = lr ? `${timeTag(lr.ended_at ?? lr.created_at)}<span class="sub">${esc(lr.trigger)}</span>` : '';
    let fresh;
    if (x.freshness_s == null) {
      fresh = x.stale ? `<span class="stale">never</span><span class="sub">SLA ${esc(fmtSpan(x.sla_seconds))}</span>` : `<span class="dash">${DASH}</span>`;
    } else {
      const title = `Last success ${fmtAbs(x.last_success_at)}${x.sla_seconds != null ? ` \u00b7 SLA ${fmtSpan(x.sla_seconds)}` : ''}`;
      fresh = `<span class="${x.stale ? 'stale' : 'fresh-ok'}" title="${esc(title)}">${esc(fmtSpan(x.freshness_s))}</span>` +
        (x.stale ? `<span class="sub stale">over SLA ${esc(fmtSpan(x.sla_seconds))}</span>` :
          x.sla_seconds != null ? `<span class="sub">SLA ${esc(fmtSpan(x.sla_seconds))}</span>` : '');
    }
    return `<tr data-pipeline="${esc(x.name)}" data-state="${lr ? esc(lr.state) : 'none'}"${x.stale ? ' data-stale="1"' : ''}>${nameCell}` +
      `<td data-col="schedule">${sched}</td>` +
      `<td data-col="last-state">${last}</td>` +
      `<td data-col="last-time" class="nowrap">${when}</td>` +
      `<td data-col="success7" class="num">${rateCell(x.success_rate_7d, null, x.runs_7d, 7)}</td>` +
      `<td data-col="success30" class="num">${rateCell(x.success_rate_30d, null, x.runs_30d, 30)}</td>` +
      `<td data-col="runs7" class="num" title="${esc(x.runs_30d != null ? `${x.runs_30d} in 30 days` : '')}">${x.runs_7d ?? DASH}</td>` +
      `<td data-col="duration" class="num"><div class="cell-dur"><span class="v">${esc(fmtDur(x.median_duration_s))}</span>${sparkline(x.durations)}</div></td>` +
      `<td data-col="freshness" class="nowrap">${fresh}</td></tr>`;
  }

  // ------------------------------------------------------------------ DAG layout
  const NODE_W = 178;
  const NODE_H = 40;
  const COL_GAP = 60;
  const ROW_GAP = 12;
  const DAG_PAD = 16;

  // Columns by `layer` (the server's) or, when absent, by longest path from the roots.
  function dagLayout(tasks) {
    const n = tasks.length;
    const index = new Map(tasks.map((t, i) => [t.id, i]));
    const parents = tasks.map((t) => (t.depends_on || []).map((d) => index.get(d)).filter((i) => i !== undefined));
    const children = tasks.map(() => []);
    parents.forEach((ps, i) => ps.forEach((pi) => children[pi].push(i)));
    let layer = tasks.map((t) => (Number.isInteger(t.layer) ? t.layer : null));
    if (layer.some((l) => l == null)) {
      layer = new Array(n).fill(-1);
      const state = new Uint8Array(n);
      const visit = (i) => {
        if (state[i] === 2) return layer[i];
        if (state[i] === 1) return 0; // a cycle: the file would not be valid anyway
        state[i] = 1;
        let l = 0;
        for (const pi of parents[i]) l = Math.max(l, visit(pi) + 1);
        state[i] = 2;
        layer[i] = l;
        return l;
      };
      for (let i = 0; i < n; i++) visit(i);
    }
    const ncols = n ? Math.max(...layer) + 1 : 0;
    const cols = Array.from({ length: ncols }, () => []);
    for (let i = 0; i < n; i++) cols[layer[i]].push(i);
    // Order inside columns: barycentres of neighbours, a few sweeps, to untangle edges.
    const pos = new Float64Array(n);
    const place = () => cols.forEach((c) => c.forEach((i, k) => { pos[i] = k; }));
    place();
    const sweep = (c, nb) => {
      const key = new Map();
      for (const i of c) {
        const ns = nb[i];
        key.set(i, ns.length ? ns.reduce((s, j) => s + pos[j], 0) / ns.length : pos[i]);
      }
      c.sort((a, b) => key.get(a) - key.get(b) || a - b);
      c.forEach((i, k) => { pos[i] = k; });
    };
    if (n <= 5000) {
      for (let round = 0; round < 2; round++) {
        for (let c = 1; c < ncols; c++) sweep(cols[c], parents);
        for (let c = ncols - 2; c >= 0; c--) sweep(cols[c], children);
      }
      for (let c = 1; c < ncols; c++) sweep(cols[c], parents);
    }
    const maxRows = Math.max(0, ...cols.map((c) => c.length));
    const height = DAG_PAD * 2 + maxRows * NODE_H + Math.max(0, maxRows - 1) * ROW_GAP;
    const width = DAG_PAD * 2 + ncols * NODE_W + Math.max(0, ncols - 1) * COL_GAP;
    const xy = new Array(n);
    cols.forEach((c, ci) => {
      const colH = c.length * NODE_H + Math.max(0, c.length - 1) * ROW_GAP;
      const top = DAG_PAD + (height - 2 * DAG_PAD - colH) / 2;
      c.forEach((i, k) => { xy[i] = [DAG_PAD + ci * (NODE_W + COL_GAP), top + k * (NODE_H + ROW_GAP)]; });
    });
    return { width: Math.max(width, 200), height: Math.max(height, 80), xy, parents };
  }

  function dagSvg(tasks, layout, states, runId, zoom) {
    if (!tasks.length) return '<p class="muted panel-body">No tasks to draw.</p>';
    const { width, height, xy, parents } = layout;
    let edges = '';
    tasks.forEach((t, i) => {
      const [x2, y2] = xy[i];
      for (const pi of parents[i]) {
        const [px, py] = xy[pi];
        const x1 = px + NODE_W;
        const y1 = py + NODE_H / 2;
        const ex = x2 - 2;
        const ey = y2 + NODE_H / 2;
        const dx = Math.max(24, (ex - x1) / 2);
        edges += `<path class="edge" data-from="${esc(tasks[pi].id)}" data-to="${esc(t.id)}" d="M${x1} ${y1}C${x1 + dx} ${y1} ${ex - dx} ${ey} ${ex} ${ey}" marker-end="url(#arr)"/>`;
      }
    });
    let nodes = '';
    tasks.forEach((t, i) => {
      const [x, y] = xy[i];
      const st = states ? states.get(t.id) || 'none' : 'none';
      const label = trunc(t.id, 22);
      const sub = `${t.kind}${st !== 'none' ? ` \u00b7 ${st}` : ''}${t.critical === false ? ' \u00b7 non-critical' : ''}`;
      const title = `${t.id}${t.name ? ` (${t.name})` : ''}\n${t.kind}: ${t.action || ''}${t.description ? `\n${t.description}` : ''}\nstate: ${st === 'none' ? 'not in this run' : st}`;
      const inner = `<title>${esc(title)}</title><rect class="box" width="${NODE_W}" height="${NODE_H}" rx="6"/>` +
        `<rect class="stripe" x="0.6" y="0.6" width="4" height="${NODE_H - 1.2}" rx="2"/>` +
        `<text class="t1" x="12" y="17">${esc(label)}</text><text class="t2" x="12" y="32">${esc(trunc(sub, 30))}</text>`;
      const link = runId && st !== 'none';
      nodes += `<g class="node st-${esc(st)}" data-task="${esc(t.id)}" data-state="${esc(st)}" transform="translate(${x} ${y})">` +
        (link ? `<a href="${runHref(runId, t.id)}" aria-label="${esc(`${t.id}: ${st}, open its log`)}">${inner}</a>` : inner) + '</g>';
    });
    return `<svg class="dag" width="${Math.round(width * zoom)}" height="${Math.round(height * zoom)}" viewBox="0 0 ${width} ${height}" role="group" aria-label="Task graph, ${tasks.length} tasks">` +
      '<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto"><path class="arrow" d="M0 0L10 5L0 10z"/></marker>' +
      '<marker id="arr-hi" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto"><path class="arrow-hi" d="M0 0L10 5L0 10z"/></marker></defs>' +
      `<g class="edges">${edges}</g><g class="nodes">${nodes}</g></svg>`;
  }

  // Highlights a node's edges while it is hovered or focused.
  function dagHighlight(root, id) {
    for (const el of root.querySelectorAll('.edge.hi')) { el.classList.remove('hi'); el.setAttribute('marker-end', 'url(#arr)'); }
    for (const el of root.querySelectorAll('.node.hi')) el.classList.remove('hi');
    if (id == null) return;
    const q = CSS.escape(id);
    for (const el of root.querySelectorAll(`.edge[data-from="${q}"], .edge[data-to="${q}"]`)) {
      el.classList.add('hi');
      el.setAttribute('marker-end', 'url(#arr-hi)');
      const other = el.dataset.from === id ? el.dataset.to : el.dataset.from;
      const g = root.querySelector(`g[data-task="${CSS.escape(other)}"]`);
      if (g) g.classList.add('hi');
    }
  }

  // ------------------------------------------------------------------ pipeline page
  function pipelinePage(name, query) {
    const p = startPage('pipeline');
    p.pipeline = name;
    p.runs = [];
    p.nextCursor = null;
    p.selected = query.get('run') || null;
    p.followLatest = !p.selected;
    p.detail = null;     // the selected run's detail
    p.zoom = 1;
    p.histCache = {};
    setTitle(name);
    setCrumbs([{ href: '#/', label: 'Overview' }, { label: name }]);
    main.innerHTML = `<div class="page-head"><div class="titles"><h1 tabindex="-1" class="mono">${esc(name)}</h1><p class="subtitle">Loading\u2026</p></div></div>`;

    const load = async () => {
      let def;
      let page;
      try {
        [def, page] = await Promise.all([
          api(`/pipelines/${enc(name)}`, { signal: p.ctrl.signal }),
          api(`/runs?pipeline=${enc(name)}&limit=${HISTORY_PAGE}`, { signal: p.ctrl.signal }),
        ]);
      } catch (e) {
        if (isAbort(e) || !alive(p)) return;
        errorPage(p, name, e.status === 404 ? new Error(`There is no pipeline named \u201c${name}\u201d.`) : e);
        return;
      }
      if (!alive(p)) return;
      p.runs = page.runs;
      p.nextCursor = page.next_cursor;
      if (p.followLatest) p.selected = p.runs[0] ? p.runs[0].id : null;
      // The selected run's states come before the first drawing, so the graph is drawn once.
      if (p.selected) {
        try {
          p.detail = await api(`/runs/${enc(p.selected)}`, { signal: p.ctrl.signal });
        } catch (e) {
          if (isAbort(e) || !alive(p)) return;
          say(`Cannot load run ${p.selected}: ${e.message}`, 'error');
        }
      }
      if (!alive(p)) return;
      p.def = def;
      p.layout = dagLayout(def.task_list || []);
      renderPipeline(p);
      markLoaded(p);
      p.poll.schedule();
    };

    // Faster while the run on display is running, so the graph keeps up with it.
    p.poll = poller(p, () => (p.detail && p.detail.run.state === 'running' ? RUN_POLL_MS : PIPELINE_POLL_MS), () => refreshPipeline(p));
    p.onVisible = () => p.poll.now();
    p.onChange = (e) => {
      if (e.target.id === 'run-select') {
        p.selected = e.target.value || null;
        p.followLatest = p.runs.length > 0 && p.selected === p.runs[0].id;
        history.replaceState(null, '', `${pipeHref(name)}${p.followLatest || !p.selected ? '' : `?run=${enc(p.selected)}`}`);
        loadSelectedRun(p);
      }
    };
    p.onSubmit = (e) => {
      if (e.target.id === 'trigger-form') submitTrigger(p, e);
    };
    p.onClick = (e) => {
      const z = e.target.closest('button[data-zoom]');
      if (z) {
        const wrap = $('#dag');
        const lay = p.layout;
        if (z.dataset.zoom === 'in') p.zoom = Math.min(2, p.zoom * 1.25);
        else if (z.dataset.zoom === 'out') p.zoom = Math.max(0.2, p.zoom / 1.25);
        else p.zoom = Math.min(1, Math.max(0.2, Math.min((wrap.clientWidth - 4) / lay.width, (window.innerHeight * 0.7) / lay.height)));
        const svg = $('#dag svg');
        if (svg) {
          svg.setAttribute('width', Math.round(lay.width * p.zoom));
          svg.setAttribute('height', Math.round(lay.height * p.zoom));
        }
        return;
      }
      if (e.target.closest('#history-more')) loadMoreHistory(p);
    };
    const hi = (e) => {
      const g = e.target.closest && e.target.closest('#dag g[data-task]');
      if (g) dagHighlight($('#dag'), g.dataset.task);
    };
    const unhi = (e) => {
      const g = e.target.closest && e.target.closest('#dag g[data-task]');
      if (g && !(e.relatedTarget && g.contains(e.relatedTarget))) dagHighlight($('#dag'), null);
    };
    p.onOver = hi;
    p.onOut = unhi;
    p.onFocusIn = hi;
    p.onFocusOut = unhi;
    load();
    afterRender();
  }

  function renderPipeline(p) {
    const d = p.def;
    const fact = (k, v) => `<div><dt>${esc(k)}</dt><dd>${v}</dd></div>`;
    const next = (d.next_runs || [])[0];
    const facts = [
      fact('Schedule', d.schedule ? `<code>${esc(d.schedule)}</code>${d.timezone ? ` <span class="muted">${esc(d.timezone)}</span>` : ''}` : '<span class="muted">manual</span>'),
      next ? fact('Next run', `<time datetime="${esc(next)}" title="${esc((d.next_runs || []).join('\n'))}">${esc(fmtAgo(Date.parse(next)))}</time> <span class="muted">${esc(fmtAbs(Date.parse(next)))}</span>`) : '',
      d.sla_seconds != null ? fact('SLA', esc(fmtSpan(d.sla_seconds))) : '',
      fact('Tasks', String(d.tasks ?? (d.task_list || []).length)),
      d.max_active_runs != null ? fact('Max active runs', String(d.max_active_runs)) : '',
      d.catchup ? fact('Catch-up', 'yes') : '',
      d.webhook ? fact('Webhook', 'enabled') : '',
      fact('File', `<code>${esc(d.file)}</code>`),
    ].join('');
    const invalid = d.valid ? '' : `<div class="notice error" role="alert"><b>This pipeline file is not valid.</b><pre class="error-text">${esc(d.error)}</pre></div>`;
    const trigger = isOperator() ? triggerForm(d) : paramsPanel(d);
    replaceMain(`
      <div class="page-head">
        <div class="titles">
          <div class="title-line"><h1 tabindex="-1">${esc(d.name)}</h1>${d.valid ? '' : '<span class="badge st-failed plain">invalid</span>'}</div>
          ${d.description ? `<p class="subtitle">${esc(d.description)}</p>` : ''}
          <dl class="facts">${facts}</dl>
        </div>
      </div>
      ${invalid}
      <div class="grid-2">
        <div>
          <section class="panel" aria-labelledby="dag-h">
            <div class="panel-head">
              <h2 id="dag-h">Graph</h2>
              <div class="inline-field"><label for="run-select">Run</label>
                <select id="run-select" class="input"></select></div>
              <div class="btn-group" role="group" aria-label="Zoom">
                <button type="button" class="btn btn-small" data-zoom="out" aria-label="Zoom out">\u2212</button>
                <button type="button" class="btn btn-small" data-zoom="fit">Fit</button>
                <button type="button" class="btn btn-small" data-zoom="in" aria-label="Zoom in">+</button>
              </div>
            </div>
            <div id="dag" class="dag-wrap"></div>
            <div class="legend" aria-hidden="true">${['success', 'running', 'retrying', 'queued', 'pending', 'failed', 'skipped', 'cancelled'].map((s) => `<span><i class="st-${s}"></i>${s}</span>`).join('')}<span><i></i>not in run</span></div>
            <p id="dag-status" class="sr-only" aria-live="polite"></p>
          </section>
          <section class="panel" aria-labelledby="hist-h">
            <div class="panel-head"><h2 id="hist-h">Run history</h2><span class="hint" id="hist-hint"></span></div>
            <div id="history" class="table-wrap tall"></div>
          </section>
          <section class="panel">
            <details id="defs">
              <summary class="panel-head"><h2>Task definitions</h2><span class="hint">${(d.task_list || []).length} tasks</span></summary>
              <div class="table-wrap tall">${taskDefsTable(d)}</div>
            </details>
          </section>
          <section class="panel" aria-labelledby="src-h">
            <div class="panel-head"><h2 id="src-h">Pipeline file</h2><span class="hint"><code>${esc(d.file)}</code> \u00b7 read-only</span></div>
            <pre id="source" class="source" tabindex="0" aria-labelledby="src-h">${esc(d.source || '')}</pre>
          </section>
        </div>
        <div>${trigger}${workflowsPanel(d)}</div>
      </div>`);
    renderRunSelect(p);
    // A graph a little wider than its box starts zoomed to fit; a big one scrolls at full size.
    const fit = ($('#dag').clientWidth - 4) / p.layout.width;
    if (fit < 1 && fit >= 0.6) p.zoom = fit;
    renderDag(p);
    renderHistory(p);
  }

  function renderRunSelect(p) {
    const sel = $('#run-select');
    if (!sel) return;
    const runs = p.runs.slice();
    if (p.selected && !runs.some((r) => r.id === p.selected) && p.detail && p.detail.run.id === p.selected) runs.push(p.detail.run);
    if (!runs.length) {
      sel.innerHTML = '<option value="">No runs yet</option>';
      sel.disabled = true;
      return;
    }
    sel.disabled = false;
    const html = runs.map((r, i) => `<option value="${esc(r.id)}">${i === 0 ? 'Latest: ' : ''}${esc(fmtAbs(r.created_at).slice(5, 16))} \u00b7 ${esc(r.state)} \u00b7 ${esc(trunc(r.id, 24))}</option>`).join('');
    if (sel.dataset.html !== html) {
      sel.innerHTML = html;
      sel.dataset.html = html;
    }
    sel.value = p.selected || '';
  }

  function runStates(detail) {
    if (!detail) return null;
    return new Map(detail.tasks.map((t) => [t.task_id, t.state]));
  }

  function renderDag(p) {
    const wrap = $('#dag');
    if (!wrap) return;
    const tasks = p.def.task_list || [];
    const states = p.detail && p.detail.run.id === p.selected ? runStates(p.detail) : null;
    const sig = `${p.selected}|${states ? [...states.values()].join(',') : ''}|${p.zoom}|${tasks.length}`;
    if (wrap.dataset.sig === sig) return;
    wrap.dataset.sig = sig;
    setHtml(wrap, dagSvg(tasks, p.layout, states, states ? p.selected : null, p.zoom));
    const st = $('#dag-status');
    if (st && p.detail) st.textContent = `Showing run ${p.selected}: ${p.detail.run.state}`;
  }

  async function loadSelectedRun(p) {
    if (!p.selected) {
      p.detail = null;
      renderDag(p);
      return;
    }
    const id = p.selected;
    try {
      const d = await api(`/runs/${enc(id)}`, { signal: p.ctrl.signal });
      if (!alive(p) || p.selected !== id) return;
      p.detail = d;
    } catch (e) {
      if (isAbort(e) || !alive(p)) return;
      p.detail = null;
      say(`Cannot load run ${id}: ${e.message}`, 'error');
    }
    renderRunSelect(p);
    renderDag(p);
  }

  async function refreshPipeline(p) {
    if (!p.def) return;
    const page = await api(`/runs?pipeline=${enc(p.pipeline)}&limit=${HISTORY_PAGE}`, { signal: p.ctrl.signal });
    if (!alive(p)) return;
    const fresh = new Set(page.runs.map((r) => r.id));
    const older = p.runs.filter((r) => !fresh.has(r.id) && (!page.runs.length || r.created_at < page.runs[page.runs.length - 1].created_at));
    const hadMore = p.runs.length > HISTORY_PAGE;
    p.runs = page.runs.concat(hadMore ? older : []);
    if (!hadMore) p.nextCursor = page.next_cursor;
    const newest = p.runs[0] ? p.runs[0].id : null;
    let reload = false;
    if (p.followLatest && newest && newest !== p.selected) {
      p.selected = newest;
      reload = true;
    }
    const sel = p.runs.find((r) => r.id === p.selected);
    if (sel && (!p.detail || p.detail.run.id !== sel.id || sel.state === 'running' || p.detail.run.state !== sel.state)) reload = true;
    renderRunSelect(p);
    renderHistory(p);
    if (reload) await loadSelectedRun(p);
    // The file may have been edited: redraw what comes from it (not the trigger form).
    p.defTick = (p.defTick || 0) + 1;
    if (p.defTick % 6 === 0) {
      const def = await api(`/pipelines/${enc(p.pipeline)}`, { signal: p.ctrl.signal });
      if (!alive(p) || def.source === p.def.source) return;
      p.def = def;
      p.layout = dagLayout(def.task_list || []);
      const wrap = $('#dag');
      if (wrap) delete wrap.dataset.sig;
      renderDag(p);
      $('#source').textContent = def.source || '';
      $('#defs .table-wrap').innerHTML = taskDefsTable(def);
      say(`${p.pipeline}: the pipeline file changed; the graph was redrawn`);
    }
  }

  function runDuration(r) {
    const end = r.ended_at ?? (r.state === 'running' ? now() : null);
    return end == null ? null : Math.max(0, end - r.created_at) / 1000;
  }

  function renderHistory(p) {
    const el = $('#history');
    if (!el) return;
    const runs = p.runs;
    $('#hist-hint').textContent = runs.length ? `${runs.length} most recent` : '';
    if (!runs.length) {
      el.innerHTML = '<p class="muted panel-body">No runs yet.</p>';
      p.histCache = {};
      return;
    }
    if (!$('#history-body')) {
      el.innerHTML = `<table class="data"><caption class="sr-only">Recent runs with their durations</caption>
        <thead><tr><th scope="col">Run</th><th scope="col">State</th><th scope="col">Trigger</th><th scope="col">Logical date</th><th scope="col">Started</th><th scope="col" class="num">Duration</th><th scope="col">Duration bar</th></tr></thead>
        <tbody id="history-body"></tbody></table><div class="panel-body" id="history-foot"></div>`;
      p.histCache = {};
    }
    const max = Math.max(1, ...runs.map((r) => runDuration(r) || 0));
    const items = runs.map((r) => {
      const dur = runDuration(r);
      const w = dur == null ? 0 : Math.max(0.6, (dur / max) * 100);
      const bar = `<svg class="hbar" width="160" height="12" viewBox="0 0 100 12" preserveAspectRatio="none" aria-hidden="true"><rect class="track" width="100" height="12" rx="2"/><rect class="bar st-${esc(r.state)}" width="${w.toFixed(2)}" height="12" rx="2"/></svg>`;
      return {
        key: r.id,
        html: `<tr data-run-row="${esc(r.id)}" data-state="${esc(r.state)}"${r.id === p.selected ? ' class="selected"' : ''}>` +
          `<td class="mono nowrap"><a href="${runHref(r.id)}" data-run="${esc(r.id)}">${esc(r.id)}</a></td>` +
          `<td>${badge(r.state)}</td><td>${esc(r.trigger)}</td><td class="nowrap" title="${esc(r.logical_date)}">${esc(fmtLogical(r.logical_date))}</td>` +
          `<td class="nowrap">${timeTag(r.created_at)}</td><td class="num">${esc(fmtDur(dur))}</td><td>${bar}</td></tr>`,
      };
    });
    patchRows($('#history-body'), items, p.histCache, '');
    const foot = $('#history-foot');
    const more = p.nextCursor ? '<button type="button" class="btn btn-small" id="history-more">Show older runs</button>' : '';
    if (foot.dataset.html !== more) { foot.dataset.html = more; foot.innerHTML = more; }
  }

  async function loadMoreHistory(p) {
    if (!p.nextCursor) return;
    const btn = $('#history-more');
    if (btn) btn.disabled = true;
    try {
      const page = await api(`/runs?pipeline=${enc(p.pipeline)}&limit=${HISTORY_PAGE}&cursor=${enc(p.nextCursor)}`, { signal: p.ctrl.signal });
      if (!alive(p)) return;
      const have = new Set(p.runs.map((r) => r.id));
      p.runs = p.runs.concat(page.runs.filter((r) => !have.has(r.id)));
      p.nextCursor = page.next_cursor;
      renderRunSelect(p);
      renderHistory(p);
    } catch (e) {
      if (!isAbort(e)) say(e.message, 'error');
    } finally {
      if (btn && btn.isConnected) btn.disabled = false;
    }
  }

  function taskDefsTable(d) {
    const tasks = d.task_list || [];
    if (!tasks.length) return '<p class="muted panel-body">No tasks.</p>';
    const rows = tasks.map((t) => `<tr><td class="mono">${esc(t.id)}${t.name ? `<span class="sub">${esc(t.name)}</span>` : ''}</td>` +
      `<td>${esc(t.kind)}</td><td class="mono small" title="${esc(t.action)}">${esc(trunc(t.action || '', 60))}</td>` +
      `<td class="mono small">${(t.depends_on || []).map(esc).join(', ') || `<span class="dash">${DASH}</span>`}</td>` +
      `<td class="small">${esc(t.trigger)}</td><td class="small">${esc(t.category || '')}</td>` +
      `<td class="small">${t.critical ? 'yes' : 'no'}</td><td class="num">${t.retries}</td>` +
      `<td class="num">${t.timeout_seconds != null ? esc(fmtDur(t.timeout_seconds)) : DASH}</td></tr>`).join('');
    return `<table class="data"><caption class="sr-only">Task definitions</caption><thead><tr><th scope="col">Task</th><th scope="col">Kind</th><th scope="col">Action</th><th scope="col">Depends on</th><th scope="col">Trigger</th><th scope="col">Category</th><th scope="col">Critical</th><th scope="col" class="num">Retries</th><th scope="col" class="num">Timeout</th></tr></thead><tbody>${rows}</tbody></table>`;
  }

  function paramInput(pm) {
    const id = `param-${pm.name}`;
    const def = pm.default;
    const required = def == null;
    const defText = def == null ? '' : typeof def === 'string' ? def : JSON.stringify(def);
    const help = pm.description ? `<span class="help" id="${esc(id)}-help">${esc(pm.description)}</span>` : '';
    const described = pm.description ? ` aria-describedby="${esc(id)}-help"` : '';
    const label = `<label for="${esc(id)}">${esc(pm.name)} <span class="faint">${esc(pm.type)}</span>${required ? ' <span class="req">required</span>' : ''}</label>`;
    const attrs = `id="${esc(id)}" name="${esc(id)}" data-param="${esc(pm.name)}" data-type="${esc(pm.type)}"${required ? ' required' : ''}${described}`;
    if (pm.choices && pm.choices.length) {
      const opts = (required ? '<option value="">Choose\u2026</option>' : '') +
        pm.choices.map((c) => `<option value="${esc(c)}"${String(c) === defText ? ' selected' : ''}>${esc(c)}</option>`).join('');
      return `<div class="field">${label}<select class="input" ${attrs}>${opts}</select>${help}</div>`;
    }
    if (pm.type === 'boolean') {
      const on = def === true || defText === 'true';
      return `<div class="field"><div class="field-check"><input type="checkbox" value="true" ${attrs.replace(' required', '')}${on ? ' checked' : ''}>` +
        `<label for="${esc(id)}">${esc(pm.name)} <span class="faint">boolean</span></label></div>${help}</div>`;
    }
    const type = { integer: 'number', number: 'number', date: 'date' }[pm.type] || 'text';
    const extra = pm.type === 'integer' ? ' step="1" inputmode="numeric"' : pm.type === 'number' ? ' step="any" inputmode="decimal"' : pm.type === 'date' ? '' : ' spellcheck="false"';
    return `<div class="field">${label}<input class="input" type="${type}"${extra} value="${esc(defText)}" ${attrs}>${help}</div>`;
  }

  function triggerForm(d) {
    const params = d.params || [];
    const wf = d.workflow_list || [];
    const disabled = d.valid ? '' : ' disabled';
    return `<section class="panel" aria-labelledby="trig-h">
      <div class="panel-head"><h2 id="trig-h">Start a run</h2></div>
      <form id="trigger-form" class="panel-body form-grid">
        ${params.length ? params.map(paramInput).join('') : '<p class="muted small">This pipeline declares no params.</p>'}
        ${wf.length ? `<div class="field"><label for="trigger-workflow">Tasks</label><select id="trigger-workflow" name="workflow" class="input"><option value="">All tasks</option>${wf.map((w) => `<option value="${esc(w.name)}">Workflow ${esc(w.name)}${w.tasks ? ` (${w.tasks.length} tasks)` : ''}</option>`).join('')}</select></div>` : ''}
        <div class="field"><label for="logical-date">Logical date <span class="faint">optional</span></label>
          <input id="logical-date" name="logical_date" type="date" class="input" aria-describedby="logical-date-help">
          <span class="help" id="logical-date-help">Leave empty for now; pick a past day to backfill it.</span></div>
        <p class="form-error" id="trigger-error" role="alert"></p>
        <div class="form-actions"><button type="submit" id="trigger-submit" class="btn btn-primary"${disabled}>Run now</button></div>
      </form></section>`;
  }

  function paramsPanel(d) {
    const params = d.params || [];
    if (!params.length) return '';
    return `<section class="panel" aria-labelledby="params-h"><div class="panel-head"><h2 id="params-h">Params</h2><span class="hint">runs need an operator token</span></div>
      <div class="panel-body"><dl class="kv">${params.map((pm) => `<dt>${esc(pm.name)} <span class="faint">${esc(pm.type)}</span></dt><dd>${pm.default == null ? '<span class="req">required</span>' : esc(typeof pm.default === 'string' ? pm.default : JSON.stringify(pm.default))}${pm.choices && pm.choices.length ? ` <span class="faint">(${pm.choices.map(esc).join(' | ')})</span>` : ''}${pm.description ? `<span class="sub">${esc(pm.description)}</span>` : ''}</dd>`).join('')}</dl></div></section>`;
  }

  function workflowsPanel(d) {
    const wf = d.workflow_list || [];
    if (!wf.length) return '';
    return `<section class="panel" aria-labelledby="wf-h"><div class="panel-head"><h2 id="wf-h">Workflows</h2></div>
      <div class="panel-body"><dl class="kv">${wf.map((w) => `<dt>${esc(w.name)}</dt><dd>${(w.tasks || []).map(esc).join(', ')}${w.description ? `<span class="sub">${esc(w.description)}</span>` : ''}</dd>`).join('')}</dl></div></section>`;
  }

  async function submitTrigger(p, e) {
    e.preventDefault();
    const form = e.target;
    const errEl = $('#trigger-error');
    const btn = $('#trigger-submit');
    errEl.textContent = '';
    if (!form.reportValidity()) return;
    const params = {};
    for (const el of form.querySelectorAll('[data-param]')) {
      const name = el.dataset.param;
      const type = el.dataset.type;
      if (el.type === 'checkbox') { params[name] = el.checked; continue; }
      const v = el.value.trim();
      if (v === '') continue; // the declared default applies
      if (type === 'integer') {
        if (!/^[-+]?\d+$/.test(v)) { errEl.textContent = `${name}: a whole number is needed.`; el.focus(); return; }
        params[name] = Number.parseInt(v, 10);
      } else if (type === 'number') {
        const n = Number(v);
        if (!Number.isFinite(n)) { errEl.textContent = `${name}: a number is needed.`; el.focus(); return; }
        params[name] = n;
      } else {
        params[name] = v;
      }
    }
    const body = { params };
    const ld = form.elements.logical_date && form.elements.logical_date.value;
    if (ld) body.logical_date = ld;
    const wf = form.elements.workflow && form.elements.workflow.value;
    if (wf) body.workflow = wf;
    btn.disabled = true;
    btn.textContent = 'Starting\u2026';
    try {
      const res = await api(`/pipelines/${enc(p.pipeline)}/runs`, { method: 'POST', body, signal: p.ctrl.signal });
      say(`Started run ${res.run_id}`);
      location.hash = runHref(res.run_id);
    } catch (err) {
      if (isAbort(err) || !alive(p)) return;
      errEl.textContent = err.message;
      btn.disabled = false;
      btn.textContent = 'Run now';
    }
  }

  // ------------------------------------------------------------------ run page
  function runPage(id, query) {
    const p = startPage('run');
    p.runId = id;
    p.task = query.get('task') || null;
    p.scrollToLog = !!p.task;
    p.attempt = null;     // null: the latest attempt
    p.detail = null;
    p.rowCache = {};
    p.filter = { text: '', state: '' };
    p.log = null;
    p.actionUntil = 0;    // keep polling until then after an action, even if the run looks ended
    setTitle(`Run ${id}`);
    setCrumbs([{ href: '#/', label: 'Overview' }, { label: `run ${id}` }]);
    main.innerHTML = `<div class="page-head"><div class="titles"><h1 tabindex="-1">Run <span class="mono">${esc(id)}</span></h1><p class="subtitle">Loading\u2026</p></div></div>`;

    const refresh = async () => {
      let d;
      try {
        d = await api(`/runs/${enc(id)}`, { signal: p.ctrl.signal });
      } catch (e) {
        if (isAbort(e) || !alive(p)) return;
        if (!p.detail) {
          p.gone = e.status === 404;
          errorPage(p, `Run ${id}`, p.gone ? new Error(`There is no run ${id}.`) : e);
        }
        else $('#run-refresh').textContent = `Refresh failed: ${e.message}`;
        return;
      }
      if (!alive(p)) return;
      const prev = p.detail;
      p.detail = d;
      if (!prev) {
        renderRunShell(p);
        p.ganttWidth = $('#gantt').clientWidth; // one layout read, while the page is still small
      }
      renderRun(p, prev);
      markLoaded(p);
    };
    p.poll = poller(p, () => {
      if (!p.detail) return p.gone ? null : RUN_POLL_MS * 2;
      return p.detail.run.state === 'running' || now() < p.actionUntil ? RUN_POLL_MS : null;
    }, refresh);
    p.onVisible = () => p.poll.now();
    p.selectTask = (task, attempt = null, user = true) => {
      if (!task) return;
      p.task = task;
      p.attempt = attempt;
      history.replaceState(null, '', runHref(id, task));
      renderTaskRows(p);
      renderGantt(p);
      startLog(p);
      if (user) {
        const panel = $('#log-panel');
        if (panel) panel.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
      }
    };
    p.onClick = (e) => {
      const t = e.target;
      const logs = t.closest('[data-logs]');
      if (logs) { p.selectTask(logs.dataset.logs); return; }
      if (t.matches && t.matches('#gantt rect.rows') && p.ganttRows) {
        // A click on a row's empty part: which row, from where the click landed.
        const g = p.ganttRows;
        const i = Math.floor((e.clientY - t.getBoundingClientRect().top) / g.row);
        if (g.ids[i]) p.selectTask(g.ids[i], null);
        return;
      }
      const bar = t.closest('#gantt rect[data-attempt], #gantt [data-row]');
      if (bar) {
        const task = bar.dataset.task || bar.dataset.row;
        const n = bar.dataset.attempt ? Number(bar.dataset.attempt) : null;
        p.selectTask(task, n);
        return;
      }
      const rt = t.closest('button[data-retry-task]');
      if (rt) { runAction(p, rt, `/runs/${enc(id)}/tasks/${enc(rt.dataset.retryTask)}/retry`, `Retrying ${rt.dataset.retryTask} and what depends on it`); return; }
      if (t.closest('#cancel-run')) { runAction(p, $('#cancel-run'), `/runs/${enc(id)}/cancel`, 'Cancel requested'); return; }
      if (t.closest('#retry-run')) { runAction(p, $('#retry-run'), `/runs/${enc(id)}/retry`, 'Retrying the tasks that did not succeed'); return; }
      if (t.closest('#download-report')) { downloadReport(p); return; }
      if (t.closest('#log-bottom')) { const v = $('#log-view'); v.scrollTop = v.scrollHeight; }
    };
    p.onInput = (e) => {
      if (e.target.id === 'task-filter') { p.filter.text = e.target.value; renderTaskRows(p); }
    };
    p.onChange = (e) => {
      if (e.target.id === 'task-state-filter') { p.filter.state = e.target.value; renderTaskRows(p); }
      if (e.target.id === 'log-attempt') { p.attempt = e.target.value ? Number(e.target.value) : null; startLog(p); }
    };
    p.onResize = () => renderGantt(p, true);
    p.poll.now();
    afterRender();
  }

  function renderRunShell(p) {
    const { run } = p.detail;
    setTitle(`Run ${run.id} \u00b7 ${run.pipeline}`);
    setCrumbs([{ href: '#/', label: 'Overview' }, { href: pipeHref(run.pipeline), label: run.pipeline }, { label: `run ${run.id}` }]);
    const stateOpts = TASK_STATES.map((s) => `<option value="${s}">${s}</option>`).join('');
    replaceMain(`
      <div class="page-head">
        <div class="titles">
          <div class="title-line"><h1 tabindex="-1">Run <span class="mono">${esc(run.id)}</span></h1><span id="run-state" class="badge big st-${esc(run.state)}">${esc(run.state)}</span></div>
          <p class="subtitle">Pipeline <a class="mono" href="${pipeHref(run.pipeline)}">${esc(run.pipeline)}</a> \u00b7 ${esc(run.trigger)} \u00b7 logical date <span class="mono" title="${esc(run.logical_date)}">${esc(fmtLogical(run.logical_date))}</span>${run.parent_run_id ? ` \u00b7 child of <a class="mono" href="${runHref(run.parent_run_id)}">${esc(run.parent_run_id)}</a>${run.parent_task_id ? ` (task <span class="mono">${esc(run.parent_task_id)}</span>)` : ''}` : ''}</p>
          <dl class="facts" id="run-facts"></dl>
          <div id="run-params"></div>
        </div>
        <div class="actions" id="run-actions"></div>
      </div>
      <div id="run-error"></div>
      <section class="panel" aria-labelledby="gantt-h">
        <div class="panel-head"><h2 id="gantt-h">Timeline</h2><span class="hint" id="gantt-hint"></span></div>
        <div id="gantt" class="gantt-wrap"></div>
      </section>
      <section class="panel" aria-labelledby="tasks-h">
        <div class="panel-head">
          <h2 id="tasks-h">Tasks</h2><span class="hint" id="tasks-hint"></span>
          <div class="filters">
            <div class="field"><label for="task-filter" class="sr-only">Filter tasks</label><input id="task-filter" class="input" type="search" placeholder="Filter tasks" spellcheck="false" autocomplete="off"></div>
            <div class="field"><label for="task-state-filter" class="sr-only">Task state</label><select id="task-state-filter" class="input"><option value="">All states</option>${stateOpts}</select></div>
          </div>
        </div>
        <div class="table-wrap tall">
          <table id="tasks" class="data">
            <caption class="sr-only">Tasks of this run</caption>
            <colgroup><col class="c-task"><col class="c-state"><col class="c-n"><col class="c-time"><col class="c-dur"><col class="c-rows"><col class="c-rows"><col class="c-mem"><col class="c-err"><col class="c-act"></colgroup>
            <thead><tr><th scope="col" class="sticky-col">Task</th><th scope="col">State</th><th scope="col" class="num">Attempts</th><th scope="col">Started</th><th scope="col" class="num">Duration</th><th scope="col" class="num">Rows in</th><th scope="col" class="num">Rows out</th><th scope="col" class="num">Peak memory</th><th scope="col">Error</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
            <tbody id="tasks-body"></tbody>
          </table>
        </div>
      </section>
      <section class="panel" id="log-panel" aria-labelledby="log-h">
        <div class="panel-head log-head">
          <h2 id="log-h">Log</h2>
          <span class="mono" id="log-task"></span>
          <div class="field"><label for="log-attempt" class="sr-only">Attempt</label><select id="log-attempt" class="input" hidden></select></div>
          <span id="log-live" class="live" hidden><span class="pulse-dot" aria-hidden="true"></span>following</span>
          <span id="log-note" class="log-note" aria-live="polite"></span>
          <button type="button" id="log-bottom" class="btn btn-small btn-quiet">Jump to end</button>
        </div>
        <div id="log-error"></div>
        <pre id="log-view" class="log" tabindex="0" aria-labelledby="log-h log-task"></pre>
      </section>
      <p class="faint small" id="run-refresh"></p>`);
  }

  function renderRun(p, prev) {
    const { run, tasks, attempts } = p.detail;
    const ended = run.state !== 'running';
    const st = $('#run-state');
    if (st.textContent !== run.state) {
      st.textContent = run.state;
      st.className = `badge big st-${run.state}`;
      if (prev) say(`Run ${run.id} is now ${run.state}`, run.state === 'failed' ? 'error' : '');
    }
    p.attemptsByTask = new Map();
    for (const a of attempts) {
      let list = p.attemptsByTask.get(a.task_id);
      if (!list) p.attemptsByTask.set(a.task_id, (list = []));
      list.push(a);
    }
    p.taskById = new Map(tasks.map((t) => [t.task_id, t]));
    const counts = {};
    for (const t of tasks) counts[t.state] = (counts[t.state] || 0) + 1;
    const end = run.ended_at ?? now();
    const fact = (k, v) => `<div><dt>${esc(k)}</dt><dd>${v}</dd></div>`;
    $('#run-facts').innerHTML = [
      fact('Created', `<span title="${esc(fmtAbs(run.created_at))}">${esc(fmtAbs(run.created_at))}</span>`),
      fact('Ended', run.ended_at ? esc(fmtAbs(run.ended_at)) : '<span class="muted">running</span>'),
      fact('Duration', esc(fmtDur((end - run.created_at) / 1000))),
      fact('Tasks', TASK_STATES.filter((s) => counts[s]).map((s) => `<span class="badge st-${s} plain">${counts[s]} ${s}</span>`).join(' ') || '0'),
    ].join('');
    const op = isOperator();
    const actions = [
      op && !ended ? '<button type="button" id="cancel-run" class="btn btn-danger">Cancel run</button>' : '',
      op && ended && run.state !== 'success' ? '<button type="button" id="retry-run" class="btn">Retry run</button>' : '',
      '<button type="button" id="download-report" class="btn">Download report</button>',
    ].join('');
    const actEl = $('#run-actions');
    if (actEl.dataset.html !== actions) {
      actEl.dataset.html = actions;
      setHtml(actEl, actions);
    }
    const errHtml = run.error ? `<div class="notice error" role="alert"><pre class="error-text">${esc(run.error)}</pre></div>` : '';
    const errEl = $('#run-error');
    if (errEl.dataset.html !== errHtml) { errEl.dataset.html = errHtml; errEl.innerHTML = errHtml; }
    const params = run.params && typeof run.params === 'object' ? Object.entries(run.params) : [];
    const paramsHtml = params.length
      ? `<dl class="facts params" aria-label="Params"><div><dt>Params</dt><dd></dd></div>${params.map(([k, v]) => `<div><dt class="mono">${esc(k)}</dt><dd class="mono">${esc(typeof v === 'string' ? v : JSON.stringify(v))}</dd></div>`).join('')}</dl>`
      : '';
    const pe = $('#run-params');
    if (pe.dataset.html !== paramsHtml) { pe.dataset.html = paramsHtml; pe.innerHTML = paramsHtml; }
    $('#run-refresh').textContent = ended ? '' : `Refreshing every ${RUN_POLL_MS / 1000} s \u00b7 last ${fmtClock(now())}`;

    // The task whose log shows: the asked one, else a running one, else the first failure.
    if (!p.task || !p.taskById.has(p.task)) {
      const pick = tasks.find((t) => t.state === 'running' || t.state === 'retrying') ||
        tasks.find((t) => t.state === 'failed') || tasks.find((t) => t.attempts > 0) || tasks[0];
      if (pick && (!p.task || !p.taskById.has(p.task))) p.task = pick.task_id;
    }
    $('#tasks-hint').textContent = `${tasks.length} task${tasks.length === 1 ? '' : 's'}`;
    renderTaskRows(p);
    renderGantt(p);
    // Start the log the first time, and again when a newer attempt of the shown task starts.
    if (p.task) {
      const latest = latestStarted(p, p.task);
      if (!p.log || p.log.task !== p.task) startLog(p);
      else if (p.attempt == null && !p.log.live && !p.log.loading && latest && latest.number !== p.log.attempt) startLog(p);
      else updateLogHeader(p);
    }
    if (p.scrollToLog) {
      p.scrollToLog = false;
      const panel = $('#log-panel');
      if (panel) panel.scrollIntoView({ block: 'start' });
    }
  }

  function latestStarted(p, task) {
    const list = (p.attemptsByTask && p.attemptsByTask.get(task)) || [];
    let best = null;
    for (const a of list) if (a.state !== 'queued' && (!best || a.number > best.number)) best = a;
    return best;
  }

  function taskMetrics(p, t) {
    let m = t.metrics;
    if (!m || (m.rows_in == null && m.rows_out == null)) {
      const list = p.attemptsByTask.get(t.task_id) || [];
      for (let i = list.length - 1; i >= 0; i--) {
        const am = list[i].metrics;
        if (am && (am.rows_in != null || am.rows_out != null)) { m = am; break; }
      }
    }
    return m || {};
  }

  function renderTaskRows(p) {
    const body = $('#tasks-body');
    if (!body || !p.detail) return;
    const { run, tasks } = p.detail;
    const ended = run.state !== 'running';
    const op = isOperator();
    const text = p.filter.text.trim().toLowerCase();
    const shown = tasks.filter((t) => (!text || t.task_id.toLowerCase().includes(text)) && (!p.filter.state || t.state === p.filter.state));
    const items = shown.map((t) => {
      const list = p.attemptsByTask.get(t.task_id) || [];
      let peak = null;
      for (const a of list) if (a.peak_rss_kb != null) peak = Math.max(peak ?? 0, a.peak_rss_kb);
      const m = taskMetrics(p, t);
      const end = t.ended_at ?? (t.started_at != null && !TASK_FINAL.has(t.state) ? now() : null);
      const dur = t.started_at != null && end != null ? (end - t.started_at) / 1000 : null;
      const sel = t.task_id === p.task;
      const err = t.error ? `<span class="cell-error" title="${esc(t.error)}">${esc(firstLine(t.error))}</span>` : '';
      return {
        key: t.task_id,
        html: `<tr data-task="${esc(t.task_id)}" data-state="${esc(t.state)}"${sel ? ' class="selected"' : ''}>` +
          `<th scope="row" class="sticky-col"><button type="button" class="btn-link mono" data-logs="${esc(t.task_id)}" aria-pressed="${sel}" title="Show the log of ${esc(t.task_id)}">${esc(t.task_id)}</button>${t.critical === false ? '<span class="sub">non-critical</span>' : ''}` +
          `${t.output && typeof t.output === 'object' && typeof t.output.run_id === 'string' ? `<a class="sub" href="${runHref(t.output.run_id)}">child run \u2192</a>` : ''}</th>` +
          `<td>${badge(t.state)}</td><td class="num">${t.attempts}</td>` +
          `<td class="nowrap">${t.started_at != null ? `<span title="${esc(fmtAbs(t.started_at))}">${esc(fmtClock(t.started_at))}</span>` : `<span class="dash">${DASH}</span>`}</td>` +
          `<td class="num">${esc(fmtDur(dur))}</td><td class="num">${esc(fmtInt(m.rows_in))}</td><td class="num">${esc(fmtInt(m.rows_out))}</td>` +
          `<td class="num">${esc(fmtKb(peak))}</td><td>${err}</td>` +
          `<td class="nowrap">${op && ended ? `<button type="button" class="btn btn-small" data-retry-task="${esc(t.task_id)}" aria-label="Retry ${esc(t.task_id)} and the tasks after it">Retry</button>` : ''}</td></tr>`,
      };
    });
    const empty = `<tr><td colspan="10" class="empty">${tasks.length ? 'No task matches the filter.' : 'This run has no tasks.'}</td></tr>`;
    patchRows(body, items, p.rowCache, empty);
  }

  function niceStep(ms) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800].map((s) => s * 1000);
    return steps.find((s) => s >= ms) || steps[steps.length - 1];
  }
  function fmtTick(ms) {
    const s = Math.round(ms / 1000);
    if (s === 0) return '0';
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? `${s % 60}s` : ''}`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${s % 3600 ? `${Math.floor((s % 3600) / 60)}m` : ''}`;
    return `${Math.floor(s / 86400)}d${s % 86400 ? `${Math.floor((s % 86400) / 3600)}h` : ''}`;
  }

  function renderGantt(p, resized = false) {
    const wrap = $('#gantt');
    if (!wrap || !p.detail) return;
    const { run, tasks, attempts } = p.detail;
    if (!p.ganttWidth || resized) p.ganttWidth = wrap.clientWidth; // measured before the table fills (and on resize)
    const width = Math.max(360, p.ganttWidth || 900);
    const running = run.state === 'running';
    const t0 = run.created_at;
    let tEnd = run.ended_at ?? now();
    for (const a of attempts) tEnd = Math.max(tEnd, a.ended_at ?? 0, a.started_at ?? 0);
    if (running) tEnd = Math.max(tEnd, now());
    const span = Math.max(tEnd - t0, 1000);
    const LABEL = Math.min(220, Math.max(120, Math.round(width * 0.22)));
    const RIGHT = 16;
    const ROW = 20;
    const TOP = 24;
    const plot = width - LABEL - RIGHT;
    const X = (t) => LABEL + ((t - t0) / span) * plot;
    const rows = tasks.map((t) => t.task_id);
    for (const a of attempts) if (!p.taskById.has(a.task_id) && !rows.includes(a.task_id)) rows.push(a.task_id);
    const height = TOP + rows.length * ROW + 8;
    p.ganttRows = { top: TOP, row: ROW, ids: rows };
    const step = niceStep(span / Math.max(2, Math.floor(plot / 90)));
    let grid = '';
    let ticks = '';
    for (let t = 0; t <= span + 1; t += step) {
      const x = X(t0 + t).toFixed(1);
      grid += `<line class="grid" x1="${x}" x2="${x}" y1="${TOP - 4}" y2="${height}"/>`;
      ticks += `<text x="${x}" y="${TOP - 9}" text-anchor="middle">${fmtTick(t)}</text>`;
    }
    let bg = '';
    let labels = '';
    let bars = '';
    const labelChars = Math.floor((LABEL - 14) / 7);
    rows.forEach((task, i) => {
      const y = TOP + i * ROW;
      const sel = task === p.task;
      if (sel) bg += `<rect class="row-bg sel" data-row="${esc(task)}" x="0" y="${y}" width="${width}" height="${ROW}"/>`;
      labels += `<text class="label${sel ? ' sel' : ''}" data-row="${esc(task)}" x="8" y="${y + 14}">${esc(trunc(task, labelChars))}<title>${esc(task)}</title></text>`;
      const list = p.attemptsByTask.get(task) || [];
      if (!list.length) {
        const t = p.taskById.get(task);
        if (t) labels += `<text class="label faint" x="${LABEL + 4}" y="${y + 14}" fill-opacity="0.6">${esc(t.state)}</text>`;
      }
      for (const a of list) {
        const s = a.started_at ?? a.available_at ?? t0;
        const e = a.ended_at ?? (ATTEMPT_FINAL.has(a.state) ? s : Math.max(s, now()));
        const x = X(s);
        const w = Math.max(2, X(e) - x);
        const dur = a.started_at != null ? fmtDur(((a.ended_at ?? now()) - a.started_at) / 1000) : 'not started';
        const tip = `${task} \u00b7 attempt ${a.number} \u00b7 ${a.state}\n${a.started_at != null ? `${fmtAbs(a.started_at)} \u2192 ${a.ended_at ? fmtAbs(a.ended_at) : 'now'}` : `queued until ${fmtAbs(a.available_at)}`}\n${dur}${a.exit_code != null ? ` \u00b7 exit ${a.exit_code}` : ''}${a.peak_rss_kb != null ? ` \u00b7 ${fmtKb(a.peak_rss_kb)}` : ''}${a.error ? `\n${firstLine(a.error)}` : ''}`;
        bars += `<rect class="bar st-${esc(a.state)}" data-task="${esc(task)}" data-attempt="${a.number}" x="${x.toFixed(1)}" y="${y + 4}" width="${w.toFixed(1)}" height="${ROW - 8}" rx="2"><title>${esc(tip)}</title></rect>`;
      }
    });
    const nowLine = running ? `<line class="now" x1="${X(now()).toFixed(1)}" x2="${X(now()).toFixed(1)}" y1="${TOP - 4}" y2="${height}"/>` : '';
    const svg = `<svg class="gantt" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="group" aria-label="Timeline of ${attempts.length} attempts">` +
      `<defs><pattern id="gstripe" patternUnits="userSpaceOnUse" x="0" y="${TOP}" width="${width}" height="${2 * ROW}"><rect class="row-bg alt" y="${ROW}" width="${width}" height="${ROW}"/></pattern></defs>` +
      `<rect class="rows" x="0" y="${TOP}" width="${width}" height="${rows.length * ROW}" fill="url(#gstripe)"/><g>${bg}</g><g>${grid}</g>` +
      `<line class="sep" x1="${LABEL - 4}" x2="${LABEL - 4}" y1="${TOP - 4}" y2="${height}"/><g>${labels}</g><g>${bars}</g>${nowLine}` +
      // The time axis stays at the top of the scrolled box (moved by onScroll).
      `<g class="axis" id="gantt-axis"${p.ganttScroll ? ` transform="translate(0 ${p.ganttScroll})"` : ''}><rect class="axis-bg" width="${width}" height="${TOP - 3}"/>${ticks}` +
      `<line class="axis-line" x1="${LABEL}" x2="${width - RIGHT}" y1="${TOP - 4}" y2="${TOP - 4}"/></g></svg>`;
    setHtml(wrap, svg);
    $('#gantt-hint').textContent = `${attempts.length} attempt${attempts.length === 1 ? '' : 's'} \u00b7 started ${fmtClock(t0)} \u00b7 ${fmtDur(span / 1000)}`;
  }

  // ---------------------------------------------------------------- logs
  function updateLogHeader(p) {
    const sel = $('#log-attempt');
    if (!sel || !p.task) return;
    const list = (p.attemptsByTask.get(p.task) || []).filter((a) => a.state !== 'queued');
    $('#log-task').textContent = p.task;
    if (list.length > 1) {
      const html = `<option value="">Latest attempt</option>${list.map((a) => `<option value="${a.number}">Attempt ${a.number} \u00b7 ${esc(a.state)}</option>`).join('')}`;
      if (sel.dataset.html !== html) { sel.innerHTML = html; sel.dataset.html = html; }
      sel.value = p.attempt == null ? '' : String(p.attempt);
      sel.hidden = false;
    } else {
      sel.hidden = true;
    }
    const t = p.taskById.get(p.task);
    const err = t && t.error ? `<div class="notice error"><pre class="error-text">${esc(t.error)}</pre></div>` : '';
    const errEl = $('#log-error');
    if (errEl.dataset.html !== err) { errEl.dataset.html = err; errEl.innerHTML = err; }
  }

  function startLog(p) {
    if (p.log && p.log.ctrl) p.log.ctrl.abort();
    const view = $('#log-view');
    if (!view || !p.task) return;
    const ctrl = new AbortController();
    p.ctrl.signal.addEventListener('abort', () => ctrl.abort(), { once: true });
    const text = document.createTextNode('');
    view.replaceChildren(text);
    const log = { task: p.task, attempt: null, want: p.attempt, ctrl, live: false, loading: true, text, chars: 0, trimmed: false };
    p.log = log;
    updateLogHeader(p);
    setLogNote(p, log, 'Loading\u2026');
    loadLog(p, log).finally(() => { log.loading = false; });
  }

  function setLogNote(p, log, note, live = false) {
    if (p.log !== log) return;
    log.live = live;
    $('#log-note').textContent = note;
    $('#log-live').hidden = !live;
  }

  // Log text arrives in many small events: it is added once per frame, and the view stays
  // pinned to the end unless the reader scrolled up (tracked by onLogScroll, no layout reads here).
  function appendLog(log, s) {
    if (!s) return;
    log.pending = (log.pending || '') + s;
    if (log.frame) return;
    log.frame = requestAnimationFrame(() => {
      log.frame = 0;
      const text = log.pending;
      log.pending = '';
      if (log.ctrl.signal.aborted) return;
      log.text.appendData(text);
      log.chars += text.length;
      if (log.chars > LOG_MAX_CHARS) {
        const cut = log.chars - Math.floor(LOG_MAX_CHARS * 0.75);
        log.text.deleteData(0, cut);
        log.chars -= cut;
        log.trimmed = true;
      }
      if (log.stick !== false) {
        const view = $('#log-view');
        if (view) view.scrollTop = view.scrollHeight;
      }
    });
  }
  function onScroll(e) {
    const el = e.target;
    if (!pg || pg.name !== 'run' || !el.id) return;
    if (el.id === 'log-view' && pg.log) pg.log.stick = el.scrollTop + el.clientHeight >= el.scrollHeight - 30;
    if (el.id === 'gantt') {
      pg.ganttScroll = el.scrollTop;
      const axis = document.getElementById('gantt-axis');
      if (axis) axis.setAttribute('transform', `translate(0 ${el.scrollTop})`);
    }
  }

  async function loadLog(p, log) {
    const { run } = p.detail;
    const base = `/runs/${enc(run.id)}/tasks/${enc(log.task)}/logs`;
    const aq = log.want != null ? `&attempt=${log.want}` : '';
    const t = p.taskById.get(log.task);
    if (log.want == null && !latestStarted(p, log.task)) {
      // Nothing to read yet: follow (the server waits for the start) or say why there is none.
      if (run.state === 'running' && t && !TASK_FINAL.has(t.state)) {
        setLogNote(p, log, 'Waiting for the task to start\u2026', true);
        followLog(p, log, 0);
      } else {
        setLogNote(p, log, t && t.state === 'skipped' ? 'This task was skipped: it has no log.' : 'This task did not run: it has no log.');
      }
      return;
    }
    let chunk = null;
    try {
      chunk = await api(`${base}?offset=-${LOG_TAIL_BYTES}${aq}`, { signal: log.ctrl.signal });
    } catch (e) {
      if (isAbort(e) || p.log !== log) return;
      if (e.status === 404 && run.state === 'running' && t && !TASK_FINAL.has(t.state) && log.want == null) {
        setLogNote(p, log, 'Waiting for the task to start\u2026', true);
        followLog(p, log, 0);
        return;
      }
      const why = e.status === 404
        ? (t && t.state === 'skipped' ? 'This task was skipped: it has no log.' : t && !t.attempts ? 'This task has not run: no log yet.' : e.message)
        : e.message;
      setLogNote(p, log, why);
      return;
    }
    if (p.log !== log) return;
    log.attempt = chunk.attempt;
    const view = $('#log-view');
    log.text.data = chunk.text;
    log.chars = chunk.text.length;
    view.scrollTop = view.scrollHeight;
    const head = chunk.offset > 0 ? `Last ${Math.round((chunk.size - chunk.offset) / 1024)} KiB of ${Math.round(chunk.size / 1024)} KiB \u00b7 ` : '';
    updateLogHeader(p);
    if (!chunk.complete && !ATTEMPT_FINAL.has(chunk.state)) {
      setLogNote(p, log, `${head}attempt ${chunk.attempt}`, true);
      followLog(p, log, chunk.next_offset);
    } else {
      setLogNote(p, log, `${head}attempt ${chunk.attempt} \u00b7 ${chunk.state}${chunk.text ? '' : ' \u00b7 empty log'}`);
    }
  }

  // Follows a log over server-sent events. EventSource cannot send the token, so the stream
  // is read with fetch and parsed here (`event:` / `data:` lines, blank line between events).
  async function followLog(p, log, offset) {
    const run = p.detail.run;
    const aq = log.want != null ? `&attempt=${log.want}` : log.attempt != null ? `&attempt=${log.attempt}` : '';
    let res;
    try {
      res = await request(`/runs/${enc(run.id)}/tasks/${enc(log.task)}/logs?follow=true&offset=${offset}${aq}`,
        { signal: log.ctrl.signal, accept: 'text/event-stream' });
    } catch (e) {
      if (isAbort(e) || p.log !== log) return;
      setLogNote(p, log, e.status === 404 ? 'The task has not started yet.' : `Cannot follow the log: ${e.message}`);
      log.attempt = null; // let the run poll start it again once an attempt exists
      return;
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let ended = false;
    let pos = offset;
    const dispatch = (block) => {
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line[0] === ':') continue;
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        let value = i < 0 ? '' : line.slice(i + 1);
        if (value[0] === ' ') value = value.slice(1);
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
      if (!data.length) return;
      let msg;
      try { msg = JSON.parse(data.join('\n')); } catch { return; }
      if (event === 'log') {
        if (log.attempt == null && p.attemptsByTask) {
          const l = latestStarted(p, log.task);
          log.attempt = l ? l.number : 1;
        }
        if (typeof msg.offset === 'number' && msg.offset < pos) return; // already shown
        appendLog(log, msg.text || '');
        pos = (typeof msg.offset === 'number' ? msg.offset : pos) + utf8.encode(msg.text || '').length;
        setLogNote(p, log, `attempt ${log.attempt ?? ''}`.trim(), true);
      } else if (event === 'end') {
        ended = true;
        setLogNote(p, log, `attempt ${log.attempt ?? ''} ended \u00b7 ${msg.state}${log.trimmed ? ' \u00b7 older lines trimmed' : ''}`);
        // A retry makes a new attempt: the run poll notices and follows it.
        p.poll.now();
      }
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          dispatch(block);
          if (p.log !== log) return;
        }
      }
    } catch (e) {
      if (isAbort(e) || p.log !== log) return;
    }
    if (ended || p.log !== log || log.ctrl.signal.aborted) return;
    // The stream dropped before the end: pick it up again where it stopped.
    setLogNote(p, log, 'Reconnecting\u2026', false);
    later(p, 1500, () => {
      if (p.log !== log) return;
      if (p.detail.run.state === 'running') followLog(p, log, pos);
      else startLog(p);
    });
  }

  // ---------------------------------------------------------------- run actions
  async function runAction(p, btn, path, message) {
    if (btn) btn.disabled = true;
    try {
      await api(path, { method: 'POST', signal: p.ctrl.signal });
      if (!alive(p)) return;
      say(message);
      p.actionUntil = now() + 10000;
      p.poll.now();
    } catch (e) {
      if (isAbort(e) || !alive(p)) return;
      say(e.status === 409 ? `Not possible now: ${e.message}` : e.message, 'error');
      if (btn && btn.isConnected) btn.disabled = false;
    }
  }

  async function downloadReport(p) {
    const btn = $('#download-report');
    btn.disabled = true;
    try {
      const res = await request(`/runs/${enc(p.runId)}/report`, { signal: p.ctrl.signal });
      const blob = new Blob([await res.text()], { type: 'application/json' });
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = `cauce-run-${p.runId}.json`;
      a.hidden = true;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      say('Report downloaded');
    } catch (e) {
      if (!isAbort(e)) say(`Cannot download the report: ${e.message}`, 'error');
    } finally {
      if (btn.isConnected) btn.disabled = false;
    }
  }

  // ------------------------------------------------------------------ router
  function notFoundPage() {
    const p = startPage('notfound');
    setTitle('Not found');
    setCrumbs([{ href: '#/', label: 'Overview' }, { label: 'not found' }]);
    main.innerHTML = `<div class="page-head"><div class="titles"><h1 tabindex="-1">No such page</h1></div></div><p><a href="#/">Go to the overview</a></p>`;
    markLoaded(p);
  }

  function parseHash() {
    const h = location.hash.replace(/^#/, '') || '/';
    const q = h.indexOf('?');
    return { path: q >= 0 ? h.slice(0, q) : h, query: new URLSearchParams(q >= 0 ? h.slice(q + 1) : '') };
  }

  function route() {
    if (!auth.token || !auth.me) { signinPage(); return; }
    renderUser();
    const { path, query } = parseHash();
    let m;
    try {
      if (path === '/' || path === '') return overviewPage(query);
      if ((m = /^\/pipelines\/([^/]+)\/?$/.exec(path))) return pipelinePage(decodeURIComponent(m[1]), query);
      if ((m = /^\/runs\/([^/]+)\/?$/.exec(path))) {
        const id = decodeURIComponent(m[1]);
        if (pg && pg.name === 'run' && pg.runId === id && pg.detail) {
          const task = query.get('task');
          if (task && task !== pg.task) pg.selectTask(task);
          return undefined;
        }
        return runPage(id, query);
      }
    } catch (e) {
      if (!(e instanceof URIError)) throw e;
    }
    return notFoundPage();
  }

  // ------------------------------------------------------------------ wiring
  const dispatch = (name) => (e) => { if (pg && pg[name]) pg[name](e); };
  document.addEventListener('click', (e) => {
    if (e.target.closest('#signout')) { signOut(); return; }
    const skip = e.target.closest('[data-skip]');
    if (skip) { e.preventDefault(); main.focus(); return; }
    dispatch('onClick')(e);
  });
  document.addEventListener('input', dispatch('onInput'));
  document.addEventListener('change', dispatch('onChange'));
  document.addEventListener('submit', dispatch('onSubmit'));
  document.addEventListener('mouseover', dispatch('onOver'));
  document.addEventListener('mouseout', dispatch('onOut'));
  document.addEventListener('focusin', dispatch('onFocusIn'));
  document.addEventListener('focusout', dispatch('onFocusOut'));
  document.addEventListener('scroll', onScroll, { capture: true, passive: true });
  document.addEventListener('visibilitychange', () => { if (!document.hidden) dispatch('onVisible')(); });
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => dispatch('onResize')(), 150);
  });
  window.addEventListener('hashchange', () => {
    if (location.hash === '#main') return;
    route();
  });

  async function boot() {
    if (!auth.token) { signinPage(); return; }
    try {
      auth.me = await api('/me', { quiet401: true });
    } catch (e) {
      if (e.status === 401) { unauthorized(e.message); return; }
      const p = startPage('error');
      main.innerHTML = `<div class="page-head"><div class="titles"><h1 tabindex="-1">Cannot reach cauce</h1></div></div>
        <div class="notice error" role="alert">${esc(e.message)}</div><p><button type="button" class="btn" id="boot-retry">Try again</button></p>`;
      p.onClick = (ev) => { if (ev.target.closest('#boot-retry')) boot(); };
      markLoaded(p);
      return;
    }
    route();
  }

  boot();
})();
