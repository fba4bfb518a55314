// sdg serve: the web UI. Plain JS, no framework, no build step; the server embeds this file.
//
// Routes (hash): #/runs (default), #/new, #/run/<id>, #/data/<id>, #/record/<id>/<record_id>
//
// data-testid attributes (stable, used by tests/browser/ui.mjs):
//   nav:       nav-home, nav-runs, nav-new, toasts
//   #/new:     draft-id, task-name, task-domain, task-instruction, task-input-instruction, task-output-instruction,
//              answer-format (select: default|marker|tag|boxed|custom), answer-value, task-num-samples, task-seed,
//              task-source (select: local|web|distill), local-paths (comma separated), local-chunk,
//              local-per-passage, local-min-chars, web-datasets, web-search, web-question, web-answer,
//              distill-per-call, distill-overgenerate, task-demos,
//              teacher-name, teacher-provider (select: local|openai), teacher-base-url, teacher-model, teacher-api-key-env,
//              student-enabled (checkbox), student-provider, student-base-url, student-model, student-api-key-env,
//              vote-enabled, vote-n, vote-min-agreement, vote-match-generated (select: ''|true|false), score-enabled, score-model, score-k,
//              rewrite-enabled, rewrite-rounds, translate-enabled, translate-languages,
//              upload (file input, documents), upload-demos (file input, demos JSONL), upload-status,
//              files-list (table; one file-row per uploaded file),
//              yaml (textarea), yaml-status,
//              validation (data-state: pending|ok|errors|failed; one validation-error per error, text exact),
//              estimate (data-state: pending|ok|blocked|failed), estimate-requests, estimate-prompt-tokens,
//              estimate-completion-tokens, estimate-cost, start-run, start-error
//   #/run/id:  run-name, run-status (text = status; data-status too), cancel, resume, open-data,
//              progress (data-fraction), progress-pct, progress-eta, progress-elapsed,
//              stat-rows, stat-rejected, stat-requests, stat-cost, graph (svg),
//              node-<node id> (svg group) with node-<id>-in, node-<id>-out, node-<id>-rejected,
//              node-<id>-inflight, node-<id>-tokens, node-<id>-rate; models-table, run-yaml
//   #/data/id: tab-data, tab-rejects, filter-category, filter-source, filter-min-agreement, filter-min-pass-rate,
//              filter-max-pass-rate, filter-q, filter-reset, data-table (data-loading 0|1, data-q = the applied
//              search), data-row (one per row, data-record-id), rows-range, rows-total, page-prev, page-next,
//              export-<format> (download links), record-view, record-close, record-passage, record-votes,
//              record-student-answers, record-rewrites, record-provenance, record-fields,
//              rejects-table (data-loading), reject-row, rejects-q, rejects-total, rejects-prev, rejects-next
//   #/runs:    runs-table, run-row-<id> (data-status), run-open-<id>, run-data-<id>, run-resume-<id>, runs-empty
'use strict';

(() => {
  // ---------------------------------------------------------------- helpers

  const PROPS = new Set(['value', 'checked', 'disabled', 'textContent', 'selected', 'multiple', 'hidden', 'htmlFor']);

  function setAttrs(el, attrs, svg) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'testid') el.setAttribute('data-testid', v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
      else if (!svg && PROPS.has(k)) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function append(el, kids) {
    for (const kid of kids) {
      if (kid === null || kid === undefined || kid === false) continue;
      if (Array.isArray(kid)) append(el, kid);
      else if (kid instanceof Node) el.appendChild(kid);
      else el.appendChild(document.createTextNode(String(kid)));
    }
  }

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs, false);
    append(el, kids);
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs, true);
    append(el, kids);
    return el;
  }

  const $ = (sel, root) => (root || document).querySelector(sel);
  const tid = (id, root) => (root || document).querySelector(`[data-testid="${CSS.escape(id)}"]`);

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function debounce(fn, ms) {
    let timer = null;
    const wrapped = (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => { timer = null; fn(...args); }, ms);
    };
    wrapped.cancel = () => { clearTimeout(timer); timer = null; };
    wrapped.pending = () => timer !== null;
    return wrapped;
  }

  const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

  function getPath(obj, path) {
    let cur = obj;
    for (const key of path) {
      if (!isObj(cur)) return undefined;
      cur = cur[key];
    }
    return cur;
  }

  function setPath(obj, path, value) {
    let cur = obj;
    for (const key of path.slice(0, -1)) {
      if (!isObj(cur[key])) cur[key] = {};
      cur = cur[key];
    }
    cur[path[path.length - 1]] = value;
  }

  function deletePath(obj, path) {
    const parent = getPath(obj, path.slice(0, -1));
    if (isObj(parent)) delete parent[path[path.length - 1]];
  }

  function fmtInt(n) {
    if (n === null || n === undefined || n === '') return '—';
    const x = Number(n);
    if (!Number.isFinite(x)) return String(n);
    return Math.round(x).toLocaleString('en-US');
  }

  function fmtCompact(n) {
    if (n === null || n === undefined) return '—';
    const x = Number(n);
    if (!Number.isFinite(x)) return String(n);
    const a = Math.abs(x);
    if (a < 1000) return String(Math.round(x * 10) / 10);
    if (a < 1e6) return (x / 1e3).toFixed(a < 1e4 ? 1 : 0) + 'k';
    if (a < 1e9) return (x / 1e6).toFixed(a < 1e7 ? 1 : 0) + 'M';
    return (x / 1e9).toFixed(1) + 'G';
  }

  function fmtNum(n, digits) {
    if (n === null || n === undefined) return '—';
    const x = Number(n);
    if (!Number.isFinite(x)) return String(n);
    if (Number.isInteger(x)) return x.toLocaleString('en-US');
    return x.toLocaleString('en-US', { maximumFractionDigits: digits === undefined ? 3 : digits });
  }

  function fmtDuration(sec) {
    if (sec === null || sec === undefined || !Number.isFinite(Number(sec))) return '—';
    const t = Math.max(0, Number(sec));
    if (t < 10) return t.toFixed(1) + ' s';
    if (t < 60) return Math.round(t) + ' s';
    const m = Math.floor(t / 60);
    if (m < 60) return `${m}m ${String(Math.round(t % 60)).padStart(2, '0')}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
  }

  function fmtCost(c) {
    if (c === null || c === undefined) return '—';
    const x = Number(c);
    if (!Number.isFinite(x)) return '—';
    if (x === 0) return '$0';
    if (x < 0.01) return '$' + x.toFixed(4);
    return '$' + x.toFixed(2);
  }

  function fmtTime(unix) {
    if (!unix) return '—';
    const d = new Date(Number(unix) * 1000);
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function fmtBytes(b) {
    const x = Number(b) || 0;
    if (x < 1024) return x + ' B';
    if (x < 1024 * 1024) return (x / 1024).toFixed(1) + ' KiB';
    return (x / 1024 / 1024).toFixed(1) + ' MiB';
  }

  function cellText(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function truncate(text, n) {
    return text.length > n ? text.slice(0, n - 1) + '…' : text;
  }

  const TERMINAL = new Set(['completed', 'interrupted', 'failed']);

  function badge(status, testid) {
    return h('span', { class: `badge badge-${status || 'unknown'}`, testid, 'data-status': status || '' }, status || 'unknown');
  }

  function setBadge(el, status) {
    el.className = `badge badge-${status || 'unknown'}`;
    el.textContent = status || 'unknown';
    el.dataset.status = status || '';
  }

  function toast(message, kind) {
    const box = document.getElementById('toasts');
    const el = h('div', { class: `toast toast-${kind || 'error'}`, role: 'status' }, message);
    box.appendChild(el);
    setTimeout(() => el.classList.add('toast-out'), 5000);
    setTimeout(() => el.remove(), 5600);
  }

  // ---------------------------------------------------------------- API

  const TOKEN = (() => {
    try {
      const fromUrl = new URLSearchParams(location.search).get('token');
      if (fromUrl) sessionStorage.setItem('sdg-token', fromUrl);
      return fromUrl || sessionStorage.getItem('sdg-token') || '';
    } catch (e) {
      return '';
    }
  })();

  function withToken(url) {
    if (!TOKEN) return url;
    return url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(TOKEN);
  }

  async function api(method, path, body) {
    const headers = {};
    if (TOKEN) headers.Authorization = 'Bearer ' + TOKEN;
    const init = { method, headers };
    if (body !== undefined) {
      if (body instanceof Blob || body instanceof ArrayBuffer) {
        headers['Content-Type'] = 'application/octet-stream';
        init.body = body;
      } else {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
      }
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      const err = new Error(`cannot reach the server (${e.message})`);
      err.status = 0;
      throw err;
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!res.ok) {
      const err = new Error((data && data.error) || `HTTP ${res.status} ${res.statusText}`.trim());
      err.status = res.status;
      err.data = data;
      throw err;
    }
    return data;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- router

  const app = document.getElementById('app');
  let teardown = null;   // the current page's cleanup (timers, event sources)
  let currentPage = null; // {name, id}
  let dataPageApi = null; // the data page's handle, for switching the record panel without re-rendering

  function parseHash() {
    const parts = (location.hash || '').replace(/^#\/?/, '').split('/').map((p) => {
      try { return decodeURIComponent(p); } catch (e) { return p; }
    });
    const [name, a, b] = parts;
    if (name === 'new') return { name: 'new' };
    if (name === 'run' && a) return { name: 'run', id: a };
    if (name === 'data' && a) return { name: 'data', id: a, record: null };
    if (name === 'record' && a && b) return { name: 'data', id: a, record: b };
    return { name: 'runs' };
  }

  function route() {
    const r = parseHash();
    for (const link of document.querySelectorAll('[data-nav]')) {
      link.classList.toggle('active', link.dataset.nav === r.name);
    }
    if (r.name === 'data' && currentPage && currentPage.name === 'data' && currentPage.id === r.id && dataPageApi) {
      dataPageApi.showRecord(r.record);
      return;
    }
    if (teardown) {
      try { teardown(); } catch (e) { /* ignore */ }
    }
    teardown = null;
    dataPageApi = null;
    currentPage = r;
    clear(app);
    window.scrollTo(0, 0);
    if (r.name === 'new') teardown = newRunPage();
    else if (r.name === 'run') teardown = runPage(r.id);
    else if (r.name === 'data') teardown = dataPage(r.id, r.record);
    else teardown = runsPage();
  }

  function pageHead(title, sub, actions) {
    return h('div', { class: 'page-head' },
      h('div', { class: 'page-title' }, h('h1', null, title), sub ? h('div', { class: 'sub' }, sub) : null),
      h('div', { class: 'page-actions' }, actions || []));
  }

  function card(title, body, opts) {
    const o = opts || {};
    return h('section', { class: 'card ' + (o.class || ''), testid: o.testid },
      title ? h('div', { class: 'card-head' }, h('h2', null, title), o.aside || null) : null,
      h('div', { class: 'card-body' }, body));
  }

  // ---------------------------------------------------------------- #/runs

  function runsPage() {
    const tbody = h('tbody');
    const table = h('table', { class: 'table table-middle', testid: 'runs-table' },
      h('thead', null, h('tr', null,
        h('th', null, 'Run'), h('th', null, 'Status'), h('th', null, 'Started'), h('th', { class: 'num' }, 'Elapsed'),
        h('th', { class: 'num' }, 'Rows'), h('th', { class: 'num' }, 'Rejected'), h('th', { class: 'num' }, 'Cost'),
        h('th', { class: 'num' }, 'Requests'), h('th', { class: 'actions' }, ''))),
      tbody);
    const empty = h('div', { class: 'empty', testid: 'runs-empty', hidden: true },
      h('p', null, 'No runs yet.'), h('a', { class: 'btn btn-primary', href: '#/new' }, 'Start a new run'));
    app.append(
      pageHead('Runs', 'Every run of this server, newest first.', [h('a', { class: 'btn btn-primary', href: '#/new' }, 'New run')]),
      card(null, [h('div', { class: 'table-wrap' }, table), empty]));

    let timer = null;
    let stopped = false;

    async function resume(id, btn) {
      btn.disabled = true;
      try {
        await api('POST', `/api/runs/${enc(id)}/resume`);
        location.hash = `#/run/${enc(id)}`;
      } catch (e) {
        btn.disabled = false;
        toast(`Resume failed: ${e.message}`);
      }
    }

    async function load() {
      let data;
      try {
        data = await api('GET', '/api/runs');
      } catch (e) {
        if (!stopped) toast(`Cannot list runs: ${e.message}`);
        data = null;
      }
      if (stopped) return;
      if (data) {
        const runs = data.runs || [];
        clear(tbody);
        for (const r of runs) {
          const actions = [
            h('a', { class: 'btn btn-sm', href: `#/run/${enc(r.id)}`, testid: `run-open-${r.id}` }, 'Open'),
            r.status !== 'draft' ? h('a', { class: 'btn btn-sm', href: `#/data/${enc(r.id)}`, testid: `run-data-${r.id}` }, 'Data') : null,
            r.resumable && !r.active
              ? h('button', { class: 'btn btn-sm btn-warn', testid: `run-resume-${r.id}`, onclick: (ev) => resume(r.id, ev.currentTarget) }, 'Resume')
              : null,
          ];
          tbody.append(h('tr', { testid: `run-row-${r.id}`, 'data-status': r.status, 'data-run-id': r.id },
            h('td', null, h('a', { class: 'run-name', href: `#/run/${enc(r.id)}` }, r.name || '(unnamed)'), h('div', { class: 'mono muted small' }, r.id)),
            h('td', null, badge(r.status)),
            h('td', { class: 'nowrap' }, fmtTime(r.started_at_unix)),
            h('td', { class: 'num' }, fmtDuration(r.elapsed_s)),
            h('td', { class: 'num' }, fmtInt(r.rows)),
            h('td', { class: 'num' }, fmtInt(r.rejected)),
            h('td', { class: 'num' }, fmtCost(r.cost)),
            h('td', { class: 'num' }, fmtInt(r.requests)),
            h('td', { class: 'actions' }, h('div', { class: 'btn-row' }, actions))));
        }
        table.hidden = runs.length === 0;
        empty.hidden = runs.length !== 0;
        const anyActive = runs.some((r) => r.active || r.status === 'running');
        timer = setTimeout(load, anyActive ? 2000 : 8000);
      } else {
        timer = setTimeout(load, 5000);
      }
    }
    load();
    return () => { stopped = true; clearTimeout(timer); };
  }

  // ---------------------------------------------------------------- #/new

  let NEW = null; // the new-run draft, kept while the page is open in this tab (reset after a start)

  const LOCAL_ONLY_KEYS = ['file', 'threads', 'max_batch', 'context', 'chat_template', 'device'];

  function teacherName(cfg) {
    const t = getPath(cfg, ['task', 'teacher']);
    return typeof t === 'string' && t ? t : 'teacher';
  }

  const FIELDS = [
    { id: 'task-name', path: ['task', 'name'], kind: 'text', required: true },
    { id: 'task-domain', path: ['task', 'domain'], kind: 'text' },
    { id: 'task-instruction', path: ['task', 'instruction'], kind: 'text', required: true },
    { id: 'task-input-instruction', path: ['task', 'input_instruction'], kind: 'text' },
    { id: 'task-output-instruction', path: ['task', 'output_instruction'], kind: 'text' },
    { id: 'task-num-samples', path: ['task', 'num_samples'], kind: 'int', required: true },
    { id: 'task-seed', path: ['task', 'seed'], kind: 'int' },
    { id: 'local-paths', path: ['task', 'local', 'paths'], kind: 'list', required: true },
    { id: 'local-chunk', path: ['task', 'local', 'chunk'], kind: 'int' },
    { id: 'local-per-passage', path: ['task', 'local', 'per_passage'], kind: 'int' },
    { id: 'local-min-chars', path: ['task', 'local', 'min_chars'], kind: 'int' },
    { id: 'web-datasets', path: ['task', 'web', 'datasets'], kind: 'list' },
    { id: 'web-search', path: ['task', 'web', 'search'], kind: 'text' },
    { id: 'web-question', path: ['task', 'web', 'question'], kind: 'text' },
    { id: 'web-answer', path: ['task', 'web', 'answer'], kind: 'text' },
    { id: 'distill-per-call', path: ['task', 'distill', 'per_call'], kind: 'int' },
    { id: 'distill-overgenerate', path: ['task', 'distill', 'overgenerate'], kind: 'num' },
    { id: 'task-demos', path: ['task', 'demos'], kind: 'text' },
    { id: 'vote-n', path: ['task', 'verify', 'vote', 'n'], kind: 'int' },
    { id: 'vote-min-agreement', path: ['task', 'verify', 'vote', 'min_agreement'], kind: 'num' },
    { id: 'vote-match-generated', path: ['task', 'verify', 'vote', 'match_generated'], kind: 'bool' },
    { id: 'score-model', path: ['task', 'verify', 'score', 'model'], kind: 'text' },
    { id: 'score-k', path: ['task', 'verify', 'score', 'k'], kind: 'int' },
    { id: 'rewrite-rounds', path: ['task', 'verify', 'rewrite', 'rounds'], kind: 'int' },
    { id: 'translate-languages', path: ['task', 'verify', 'translate', 'languages'], kind: 'list', required: true },
    { id: 'teacher-base-url', path: (c) => ['models', teacherName(c), 'base_url'], kind: 'text' },
    { id: 'teacher-model', path: (c) => ['models', teacherName(c), 'model'], kind: 'text', required: true },
    { id: 'teacher-api-key-env', path: (c) => ['models', teacherName(c), 'api_key_env'], kind: 'text' },
    { id: 'student-base-url', path: ['models', 'student', 'base_url'], kind: 'text' },
    { id: 'student-model', path: ['models', 'student', 'model'], kind: 'text', required: true },
    { id: 'student-api-key-env', path: ['models', 'student', 'api_key_env'], kind: 'text' },
  ];

  const SECTIONS = {
    vote: { path: ['task', 'verify', 'vote'], init: () => ({ n: 4, min_agreement: 0.5 }) },
    score: { path: ['task', 'verify', 'score'], init: () => ({ model: 'student', k: 4 }) },
    rewrite: { path: ['task', 'verify', 'rewrite'], init: () => ({ rounds: 1 }) },
    translate: { path: ['task', 'verify', 'translate'], init: () => ({ languages: ['fr'] }) },
  };

  function fieldPath(f, cfg) {
    return typeof f.path === 'function' ? f.path(cfg) : f.path;
  }

  function formatValue(v, kind) {
    if (v === undefined || v === null) return '';
    if (kind === 'list') return Array.isArray(v) ? v.map(String).join(', ') : cellText(v);
    return typeof v === 'object' ? JSON.stringify(v) : String(v);
  }

  function parseValue(raw, kind) {
    const text = raw.trim();
    if (kind === 'list') return text.split(',').map((x) => x.trim()).filter(Boolean);
    if (kind === 'bool') return text === '' ? undefined : text === 'true';
    if (kind === 'int' || kind === 'num') {
      if (text === '') return undefined;
      const n = Number(text);
      // Not a number: keep the text so that validation names the problem.
      return Number.isFinite(n) ? n : text;
    }
    return raw;
  }

  function newRunPage() {
    let stopped = false;
    const els = {};
    const reg = (id, el) => { els[id] = el; el.setAttribute('data-testid', id); el.id = 'f-' + id; return el; };

    // ---- controls
    const input = (id, attrs) => reg(id, h('input', Object.assign({ type: 'text', autocomplete: 'off', spellcheck: 'false' }, attrs || {})));
    const area = (id, rows, attrs) => reg(id, h('textarea', Object.assign({ rows }, attrs || {})));
    const select = (id, options) => reg(id, h('select', null, options.map(([v, label]) => h('option', { value: v }, label))));
    const checkbox = (id) => reg(id, h('input', { type: 'checkbox' }));
    const field = (label, control, hint, cls) =>
      h('label', { class: 'field ' + (cls || ''), for: control.id }, h('span', { class: 'field-label' }, label), control,
        hint ? h('span', { class: 'hint' }, hint) : null);

    const taskCard = card('Task', [
      h('div', { class: 'grid-2' },
        field('Name', input('task-name', { placeholder: 'my-task' })),
        field('Domain', input('task-domain', { placeholder: 'e.g. medicine' }), 'optional')),
      field('Instruction', area('task-instruction', 3, { placeholder: 'What to generate' })),
      h('div', { class: 'grid-2' },
        field('Input instruction', area('task-input-instruction', 2, { placeholder: 'How the question should look' }), 'optional'),
        field('Output instruction', area('task-output-instruction', 2, { placeholder: 'How the answer should look' }), 'optional')),
      h('div', { class: 'grid-4' },
        field('Answer format', select('answer-format', [['default', 'Default (tag, ####, boxed, number)'], ['marker', 'Marker (#### 42)'],
          ['tag', 'Tag (<answer>…</answer>)'], ['boxed', 'Boxed (\\boxed{…})'], ['custom', 'Custom (edit in YAML)']])),
        field('Marker / tag', input('answer-value', { placeholder: '####' })),
        field('Samples wanted', input('task-num-samples', { type: 'number', min: 1, step: 1 })),
        field('Seed', input('task-seed', { type: 'number', step: 1, placeholder: 'none' }))),
    ]);

    const localBox = h('div', { class: 'subform', 'data-source': 'local' },
      field('Document paths', input('local-paths', { placeholder: 'inputs' }), 'comma separated, relative to the run folder; uploads are in inputs'),
      h('div', { class: 'grid-3' },
        field('Chunk (chars)', input('local-chunk', { type: 'number', min: 1, placeholder: '1200' })),
        field('Questions / passage', input('local-per-passage', { type: 'number', min: 1, placeholder: '1' })),
        field('Min passage chars', input('local-min-chars', { type: 'number', min: 0, placeholder: '200' }))));
    const webBox = h('div', { class: 'subform', 'data-source': 'web' },
      h('div', { class: 'grid-2' },
        field('Hub datasets', input('web-datasets', { placeholder: 'openai/gsm8k' }), 'comma separated'),
        field('Search', input('web-search', { placeholder: 'grade school math' }), 'when no datasets are named')),
      h('div', { class: 'grid-2' },
        field('Question field', input('web-question', { placeholder: 'question' })),
        field('Answer field', input('web-answer', { placeholder: 'answer' }))));
    const distillBox = h('div', { class: 'subform', 'data-source': 'distill' },
      h('div', { class: 'grid-2' },
        field('Examples per call', input('distill-per-call', { type: 'number', min: 1, placeholder: '5' })),
        field('Overgenerate', input('distill-overgenerate', { type: 'number', min: 1, step: 0.1, placeholder: '1.5' }))));
    const sourceCard = card('Source', [
      h('div', { class: 'grid-2' },
        field('Source', select('task-source', [['local', 'Local documents'], ['web', 'Hugging Face Hub datasets'], ['distill', 'Distill from demos']])),
        field('Demos', input('task-demos', { placeholder: 'inputs/demos.jsonl' }), 'few-shot JSONL {question, answer}; required for distill')),
      localBox, webBox, distillBox,
    ]);

    const uploadDocs = reg('upload', h('input', { type: 'file', multiple: true, class: 'file-input' }));
    const uploadDemos = reg('upload-demos', h('input', { type: 'file', accept: '.jsonl,.json', class: 'file-input' }));
    const uploadStatus = h('div', { class: 'muted small', testid: 'upload-status' });
    const filesBody = h('tbody');
    const filesTable = h('table', { class: 'table table-compact', testid: 'files-list' },
      h('thead', null, h('tr', null, h('th', null, 'File'), h('th', null, 'Config path'), h('th', { class: 'num' }, 'Size'))), filesBody);
    const filesCard = card('Files', [
      h('div', { class: 'grid-2' },
        h('label', { class: 'dropzone' }, h('span', { class: 'dz-title' }, 'Documents'),
          h('span', { class: 'hint' }, 'txt, md, html, pdf, docx, jsonl, csv, parquet'), uploadDocs),
        h('label', { class: 'dropzone' }, h('span', { class: 'dz-title' }, 'Demos'),
          h('span', { class: 'hint' }, 'JSONL with question and answer; sets task.demos'), uploadDemos)),
      uploadStatus,
      h('div', { class: 'table-wrap files-scroll' }, filesTable),
    ]);

    const teacherRows = {
      baseUrl: field('Base URL', input('teacher-base-url', { placeholder: 'http://127.0.0.1:8000/v1' })),
      key: field('API key env var', input('teacher-api-key-env', { placeholder: 'OPENAI_API_KEY' }), 'the key is read from the environment, never stored'),
    };
    const studentRows = {
      provider: field('Provider', select('student-provider', [['local', 'Local GGUF model'], ['openai', 'OpenAI-compatible API']])),
      baseUrl: field('Base URL', input('student-base-url', { placeholder: 'http://127.0.0.1:8000/v1' })),
      model: field('Model', input('student-model', { placeholder: 'Qwen/Qwen2.5-7B-Instruct' })),
      key: field('API key env var', input('student-api-key-env', { placeholder: 'OPENAI_API_KEY' })),
    };
    const modelsCard = card('Models', [
      h('h3', { class: 'subhead' }, 'Teacher', h('span', { class: 'muted small', testid: 'teacher-name' })),
      h('div', { class: 'grid-2' },
        field('Provider', select('teacher-provider', [['local', 'Local GGUF model'], ['openai', 'OpenAI-compatible API']])),
        field('Model', input('teacher-model', { placeholder: 'smollm2-135m-instruct' }), 'local: a catalog name or .gguf path; API: the served model name')),
      h('div', { class: 'grid-2' }, teacherRows.baseUrl, teacherRows.key),
      h('h3', { class: 'subhead' }, h('label', { class: 'check' }, checkbox('student-enabled'), 'Student model'),
        h('span', { class: 'muted small' }, 'the model the data is scored against')),
      h('div', { class: 'grid-2' }, studentRows.provider, studentRows.model),
      h('div', { class: 'grid-2' }, studentRows.baseUrl, studentRows.key),
    ]);

    const verifyRow = (name, title, desc, fields) => h('div', { class: 'verify-row', 'data-section': name },
      h('label', { class: 'check' }, checkbox(`${name}-enabled`), h('span', null, h('strong', null, title), h('span', { class: 'muted small' }, ' ' + desc))),
      h('div', { class: 'verify-fields' }, fields));
    const verifyCard = card('Verification', [
      verifyRow('vote', 'Vote', 'sample n answers, keep the agreed one', [
        field('n', input('vote-n', { type: 'number', min: 2, step: 1 }), null, 'narrow'),
        field('Min agreement', input('vote-min-agreement', { type: 'number', min: 0, max: 1, step: 0.05 }), null, 'narrow'),
        field('Agree with generated answer', select('vote-match-generated', [['', 'default (yes)'], ['true', 'yes'], ['false', 'no']]), null, 'narrow')]),
      verifyRow('score', 'Score', 'pass rate of the student', [
        field('Model', input('score-model', { placeholder: 'student' }), null, 'narrow'),
        field('k', input('score-k', { type: 'number', min: 1, step: 1 }), null, 'narrow')]),
      verifyRow('rewrite', 'Rewrite', 'move questions into the learnable band', [
        field('Rounds', input('rewrite-rounds', { type: 'number', min: 1, step: 1 }), null, 'narrow')]),
      verifyRow('translate', 'Translate', 'one row per language', [
        field('Languages', input('translate-languages', { placeholder: 'fr, ar' }), null, 'wide')]),
    ]);

    const yamlArea = reg('yaml', h('textarea', { class: 'yaml', spellcheck: 'false', wrap: 'off', rows: 24 }));
    const yamlStatus = h('div', { class: 'yaml-status muted small', testid: 'yaml-status' }, 'loading…');
    const validationBox = h('div', { class: 'validation', testid: 'validation', 'data-state': 'pending' }, h('span', { class: 'muted' }, 'Checking…'));
    const estimateBox = h('div', { class: 'estimate', testid: 'estimate', 'data-state': 'pending' }, h('span', { class: 'muted' }, '—'));
    const startBtn = h('button', { class: 'btn btn-primary btn-lg btn-block', testid: 'start-run', type: 'button' }, 'Start run');
    const startError = h('div', { class: 'start-error', testid: 'start-error', hidden: true });
    const draftLabel = h('code', { testid: 'draft-id' }, '…');

    app.append(
      pageHead('New run', h('span', null, 'Draft ', draftLabel, h('span', { class: 'muted' }, ' · uploads and the config stay with this draft')), [h('a', { class: 'btn', href: '#/runs' }, 'Back to runs')]),
      h('div', { class: 'new-grid' },
        h('div', { class: 'form-col' }, taskCard, sourceCard, filesCard, modelsCard, verifyCard),
        h('div', { class: 'side-col' },
          card('Config', [yamlArea, yamlStatus], { class: 'card-yaml', aside: h('span', { class: 'muted small' }, 'YAML · edits sync both ways') }),
          card('Validation', validationBox),
          card('Estimate', estimateBox, { aside: h('span', { class: 'muted small' }, 'dry run, nothing is sent') }),
          h('div', { class: 'start-box' }, startBtn, startError))));

    // ---- state
    const N = NEW || (NEW = { draftId: null, cfg: null, yaml: '', files: [], ready: null });
    let renderSeq = 0;
    let parseSeq = 0;
    let checkSeq = 0;
    let renderPromise = Promise.resolve();
    let parsePromise = Promise.resolve();

    function ensureModel(name) {
      if (!isObj(N.cfg.models)) N.cfg.models = {};
      if (!isObj(N.cfg.models[name])) N.cfg.models[name] = {};
      return N.cfg.models[name];
    }

    function providerOf(spec) {
      return isObj(spec) && spec.provider === 'local' ? 'local' : 'openai';
    }

    function setProvider(name, provider) {
      const spec = ensureModel(name);
      if (provider === 'local') {
        spec.provider = 'local';
        delete spec.base_url;
        delete spec.api_key_env;
      } else {
        spec.provider = 'openai';
        for (const k of LOCAL_ONLY_KEYS) delete spec[k];
        if (!spec.base_url) spec.base_url = 'http://127.0.0.1:8000/v1';
      }
    }

    function answerMode(a) {
      if (a === undefined || a === null) return ['default', ''];
      if (a === 'boxed') return ['boxed', ''];
      if (isObj(a) && typeof a.marker === 'string') return ['marker', a.marker];
      if (isObj(a) && typeof a.tag === 'string') return ['tag', a.tag];
      return ['custom', ''];
    }

    function fillForm() {
      const cfg = N.cfg || {};
      const active = document.activeElement;
      for (const f of FIELDS) {
        const el = els[f.id];
        if (!el || el === active) continue;
        el.value = formatValue(getPath(cfg, fieldPath(f, cfg)), f.kind);
      }
      const src = getPath(cfg, ['task', 'source']);
      if (active !== els['task-source']) els['task-source'].value = typeof src === 'string' ? src : 'local';
      const teacher = getPath(cfg, ['models', teacherName(cfg)]);
      if (active !== els['teacher-provider']) els['teacher-provider'].value = providerOf(teacher);
      tid('teacher-name').textContent = ` models.${teacherName(cfg)}`;
      const student = getPath(cfg, ['models', 'student']);
      els['student-enabled'].checked = isObj(student);
      if (active !== els['student-provider']) els['student-provider'].value = providerOf(student);
      for (const [name, sec] of Object.entries(SECTIONS)) els[`${name}-enabled`].checked = isObj(getPath(cfg, sec.path));
      const [mode, value] = answerMode(getPath(cfg, ['task', 'answer']));
      if (active !== els['answer-format']) els['answer-format'].value = mode;
      if (active !== els['answer-value']) els['answer-value'].value = value;
      updateVisibility();
    }

    function updateVisibility() {
      const cfg = N.cfg || {};
      const src = els['task-source'].value;
      for (const box of [localBox, webBox, distillBox]) box.hidden = box.dataset.source !== src;
      const local = els['teacher-provider'].value === 'local';
      teacherRows.baseUrl.hidden = local;
      teacherRows.key.hidden = local;
      const studentOn = els['student-enabled'].checked;
      const studentLocal = els['student-provider'].value === 'local';
      studentRows.provider.hidden = !studentOn;
      studentRows.model.hidden = !studentOn;
      studentRows.baseUrl.hidden = !studentOn || studentLocal;
      studentRows.key.hidden = !studentOn || studentLocal;
      const mode = els['answer-format'].value;
      els['answer-value'].disabled = !(mode === 'marker' || mode === 'tag');
      els['answer-value'].placeholder = mode === 'tag' ? 'answer' : mode === 'marker' ? '####' : '';
      for (const name of Object.keys(SECTIONS)) {
        const row = $(`.verify-row[data-section="${name}"]`, app);
        if (row) row.classList.toggle('off', !isObj(getPath(cfg, SECTIONS[name].path)));
      }
    }

    // Something changed: results of checks already in flight are stale.
    function markPending() {
      checkSeq++;
      validationBox.dataset.state = 'pending';
      estimateBox.dataset.state = 'pending';
      validationBox.classList.add('stale');
      estimateBox.classList.add('stale');
    }

    // A form control changed: update the config value, then re-render the YAML (which re-checks).
    function formChanged() {
      if (!N.cfg) return;
      parseYaml.cancel();
      parseSeq++;
      renderSeq++; // a render already in flight is for an older value
      markPending();
      fillForm();
      renderYaml();
    }

    const renderYaml = debounce(() => {
      const seq = ++renderSeq;
      renderPromise = (async () => {
        try {
          const r = await api('POST', '/api/config/render', { value: N.cfg });
          if (stopped || seq !== renderSeq) return;
          N.yaml = r.yaml;
          setYamlText(r.yaml);
          setYamlStatus('ok', 'in sync with the form');
        } catch (e) {
          if (stopped || seq !== renderSeq) return;
          setYamlStatus('error', `could not render the YAML: ${e.message}`);
        }
        check();
      })();
    }, 120);

    const parseYaml = debounce(() => {
      const seq = ++parseSeq;
      const text = N.yaml;
      parsePromise = (async () => {
        try {
          const r = await api('POST', '/api/config/parse', { yaml: text });
          if (stopped || seq !== parseSeq) return;
          if (isObj(r.value)) {
            N.cfg = r.value;
            fillForm();
            setYamlStatus('ok', 'form updated from the YAML');
          } else {
            setYamlStatus('error', 'the config must be a YAML mapping');
          }
        } catch (e) {
          if (stopped || seq !== parseSeq) return;
          setYamlStatus('error', e.message);
        }
        check();
      })();
    }, 400);

    function setYamlText(text) {
      if (yamlArea.value === text) return;
      const top = yamlArea.scrollTop;
      yamlArea.value = text;
      yamlArea.scrollTop = top;
    }

    function setYamlStatus(state, text) {
      yamlStatus.dataset.state = state;
      yamlStatus.className = `yaml-status small ${state === 'error' ? 'text-error' : 'muted'}`;
      yamlStatus.textContent = text;
    }

    const check = debounce(async () => {
      markPending();
      const seq = checkSeq;
      const yaml = N.yaml;
      let v;
      try {
        v = await api('POST', '/api/validate', { yaml, id: N.draftId || undefined });
      } catch (e) {
        if (stopped || seq !== checkSeq) return;
        renderValidation(null, e.message);
        renderEstimate(null, 'blocked', 'validation did not run');
        return;
      }
      if (stopped || seq !== checkSeq) return;
      renderValidation(v);
      if (!v.ok) {
        renderEstimate(null, 'blocked', 'Fix the errors to see an estimate.');
        return;
      }
      try {
        const est = await api('POST', '/api/estimate', { yaml, id: N.draftId || undefined });
        if (stopped || seq !== checkSeq) return;
        renderEstimate(est, 'ok');
      } catch (e) {
        if (stopped || seq !== checkSeq) return;
        renderEstimate(null, 'failed', e.message);
      }
    }, 350);

    function renderValidation(v, failure) {
      clear(validationBox);
      validationBox.classList.remove('stale');
      if (!v) {
        validationBox.dataset.state = 'failed';
        validationBox.append(h('div', { class: 'text-error' }, `Validation failed: ${failure}`));
        return;
      }
      const errors = v.errors || [];
      if (v.ok && errors.length === 0) {
        validationBox.dataset.state = 'ok';
        validationBox.append(h('div', { class: 'valid' }, h('span', { class: 'dot dot-ok' }), 'The config is valid.'));
        return;
      }
      validationBox.dataset.state = 'errors';
      validationBox.append(
        h('div', { class: 'invalid' }, h('span', { class: 'dot dot-error' }), errors.length === 1 ? '1 error' : `${errors.length} errors`),
        h('ul', { class: 'error-list' }, errors.map((e) => h('li', { testid: 'validation-error', 'data-key': e.key || '' },
          h('code', null, e.text || `${e.key}: ${e.message}`)))));
    }

    function renderEstimate(est, state, note) {
      clear(estimateBox);
      estimateBox.classList.remove('stale');
      estimateBox.dataset.state = state;
      if (!est) {
        estimateBox.append(h('div', { class: state === 'failed' ? 'text-error' : 'muted' }, note || '—'));
        return;
      }
      const stat = (label, value, testid) => h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, label),
        h('div', { class: 'stat-value', testid, 'data-value': String(value === null || value === undefined ? '' : value) },
          testid === 'estimate-cost' ? fmtCost(value) : fmtInt(value)));
      estimateBox.append(h('div', { class: 'stats stats-4' },
        stat('Requests', est.requests, 'estimate-requests'),
        stat('Prompt tokens', est.prompt_tokens, 'estimate-prompt-tokens'),
        stat('Completion tokens', est.completion_tokens, 'estimate-completion-tokens'),
        stat('Cost', est.cost, 'estimate-cost')));
      const per = Object.entries(est.per_model || {});
      if (per.length) {
        estimateBox.append(h('table', { class: 'table table-compact' },
          h('thead', null, h('tr', null, h('th', null, 'Model'), h('th', { class: 'num' }, 'Requests'),
            h('th', { class: 'num' }, 'Prompt tok'), h('th', { class: 'num' }, 'Compl. tok'), h('th', { class: 'num' }, 'Cost'))),
          h('tbody', null, per.map(([name, m]) => h('tr', null, h('td', null, name), h('td', { class: 'num' }, fmtInt(m.requests)),
            h('td', { class: 'num' }, fmtInt(m.prompt_tokens)), h('td', { class: 'num' }, fmtInt(m.completion_tokens)),
            h('td', { class: 'num' }, fmtCost(m.cost)))))));
      }
      if ((est.notes || []).length) estimateBox.append(h('ul', { class: 'notes' }, est.notes.map((n) => h('li', null, n))));
    }

    // ---- control handlers
    function onField(f) {
      const el = els[f.id];
      if (!el) return;
      el.addEventListener('input', () => {
        if (!N.cfg) return;
        const path = fieldPath(f, N.cfg);
        const value = parseValue(el.value, f.kind);
        const empty = value === undefined || (f.kind === 'text' && value.trim() === '') || (f.kind === 'list' && value.length === 0);
        if (empty && !f.required) deletePath(N.cfg, path);
        else setPath(N.cfg, path, value === undefined ? '' : value);
        formChanged();
      });
    }
    FIELDS.forEach(onField);

    els['task-source'].addEventListener('change', () => {
      const src = els['task-source'].value;
      setPath(N.cfg, ['task', 'source'], src);
      if (!isObj(getPath(N.cfg, ['task', src]))) setPath(N.cfg, ['task', src], src === 'local' ? { paths: ['inputs'] } : {});
      formChanged();
    });
    els['teacher-provider'].addEventListener('change', () => {
      setProvider(teacherName(N.cfg), els['teacher-provider'].value);
      formChanged();
    });
    els['student-enabled'].addEventListener('change', () => {
      if (els['student-enabled'].checked) {
        const teacher = getPath(N.cfg, ['models', teacherName(N.cfg)]);
        const copy = isObj(teacher) ? JSON.parse(JSON.stringify(teacher)) : { provider: 'local', model: '' };
        ensureModel('student');
        N.cfg.models.student = copy;
      } else if (isObj(N.cfg.models)) {
        delete N.cfg.models.student;
      }
      formChanged();
    });
    els['student-provider'].addEventListener('change', () => {
      setProvider('student', els['student-provider'].value);
      formChanged();
    });
    for (const [name, sec] of Object.entries(SECTIONS)) {
      els[`${name}-enabled`].addEventListener('change', () => {
        if (els[`${name}-enabled`].checked) {
          if (!isObj(getPath(N.cfg, sec.path))) setPath(N.cfg, sec.path, sec.init());
        } else {
          deletePath(N.cfg, sec.path);
          const verify = getPath(N.cfg, ['task', 'verify']);
          if (isObj(verify) && Object.keys(verify).length === 0) deletePath(N.cfg, ['task', 'verify']);
        }
        formChanged();
      });
    }
    els['answer-format'].addEventListener('change', () => {
      const mode = els['answer-format'].value;
      const value = els['answer-value'].value.trim();
      if (mode === 'default') deletePath(N.cfg, ['task', 'answer']);
      else if (mode === 'marker') setPath(N.cfg, ['task', 'answer'], { marker: value || '####' });
      else if (mode === 'tag') setPath(N.cfg, ['task', 'answer'], { tag: value || 'answer' });
      else if (mode === 'boxed') setPath(N.cfg, ['task', 'answer'], 'boxed');
      formChanged();
    });
    els['answer-value'].addEventListener('input', () => {
      const mode = els['answer-format'].value;
      if (mode !== 'marker' && mode !== 'tag') return;
      const cur = getPath(N.cfg, ['task', 'answer']);
      const next = isObj(cur) ? cur : {};
      next[mode] = els['answer-value'].value;
      setPath(N.cfg, ['task', 'answer'], next);
      formChanged();
    });

    yamlArea.addEventListener('input', () => {
      N.yaml = yamlArea.value;
      renderYaml.cancel();
      renderSeq++;
      parseSeq++;
      markPending();
      setYamlStatus('editing', 'editing…');
      parseYaml();
    });

    // ---- uploads
    async function refreshFiles() {
      if (!N.draftId) return;
      try {
        const r = await api('GET', `/api/drafts/${enc(N.draftId)}/files`);
        N.files = r.files || [];
      } catch (e) {
        toast(`Cannot list the uploaded files: ${e.message}`);
      }
      renderFiles();
    }

    function renderFiles() {
      clear(filesBody);
      for (const f of N.files) {
        filesBody.append(h('tr', { testid: 'file-row' }, h('td', null, f.name), h('td', { class: 'mono' }, f.path), h('td', { class: 'num' }, fmtBytes(f.bytes))));
      }
      filesTable.hidden = N.files.length === 0;
    }

    async function upload(fileList, kind) {
      const files = Array.from(fileList || []);
      if (!files.length || !N.draftId) return;
      let done = 0;
      let lastPath = null;
      const failures = [];
      for (const file of files) {
        uploadStatus.textContent = `Uploading ${done + 1} of ${files.length}: ${file.name}…`;
        try {
          const r = await api('PUT', `/api/drafts/${enc(N.draftId)}/files/${enc(file.name)}`, file);
          lastPath = r.path;
        } catch (e) {
          failures.push(`${file.name}: ${e.message}`);
        }
        done++;
      }
      if (stopped) return;
      uploadStatus.textContent = failures.length
        ? `Uploaded ${done - failures.length} of ${files.length}; failed: ${failures.join('; ')}`
        : `Uploaded ${files.length} file${files.length === 1 ? '' : 's'}.`;
      uploadStatus.className = failures.length ? 'small text-error' : 'muted small';
      await refreshFiles();
      let changed = false;
      if (kind === 'docs' && lastPath) {
        const paths = getPath(N.cfg, ['task', 'local', 'paths']);
        if (!Array.isArray(paths) || paths.length === 0) {
          setPath(N.cfg, ['task', 'local', 'paths'], ['inputs']);
          changed = true;
        }
      }
      if (kind === 'demos' && lastPath) {
        setPath(N.cfg, ['task', 'demos'], lastPath);
        changed = true;
      }
      if (changed) formChanged();
      else { markPending(); check(); }
    }
    uploadDocs.addEventListener('change', async () => { await upload(uploadDocs.files, 'docs'); uploadDocs.value = ''; });
    uploadDemos.addEventListener('change', async () => { await upload(uploadDemos.files, 'demos'); uploadDemos.value = ''; });

    // ---- start
    startBtn.addEventListener('click', async () => {
      startBtn.disabled = true;
      startBtn.textContent = 'Starting…';
      startError.hidden = true;
      try {
        // Send what the user sees: a form edit not yet rendered is rendered now; typed YAML goes as typed.
        if (renderYaml.pending()) { renderYaml.cancel(); await flushRender(); }
        await renderPromise;
        parseYaml.cancel();
        const r = await api('POST', '/api/runs', { id: N.draftId || undefined, yaml: N.yaml });
        NEW = null;
        location.hash = `#/run/${enc(r.id)}`;
      } catch (e) {
        if (stopped) return;
        if (e.data && Array.isArray(e.data.errors)) renderValidation({ ok: false, errors: e.data.errors });
        startError.hidden = false;
        startError.textContent = `Could not start: ${e.message}`;
        startBtn.disabled = false;
        startBtn.textContent = 'Start run';
      }
    });

    async function flushRender() {
      const seq = ++renderSeq;
      try {
        const r = await api('POST', '/api/config/render', { value: N.cfg });
        if (seq === renderSeq) { N.yaml = r.yaml; setYamlText(r.yaml); }
      } catch (e) { /* the server validates what it gets */ }
    }

    // ---- load
    async function init() {
      try {
        if (!N.cfg) {
          const [defaults, draft] = await Promise.all([api('GET', '/api/defaults'), N.draftId ? null : api('POST', '/api/drafts')]);
          if (draft) N.draftId = draft.id;
          N.yaml = defaults.yaml || '';
          const parsed = await api('POST', '/api/config/parse', { yaml: N.yaml });
          N.cfg = isObj(parsed.value) ? parsed.value : {};
        }
      } catch (e) {
        if (stopped) return;
        setYamlStatus('error', `could not load the defaults: ${e.message}`);
        toast(`Could not prepare a new run: ${e.message}`);
        return;
      }
      if (stopped) return;
      draftLabel.textContent = N.draftId || '—';
      yamlArea.value = N.yaml;
      setYamlStatus('ok', 'starter recipe');
      fillForm();
      renderFiles();
      refreshFiles();
      markPending();
      check();
    }
    init();

    return () => {
      stopped = true;
      renderYaml.cancel();
      parseYaml.cancel();
      check.cancel();
    };
  }

  // ---------------------------------------------------------------- #/run/<id>

  // The kinds of node, from the server's table of kinds (GET /api/kinds): role and whether it calls models.
  let kindsByName = new Map();
  const kindsLoaded = api('GET', '/api/kinds')
    .then((r) => { kindsByName = new Map((r.kinds || []).map((k) => [k.name, k])); })
    .catch(() => {});

  function nodeCategory(n) {
    const kind = kindsByName.get(n.kind);
    if (kind ? kind.role === 'source' : !n.inputs || n.inputs.length === 0) return 'source';
    if (kind ? kind.role === 'sink' : n.kind === 'sink') return 'sink';
    if (kind && kind.calls_models) return 'model';
    return 'op';
  }

  // Layers by longest path from the sources; in-layer order by the barycenter of the inputs.
  function layoutGraph(graph) {
    const byId = new Map(graph.map((n) => [n.id, n]));
    const layer = new Map();
    const visiting = new Set();
    function depth(id) {
      if (layer.has(id)) return layer.get(id);
      if (visiting.has(id)) return 0;
      visiting.add(id);
      let d = 0;
      for (const i of byId.get(id).inputs || []) if (byId.has(i)) d = Math.max(d, depth(i) + 1);
      visiting.delete(id);
      layer.set(id, d);
      return d;
    }
    graph.forEach((n) => depth(n.id));
    const layers = [];
    graph.forEach((n) => { const d = layer.get(n.id); (layers[d] = layers[d] || []).push(n.id); });
    for (let i = 0; i < layers.length; i++) layers[i] = layers[i] || [];
    const pos = new Map();
    layers.forEach((ids) => ids.forEach((id, i) => pos.set(id, i)));
    for (let pass = 0; pass < 2; pass++) {
      for (let li = 1; li < layers.length; li++) {
        const bary = (id) => {
          const ins = (byId.get(id).inputs || []).filter((i) => pos.has(i));
          return ins.length ? ins.reduce((a, i) => a + pos.get(i), 0) / ins.length : pos.get(id);
        };
        const keyed = layers[li].map((id) => [id, bary(id)]);
        keyed.sort((a, b) => a[1] - b[1]);
        layers[li] = keyed.map((k) => k[0]);
        layers[li].forEach((id, i) => pos.set(id, i));
      }
    }
    return { layers, byId };
  }

  function drawGraph(graph) {
    const W = 178, H = 104, GX = 40, GY = 22, PAD = 12;
    const { layers, byId } = layoutGraph(graph);
    const maxCount = Math.max(1, ...layers.map((l) => l.length));
    const totalH = maxCount * (H + GY) - GY;
    const width = PAD * 2 + layers.length * (W + GX) - GX;
    const height = PAD * 2 + totalH;
    const at = new Map();
    layers.forEach((ids, li) => {
      const layerH = ids.length * (H + GY) - GY;
      ids.forEach((id, i) => at.set(id, { x: PAD + li * (W + GX), y: PAD + (totalH - layerH) / 2 + i * (H + GY) }));
    });
    const svg = s('svg', {
      class: 'graph', testid: 'graph', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'run graph',
      style: `max-width:${width}px;min-width:${Math.round(width * 0.8)}px`,
    });
    svg.append(s('defs', null, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow' }))));
    const edges = s('g', { class: 'edges' });
    for (const n of graph) {
      for (const input of n.inputs || []) {
        const a = at.get(input), b = at.get(n.id);
        if (!a || !b) continue;
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2;
        const dx = Math.max(24, (x2 - x1) / 2);
        edges.append(s('path', { class: 'edge', 'data-from': input, 'data-to': n.id, d: `M ${x1} ${y1} C ${x1 + dx} ${y1}, ${x2 - dx} ${y2}, ${x2} ${y2}`, 'marker-end': 'url(#arrow)' }));
      }
    }
    svg.append(edges);
    const refs = {};
    for (const n of graph) {
      const p = at.get(n.id);
      const t = (cls, x, y, testid, text) => s('text', { class: cls, x, y, testid }, text);
      const idText = n.id.length > 22 ? n.id.slice(0, 21) + '…' : n.id;
      const g = s('g', { class: `node node-${nodeCategory(n)}`, testid: `node-${n.id}`, 'data-node': n.id, transform: `translate(${p.x},${p.y})` },
        s('title', null, `${n.kind} ${n.id}`),
        s('rect', { class: 'node-box', width: W, height: H, rx: 8, ry: 8 }),
        s('rect', { class: 'node-accent', width: 5, height: H, rx: 2, ry: 2 }),
        t('node-kind', 14, 19, null, n.kind),
        t('node-id', 14, 37, null, idText),
        t('node-label', 14, 57, null, 'in'), t('node-label', 68, 57, null, 'out'), t('node-label', 122, 57, null, 'rej'),
        t('node-num', 14, 74, `node-${n.id}-in`, '0'),
        t('node-num node-out', 68, 74, `node-${n.id}-out`, '0'),
        t('node-num node-rej', 122, 74, `node-${n.id}-rejected`, '0'),
        s('text', { class: 'node-foot', x: 14, y: 94 },
          s('tspan', { testid: `node-${n.id}-inflight` }, '0'), s('tspan', { class: 'node-unit' }, ' in flight · '),
          s('tspan', { testid: `node-${n.id}-tokens` }, '0'), s('tspan', { class: 'node-unit' }, ' tok · '),
          s('tspan', { testid: `node-${n.id}-rate` }, '0'), s('tspan', { class: 'node-unit' }, '/s')));
      refs[n.id] = {
        g,
        in: g.querySelector(`[data-testid="node-${CSS.escape(n.id)}-in"]`),
        out: g.querySelector(`[data-testid="node-${CSS.escape(n.id)}-out"]`),
        rej: g.querySelector(`[data-testid="node-${CSS.escape(n.id)}-rejected"]`),
        inflight: g.querySelector(`[data-testid="node-${CSS.escape(n.id)}-inflight"]`),
        tokens: g.querySelector(`[data-testid="node-${CSS.escape(n.id)}-tokens"]`),
        rate: g.querySelector(`[data-testid="node-${CSS.escape(n.id)}-rate"]`),
      };
      svg.append(g);
    }
    return { svg, refs, byId };
  }

  function runPage(id) {
    let stopped = false;
    let es = null;
    let pollTimer = null;
    let graphRefs = null;
    let graphNodes = null;
    let summary = null;
    let lastProgress = null;
    let resumeGuard = null; // {from, until}: ignore the old terminal status right after a resume
    let cancelling = false;

    const nameEl = h('span', { testid: 'run-name' }, id);
    const statusEl = badge('loading', 'run-status');
    const cancelBtn = h('button', { class: 'btn btn-danger', testid: 'cancel', hidden: true, type: 'button' }, 'Cancel');
    const resumeBtn = h('button', { class: 'btn btn-warn', testid: 'resume', hidden: true, type: 'button' }, 'Resume');
    const dataLink = h('a', { class: 'btn', href: `#/data/${enc(id)}`, testid: 'open-data' }, 'Data');
    const fill = h('div', { class: 'progress-fill' });
    const pctEl = h('span', { class: 'progress-pct', testid: 'progress-pct' }, '0%');
    const etaEl = h('span', { testid: 'progress-eta' }, 'ETA —');
    const elapsedEl = h('span', { testid: 'progress-elapsed' }, 'elapsed —');
    const progressEl = h('div', { class: 'progress', testid: 'progress', 'data-fraction': '' },
      h('div', { class: 'progress-track' }, fill),
      h('div', { class: 'progress-meta' }, pctEl, h('span', { class: 'muted' }, etaEl, ' · ', elapsedEl)));
    const stat = (label, testid) => {
      const v = h('div', { class: 'stat-value', testid }, '—');
      return [h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, label), v), v];
    };
    const [rowsBox, rowsEl] = stat('Rows', 'stat-rows');
    const [rejBox, rejEl] = stat('Rejected', 'stat-rejected');
    const [reqBox, reqEl] = stat('Requests', 'stat-requests');
    const [costBox, costEl] = stat('Cost', 'stat-cost');
    const graphWrap = h('div', { class: 'graph-wrap' }, h('div', { class: 'muted' }, 'Loading…'));
    const modelsBody = h('tbody');
    const modelsTable = h('table', { class: 'table table-compact', testid: 'models-table' },
      h('thead', null, h('tr', null, h('th', null, 'Endpoint'), h('th', { class: 'num' }, 'Requests'), h('th', { class: 'num' }, 'Cache hits'),
        h('th', { class: 'num' }, 'Prompt tokens'), h('th', { class: 'num' }, 'Completion tokens'), h('th', { class: 'num' }, 'Cost'))),
      modelsBody);
    const yamlPre = h('pre', { class: 'code', testid: 'run-yaml' });
    const errorsBox = h('div', { class: 'run-errors', hidden: true });

    app.append(
      pageHead(nameEl, h('span', { class: 'mono' }, id), [statusEl, cancelBtn, resumeBtn, dataLink]),
      errorsBox,
      card('Progress', [progressEl, h('div', { class: 'stats stats-4' }, rowsBox, rejBox, reqBox, costBox)]),
      card('Graph', graphWrap, { aside: h('span', { class: 'legend' },
        h('span', { class: 'lg lg-source' }, 'source'), h('span', { class: 'lg lg-op' }, 'operator'),
        h('span', { class: 'lg lg-model' }, 'model'), h('span', { class: 'lg lg-sink' }, 'sink')) }),
      card('Models', h('div', { class: 'table-wrap' }, modelsTable)),
      card('Config', h('details', null, h('summary', null, 'config.yaml'), yamlPre)));

    function currentStatus() {
      return summary ? summary.status : null;
    }

    function applyStatus(status, active) {
      if (resumeGuard) {
        if (status === 'running' || active) resumeGuard = null;
        else if (Date.now() < resumeGuard.until && status === resumeGuard.from) status = 'running';
        else resumeGuard = null;
      }
      setBadge(statusEl, status);
      const running = status === 'running';
      if (!running) cancelling = false;
      cancelBtn.hidden = !running;
      cancelBtn.disabled = cancelling;
      cancelBtn.textContent = cancelling ? 'Cancelling…' : 'Cancel';
      const resumable = status === 'interrupted' || status === 'failed' || (summary && summary.resumable && !summary.active && status !== 'completed');
      resumeBtn.hidden = running || !resumable;
      resumeBtn.disabled = false;
      dataLink.hidden = status === 'draft';
      return status;
    }

    function applySummary(sum) {
      summary = Object.assign({}, summary || {}, sum);
      nameEl.textContent = summary.name || id;
      document.title = `${summary.name || id} · sdg`;
      const status = applyStatus(summary.status, summary.active);
      summary.shownStatus = status;
      if (!lastProgress || TERMINAL.has(status)) {
        rowsEl.textContent = fmtInt(summary.rows);
        rejEl.textContent = fmtInt(summary.rejected);
      }
      reqEl.textContent = fmtInt(summary.requests);
      costEl.textContent = fmtCost(summary.cost);
      if (status === 'completed') setProgress(1, 0, summary.elapsed_s);
      else if (!lastProgress) setProgress(null, null, summary.elapsed_s, status !== 'running');
    }

    function setProgress(fraction, eta, elapsed, idle) {
      const known = fraction !== null && fraction !== undefined && Number.isFinite(Number(fraction));
      const f = known ? Math.max(0, Math.min(1, Number(fraction))) : null;
      progressEl.dataset.fraction = known ? String(f) : '';
      progressEl.classList.toggle('indeterminate', !known && !idle);
      fill.style.width = known ? `${(f * 100).toFixed(1)}%` : (idle ? '0%' : '30%');
      pctEl.textContent = known ? `${Math.floor(f * 100)}%` : '—';
      etaEl.textContent = f === 1 ? 'done' : `ETA ${eta === null || eta === undefined ? '—' : fmtDuration(eta)}`;
      elapsedEl.textContent = `elapsed ${fmtDuration(elapsed)}`;
    }

    function applyNodes(nodes) {
      if (!graphRefs || !nodes) return;
      for (const [nid, st] of Object.entries(nodes)) {
        const r = graphRefs[nid];
        if (!r) continue;
        r.in.textContent = fmtInt(st.rows_in || 0);
        r.out.textContent = fmtInt(st.rows_out || 0);
        r.rej.textContent = fmtInt(st.rejected || 0);
        r.out.setAttribute('data-value', String(st.rows_out || 0));
        r.inflight.textContent = fmtInt(st.in_flight || 0);
        r.tokens.textContent = fmtCompact((st.prompt_tokens || 0) + (st.completion_tokens || 0));
        r.rate.textContent = st.rows_per_s === undefined || st.rows_per_s === null ? '—' : fmtCompact(st.rows_per_s);
        r.g.classList.toggle('busy', (st.in_flight || 0) > 0);
        r.g.classList.toggle('has-rejects', (st.rejected || 0) > 0);
      }
    }

    function applyModels(models) {
      clear(modelsBody);
      const entries = Object.entries(models || {});
      if (!entries.length) {
        modelsBody.append(h('tr', null, h('td', { colspan: 6, class: 'muted' }, 'No model calls yet.')));
        return;
      }
      for (const [name, m] of entries) {
        modelsBody.append(h('tr', { 'data-endpoint': name }, h('td', { class: 'mono' }, name), h('td', { class: 'num' }, fmtInt(m.requests)),
          h('td', { class: 'num' }, fmtInt(m.cache_hits)), h('td', { class: 'num' }, fmtInt(m.prompt_tokens)),
          h('td', { class: 'num' }, fmtInt(m.completion_tokens)), h('td', { class: 'num' }, fmtCost(m.cost))));
      }
    }

    function applyProgress(p) {
      if (!p) return;
      lastProgress = p;
      if (p.status) applyStatus(p.status, p.status === 'running');
      const shown = statusEl.dataset.status;
      setProgress(shown === 'completed' ? 1 : p.fraction, shown === 'running' ? p.eta_s : null, p.elapsed_s, shown !== 'running');
      applyNodes(p.nodes);
      applyModels(p.models);
      if (graphNodes && p.nodes) {
        let rows = 0, rejected = 0;
        // A resumed run's sink skips what earlier processes committed; those rows count too.
        for (const n of graphNodes) if (n.kind === 'sink' && p.nodes[n.id]) rows += (p.nodes[n.id].rows_out || p.nodes[n.id].rows_in || 0) + (p.nodes[n.id].already_committed || 0);
        for (const st of Object.values(p.nodes)) rejected += st.rejected || 0;
        rowsEl.textContent = fmtInt(rows);
        rejEl.textContent = fmtInt(rejected);
        let requests = 0, cost = 0, anyCost = false;
        for (const m of Object.values(p.models || {})) {
          requests += m.requests || 0;
          if (m.cost !== null && m.cost !== undefined) { cost += m.cost; anyCost = true; }
        }
        if (p.models && Object.keys(p.models).length) {
          reqEl.textContent = fmtInt(requests);
          costEl.textContent = anyCost ? fmtCost(cost) : '—';
        } else {
          // While the run works the endpoints' totals are not written yet: the nodes' own calls are.
          let calls = 0;
          for (const st of Object.values(p.nodes)) calls += st.model_calls || 0;
          reqEl.textContent = fmtInt(calls);
        }
      }
    }

    function applyManifest(m) {
      if (!m) return;
      if (m.nodes) applyNodes(m.nodes);
      if (m.models) applyModels(m.models);
      if (Array.isArray(m.errors) && m.errors.length) {
        errorsBox.hidden = false;
        clear(errorsBox).append(h('strong', null, 'Errors'), h('ul', null, m.errors.map((e) => h('li', null, e))));
      } else {
        errorsBox.hidden = true;
      }
    }

    function connect() {
      if (es || stopped) return;
      const source = new EventSource(withToken(`/api/runs/${enc(id)}/events`));
      es = source;
      source.addEventListener('progress', (ev) => {
        try { applyProgress(JSON.parse(ev.data)); } catch (e) { /* a malformed event is skipped */ }
      });
      source.addEventListener('status', (ev) => {
        let sum;
        try { sum = JSON.parse(ev.data); } catch (e) { return; }
        applySummary(sum);
        if (TERMINAL.has(sum.status) && !sum.active) {
          closeStream();
          refresh();
        }
      });
      source.onerror = () => {
        // The stream ends after the final status; do not let the browser reconnect to a finished run.
        if (source.readyState === EventSource.CLOSED || TERMINAL.has(statusEl.dataset.status)) {
          if (es === source) closeStream();
          schedulePoll(500);
        }
      };
    }

    function closeStream() {
      if (es) es.close();
      es = null;
    }

    function schedulePoll(ms) {
      clearTimeout(pollTimer);
      if (!stopped) pollTimer = setTimeout(refresh, ms);
    }

    async function refresh() {
      let r;
      try {
        r = await api('GET', `/api/runs/${enc(id)}`);
      } catch (e) {
        if (stopped) return;
        if (e.status === 404) {
          clear(graphWrap).append(h('div', { class: 'text-error' }, `No run ${id}.`));
          setBadge(statusEl, 'unknown');
          return;
        }
        schedulePoll(3000);
        return;
      }
      if (stopped) return;
      if (!graphRefs && Array.isArray(r.graph)) {
        await kindsLoaded;
        if (stopped || graphRefs) return;
        clear(graphWrap);
        if (r.graph.length) {
          const drawn = drawGraph(r.graph);
          graphRefs = drawn.refs;
          graphNodes = r.graph;
          graphWrap.append(drawn.svg);
        } else {
          graphWrap.append(h('div', { class: 'muted' }, 'No graph yet (the run has not started).'));
        }
      }
      if (r.yaml !== undefined && yamlPre.textContent !== r.yaml) yamlPre.textContent = r.yaml || '';
      applySummary(r.summary || {});
      const live = r.summary && (r.summary.active || r.summary.status === 'running');
      if (r.progress && !es) applyProgress(r.progress);
      if (!live && r.manifest) applyManifest(r.manifest);
      if (!live && !r.progress && !r.manifest) applyModels({});
      if (live) connect();
      const guarded = resumeGuard !== null;
      if (live || guarded) schedulePoll(es ? 3000 : 1000);
      else schedulePoll(15000);
    }

    cancelBtn.addEventListener('click', async () => {
      cancelling = true;
      cancelBtn.disabled = true;
      cancelBtn.textContent = 'Cancelling…';
      try {
        await api('POST', `/api/runs/${enc(id)}/cancel`);
        schedulePoll(500);
      } catch (e) {
        cancelling = false;
        cancelBtn.disabled = false;
        cancelBtn.textContent = 'Cancel';
        toast(`Cancel failed: ${e.message}`);
      }
    });

    resumeBtn.addEventListener('click', async () => {
      resumeBtn.disabled = true;
      const from = statusEl.dataset.status;
      try {
        await api('POST', `/api/runs/${enc(id)}/resume`);
        resumeGuard = { from, until: Date.now() + 8000 };
        lastProgress = null;
        applyStatus('running', true);
        closeStream();
        connect();
        schedulePoll(300);
      } catch (e) {
        resumeBtn.disabled = false;
        toast(`Resume failed: ${e.message}`);
      }
    });

    refresh();
    return () => {
      stopped = true;
      clearTimeout(pollTimer);
      closeStream();
      document.title = 'sdg';
    };
  }

  // ---------------------------------------------------------------- #/data/<id>

  const PREFERRED_COLUMNS = ['question', 'answer', 'category', 'pass_rate', 'agreement', 'language', 'source_path'];
  const FALLBACK_FORMATS = ['verl-rl', 'verl-sft', 'messages', 'alpaca', 'sharegpt', 'jsonl'];

  function snippet(text, q, width) {
    const i = text.toLowerCase().indexOf(q.toLowerCase());
    if (i < 0) return null;
    const start = Math.max(0, i - width);
    const end = Math.min(text.length, i + q.length + width);
    return [start > 0 ? '…' : '', text.slice(start, i), h('mark', null, text.slice(i, i + q.length)), text.slice(i + q.length, end), end < text.length ? '…' : ''];
  }

  function dataPage(id, initialRecord) {
    let stopped = false;
    const D = {
      offset: 0, limit: 50, seq: 0, total: 0, columns: [], rows: [], categories: [], sources: [],
      filters: { category: '', source: '', min_agreement: '', min_pass_rate: '', max_pass_rate: '', q: '' },
      rej: { offset: 0, limit: 50, q: '', seq: 0, total: 0, loaded: false },
      tab: 'data', record: null,
    };

    const tabData = h('button', { class: 'tab active', testid: 'tab-data', type: 'button' }, 'Records');
    const tabRejects = h('button', { class: 'tab', testid: 'tab-rejects', type: 'button' }, 'Rejects');
    const exportsBox = h('div', { class: 'exports' }, h('span', { class: 'muted small' }, 'Download'));

    const fCategory = h('select', { testid: 'filter-category' }, h('option', { value: '' }, 'any category'));
    const fSource = h('select', { testid: 'filter-source' }, h('option', { value: '' }, 'any source'));
    const fMinAgreement = h('input', { type: 'number', min: 0, max: 1, step: 0.05, placeholder: '0–1', testid: 'filter-min-agreement' });
    const fMinPass = h('input', { type: 'number', min: 0, max: 1, step: 0.05, placeholder: 'min', testid: 'filter-min-pass-rate' });
    const fMaxPass = h('input', { type: 'number', min: 0, max: 1, step: 0.05, placeholder: 'max', testid: 'filter-max-pass-rate' });
    const fQ = h('input', { type: 'search', placeholder: 'Search text…', testid: 'filter-q', class: 'search' });
    const fReset = h('button', { class: 'btn btn-sm', testid: 'filter-reset', type: 'button' }, 'Reset');
    const filterBar = h('div', { class: 'filters' },
      h('label', { class: 'filter' }, h('span', null, 'Category'), fCategory),
      h('label', { class: 'filter' }, h('span', null, 'Source'), fSource),
      h('label', { class: 'filter narrow' }, h('span', null, 'Min agreement'), fMinAgreement),
      h('label', { class: 'filter' }, h('span', null, 'Pass rate'), h('span', { class: 'range' }, fMinPass, '–', fMaxPass)),
      h('label', { class: 'filter grow' }, h('span', null, 'Search'), fQ),
      fReset);

    const dataHead = h('thead');
    const dataBody = h('tbody');
    const dataTable = h('table', { class: 'table table-data', testid: 'data-table', 'data-loading': '1', 'data-q': '' }, dataHead, dataBody);
    const rangeEl = h('span', { testid: 'rows-range' }, '—');
    const totalEl = h('span', { testid: 'rows-total' }, '0');
    const prevBtn = h('button', { class: 'btn btn-sm', testid: 'page-prev', type: 'button' }, '← Prev');
    const nextBtn = h('button', { class: 'btn btn-sm', testid: 'page-next', type: 'button' }, 'Next →');
    const pager = h('div', { class: 'pager' }, h('span', { class: 'muted' }, 'rows ', rangeEl, ' of ', totalEl), h('div', { class: 'btn-row' }, prevBtn, nextBtn));
    const dataPane = h('div', { class: 'tab-pane' }, filterBar, h('div', { class: 'table-wrap' }, dataTable), pager);

    const rejQ = h('input', { type: 'search', placeholder: 'Search rejects…', testid: 'rejects-q', class: 'search' });
    const rejBody = h('tbody');
    const rejTable = h('table', { class: 'table table-data', testid: 'rejects-table', 'data-loading': '0' },
      h('thead', null, h('tr', null, h('th', null, 'Node'), h('th', null, 'Reason'), h('th', null, 'Source'), h('th', null, 'Id'))), rejBody);
    const rejTotal = h('span', { testid: 'rejects-total' }, '0');
    const rejRange = h('span', null, '—');
    const rejPrev = h('button', { class: 'btn btn-sm', testid: 'rejects-prev', type: 'button' }, '← Prev');
    const rejNext = h('button', { class: 'btn btn-sm', testid: 'rejects-next', type: 'button' }, 'Next →');
    const rejPane = h('div', { class: 'tab-pane', hidden: true },
      h('div', { class: 'filters' }, h('label', { class: 'filter grow' }, h('span', null, 'Search'), rejQ)),
      h('div', { class: 'table-wrap' }, rejTable),
      h('div', { class: 'pager' }, h('span', { class: 'muted' }, 'rejects ', rejRange, ' of ', rejTotal), h('div', { class: 'btn-row' }, rejPrev, rejNext)));

    const recordView = h('aside', { class: 'drawer', testid: 'record-view', hidden: true });
    const backdrop = h('div', { class: 'drawer-backdrop', hidden: true, onclick: () => closeRecord() });
    const nameEl = h('span', null, id);

    app.append(
      pageHead(h('span', null, 'Data · ', nameEl), h('span', { class: 'mono' }, id),
        [h('a', { class: 'btn', href: `#/run/${enc(id)}` }, 'Run')]),
      card(null, [h('div', { class: 'tabs-row' }, h('div', { class: 'tabs' }, tabData, tabRejects), exportsBox), dataPane, rejPane]),
      backdrop, recordView);

    // ---- exports
    (async () => {
      let formats = FALLBACK_FORMATS.map((name) => ({ name, description: '' }));
      try {
        const r = await api('GET', '/api/formats');
        if (r && Array.isArray(r.formats) && r.formats.length) formats = r.formats;
      } catch (e) { /* the fallback list */ }
      if (stopped) return;
      for (const f of formats) {
        exportsBox.append(h('a', { class: 'btn btn-sm', href: withToken(`/api/runs/${enc(id)}/export/${enc(f.name)}`), download: '',
          title: f.description || `${f.name} (train split)`, testid: `export-${f.name}` }, f.name));
      }
    })();
    api('GET', `/api/runs/${enc(id)}`).then((r) => {
      if (!stopped && r && r.summary && r.summary.name) nameEl.textContent = r.summary.name;
    }).catch(() => {});

    // ---- records table
    function visibleColumns() {
      const cols = D.columns;
      const chosen = PREFERRED_COLUMNS.filter((c) => cols.includes(c));
      if (chosen.length >= 2) return chosen;
      return cols.filter((c) => c !== 'id').slice(0, 6);
    }

    function highlight(text, q) {
      if (!q) return text;
      const lower = text.toLowerCase();
      const needle = q.toLowerCase();
      const out = [];
      let at = 0;
      for (let i = lower.indexOf(needle); i >= 0; i = lower.indexOf(needle, at)) {
        out.push(text.slice(at, i), h('mark', null, text.slice(i, i + q.length)));
        at = i + q.length;
      }
      out.push(text.slice(at));
      return out;
    }

    function renderTable() {
      const cols = visibleColumns();
      const q = D.filters.q.trim();
      const ql = q.toLowerCase();
      // Cells show the first 120 characters; a row whose match is elsewhere gets a "match" snippet.
      const shown = (row, c) => (typeof row[c] === 'number' ? fmtNum(row[c]) : truncate(cellText(row[c]), 120));
      const matches = D.rows.map((row) => {
        if (!q || cols.some((c) => shown(row, c).toLowerCase().includes(ql))) return null;
        for (const c of D.columns) {
          const v = row[c];
          if (typeof v !== 'string') continue;
          const sn = snippet(v, q, 40);
          if (sn) return [h('span', { class: 'muted small' }, c + ': '), sn];
        }
        return null;
      });
      const matchCol = matches.some((m) => m !== null);
      clear(dataHead).append(h('tr', null, h('th', null, 'id'), cols.map((c) => h('th', { class: numericCol(c) ? 'num' : '' }, c)),
        matchCol ? h('th', null, 'match') : null));
      clear(dataBody);
      if (!D.rows.length) {
        dataBody.append(h('tr', { class: 'empty-row' }, h('td', { colspan: cols.length + 2, class: 'muted' }, 'No rows match.')));
      }
      D.rows.forEach((row, i) => {
        const rid = row.id === undefined || row.id === null ? '' : String(row.id);
        const tr = h('tr', { testid: 'data-row', 'data-record-id': rid, class: 'clickable' + (rid === D.record ? ' selected' : ''),
          onclick: () => { if (rid) location.hash = `#/record/${enc(id)}/${enc(rid)}`; } },
        h('td', { class: 'mono small nowrap', title: rid }, rid.slice(0, 10)),
        cols.map((c) => {
          const text = cellText(row[c]);
          if (c === 'category' && text) return h('td', null, h('span', { class: `pill pill-${text}` }, text));
          return h('td', { class: numericCol(c) ? 'num' : '', title: text.length > 120 ? text.slice(0, 2000) : null },
            highlight(shown(row, c), q));
        }),
        matchCol ? h('td', { class: 'match' }, matches[i]) : null);
        dataBody.append(tr);
      });
      const a = D.total === 0 ? 0 : D.offset + 1;
      const b = D.offset + D.rows.length;
      rangeEl.textContent = D.total === 0 ? '0' : `${fmtInt(a)}–${fmtInt(b)}`;
      totalEl.textContent = String(D.total);
      prevBtn.disabled = D.offset === 0;
      nextBtn.disabled = b >= D.total;
    }

    function numericCol(c) {
      return c === 'pass_rate' || c === 'agreement' || c.endsWith('_tokens');
    }

    function setOptions(sel, values, anyLabel) {
      const cur = sel.value;
      const all = Array.from(new Set([...(values || []).map(String), ...(cur ? [cur] : [])]));
      clear(sel).append(h('option', { value: '' }, anyLabel), ...all.map((v) => h('option', { value: v }, v)));
      sel.value = cur;
    }

    async function loadData() {
      const seq = ++D.seq;
      dataTable.dataset.loading = '1';
      const params = new URLSearchParams({ offset: String(D.offset), limit: String(D.limit) });
      for (const [k, v] of Object.entries(D.filters)) if (String(v).trim() !== '') params.set(k, String(v).trim());
      let r;
      try {
        r = await api('GET', `/api/runs/${enc(id)}/data?${params}`);
      } catch (e) {
        if (stopped || seq !== D.seq) return;
        dataTable.dataset.loading = '0';
        clear(dataBody).append(h('tr', null, h('td', { class: 'text-error' }, `Cannot load the data: ${e.message}`)));
        return;
      }
      if (stopped || seq !== D.seq) return;
      D.columns = r.columns || (r.rows && r.rows[0] ? Object.keys(r.rows[0]) : []);
      D.rows = r.rows || [];
      D.total = Number(r.total) || 0;
      setOptions(fCategory, r.categories, 'any category');
      setOptions(fSource, r.sources, 'any source');
      renderTable();
      dataTable.dataset.q = D.filters.q.trim();
      dataTable.dataset.loading = '0';
    }

    const reloadSoon = debounce(() => { D.offset = 0; loadData(); }, 300);
    function bindFilter(el, key, immediate) {
      el.addEventListener(immediate ? 'change' : 'input', () => {
        D.filters[key] = el.value;
        dataTable.dataset.loading = '1';
        if (immediate) { reloadSoon.cancel(); D.offset = 0; loadData(); } else reloadSoon();
      });
    }
    bindFilter(fCategory, 'category', true);
    bindFilter(fSource, 'source', true);
    bindFilter(fMinAgreement, 'min_agreement');
    bindFilter(fMinPass, 'min_pass_rate');
    bindFilter(fMaxPass, 'max_pass_rate');
    bindFilter(fQ, 'q');
    fReset.addEventListener('click', () => {
      for (const k of Object.keys(D.filters)) D.filters[k] = '';
      for (const el of [fCategory, fSource, fMinAgreement, fMinPass, fMaxPass, fQ]) el.value = '';
      D.offset = 0;
      loadData();
    });
    prevBtn.addEventListener('click', () => { D.offset = Math.max(0, D.offset - D.limit); loadData(); });
    nextBtn.addEventListener('click', () => { D.offset += D.limit; loadData(); });

    // ---- rejects
    function renderRejects(r) {
      clear(rejBody);
      const rows = r.rows || [];
      if (!rows.length) rejBody.append(h('tr', null, h('td', { colspan: 4, class: 'muted' }, 'No rejects.')));
      for (const row of rows) {
        const detail = h('tr', { class: 'detail', hidden: true },
          h('td', { colspan: 4 }, h('pre', { class: 'code' }, prettyValue(row.record))));
        const tr = h('tr', { testid: 'reject-row', class: 'clickable', onclick: () => { detail.hidden = !detail.hidden; } },
          h('td', { class: 'mono' }, row.node || ''),
          h('td', { class: 'reason' }, truncate(cellText(row.reason), 300)),
          h('td', { class: 'small' }, truncate(cellText(row.source_path), 80)),
          h('td', { class: 'mono small', title: cellText(row.id) }, cellText(row.id).slice(0, 10)));
        rejBody.append(tr, detail);
      }
      const total = Number(r.total) || 0;
      D.rej.total = total;
      rejTotal.textContent = String(total);
      rejRange.textContent = total === 0 ? '0' : `${fmtInt(D.rej.offset + 1)}–${fmtInt(D.rej.offset + rows.length)}`;
      rejPrev.disabled = D.rej.offset === 0;
      rejNext.disabled = D.rej.offset + rows.length >= total;
    }

    async function loadRejects() {
      const seq = ++D.rej.seq;
      rejTable.dataset.loading = '1';
      const params = new URLSearchParams({ offset: String(D.rej.offset), limit: String(D.rej.limit) });
      if (D.rej.q.trim()) params.set('q', D.rej.q.trim());
      try {
        const r = await api('GET', `/api/runs/${enc(id)}/rejects?${params}`);
        if (stopped || seq !== D.rej.seq) return;
        renderRejects(r);
        D.rej.loaded = true;
      } catch (e) {
        if (stopped || seq !== D.rej.seq) return;
        clear(rejBody).append(h('tr', null, h('td', { colspan: 4, class: 'text-error' }, `Cannot load the rejects: ${e.message}`)));
      }
      rejTable.dataset.loading = '0';
    }
    const rejSoon = debounce(() => { D.rej.offset = 0; loadRejects(); }, 300);
    rejQ.addEventListener('input', () => { D.rej.q = rejQ.value; rejSoon(); });
    rejPrev.addEventListener('click', () => { D.rej.offset = Math.max(0, D.rej.offset - D.rej.limit); loadRejects(); });
    rejNext.addEventListener('click', () => { D.rej.offset += D.rej.limit; loadRejects(); });

    function showTab(tab) {
      D.tab = tab;
      tabData.classList.toggle('active', tab === 'data');
      tabRejects.classList.toggle('active', tab === 'rejects');
      dataPane.hidden = tab !== 'data';
      rejPane.hidden = tab !== 'rejects';
      if (tab === 'rejects' && !D.rej.loaded) loadRejects();
    }
    tabData.addEventListener('click', () => showTab('data'));
    tabRejects.addEventListener('click', () => showTab('rejects'));

    // ---- record view
    function prettyValue(v) {
      if (v === null || v === undefined) return '';
      if (typeof v === 'string') {
        const t = v.trim();
        if ((t.startsWith('{') && t.endsWith('}')) || (t.startsWith('[') && t.endsWith(']'))) {
          try { return JSON.stringify(JSON.parse(t), null, 2); } catch (e) { return v; }
        }
        return v;
      }
      return JSON.stringify(v, null, 2);
    }

    function kvTable(obj, testid) {
      const entries = Object.entries(obj || {});
      return h('table', { class: 'kv', testid }, h('tbody', null, entries.map(([k, v]) =>
        h('tr', null, h('th', null, k), h('td', null, h('div', { class: 'kv-value' }, prettyValue(v)))))));
    }

    function listBlock(items, testid, render) {
      return h('ol', { class: 'lineage-list', testid }, items.map((it, i) => h('li', null, render ? render(it, i) : h('div', { class: 'pre' }, prettyValue(it)))));
    }

    function section(title, body, opts) {
      return h('section', { class: 'rec-section' + ((opts && opts.class) || '') }, h('h3', null, title), body);
    }

    let recordSeq = 0;
    async function showRecord(recordId) {
      D.record = recordId;
      for (const tr of dataBody.querySelectorAll('tr[data-record-id]')) tr.classList.toggle('selected', tr.dataset.recordId === recordId);
      if (!recordId) {
        recordView.hidden = true;
        backdrop.hidden = true;
        return;
      }
      const seq = ++recordSeq;
      recordView.hidden = false;
      backdrop.hidden = false;
      recordView.dataset.recordId = recordId;
      clear(recordView).append(drawerHead(recordId), h('div', { class: 'drawer-body' }, h('div', { class: 'muted' }, 'Loading…')));
      let r;
      try {
        r = await api('GET', `/api/runs/${enc(id)}/records/${enc(recordId)}`);
      } catch (e) {
        if (stopped || seq !== recordSeq) return;
        clear(recordView).append(drawerHead(recordId), h('div', { class: 'drawer-body' }, h('div', { class: 'text-error' }, `Cannot load the record: ${e.message}`)));
        return;
      }
      if (stopped || seq !== recordSeq) return;
      const rec = r.record || {};
      const lin = r.lineage || {};
      const body = h('div', { class: 'drawer-body' });
      const chips = [];
      if (rec.category !== undefined && rec.category !== null) chips.push(h('span', { class: `pill pill-${rec.category}` }, String(rec.category)));
      if (rec.agreement !== undefined && rec.agreement !== null) chips.push(h('span', { class: 'chip' }, `agreement ${fmtNum(rec.agreement, 2)}`));
      if (rec.pass_rate !== undefined && rec.pass_rate !== null) chips.push(h('span', { class: 'chip' }, `pass rate ${fmtNum(rec.pass_rate, 2)}`));
      if (rec.language) chips.push(h('span', { class: 'chip' }, String(rec.language)));
      if (chips.length) body.append(h('div', { class: 'chips' }, chips));
      if (rec.question !== undefined) body.append(section('Question', h('div', { class: 'pre big' }, cellText(rec.question))));
      if (rec.answer !== undefined) body.append(section('Answer', h('div', { class: 'pre answer' }, cellText(rec.answer))));
      if (rec.response !== undefined && rec.response !== null) body.append(section('Response', h('div', { class: 'pre' }, cellText(rec.response))));
      body.append(h('h2', { class: 'drawer-sub' }, 'Lineage'));
      body.append(section('Passage', lin.passage ? h('div', { class: 'pre passage', testid: 'record-passage' }, lin.passage)
        : h('div', { class: 'muted', testid: 'record-passage' }, 'No passage (not a grounded record).')));
      if (Array.isArray(lin.votes) && lin.votes.length) body.append(section(`Votes (${lin.votes.length})`, listBlock(lin.votes, 'record-votes')));
      if (Array.isArray(lin.student_answers) && lin.student_answers.length) {
        body.append(section(`Student answers (${lin.student_answers.length})`, listBlock(lin.student_answers, 'record-student-answers')));
      }
      if (Array.isArray(lin.rewrites) && lin.rewrites.length) body.append(section(`Rewrites (${lin.rewrites.length})`, listBlock(lin.rewrites, 'record-rewrites')));
      if (lin.provenance && Object.keys(lin.provenance).length) body.append(section('Provenance', kvTable(lin.provenance, 'record-provenance')));
      body.append(h('details', { class: 'rec-all' }, h('summary', null, `All fields (${Object.keys(rec).length})`), kvTable(rec, 'record-fields')));
      clear(recordView).append(drawerHead(recordId), body);
    }

    function drawerHead(recordId) {
      return h('div', { class: 'drawer-head' },
        h('div', null, h('div', { class: 'muted small' }, 'Record'), h('div', { class: 'mono small' }, recordId)),
        h('button', { class: 'btn btn-sm', testid: 'record-close', type: 'button', onclick: () => closeRecord() }, 'Close ✕'));
    }

    function closeRecord() {
      location.hash = `#/data/${enc(id)}`;
    }

    function onKey(ev) {
      if (ev.key === 'Escape' && D.record) closeRecord();
    }
    document.addEventListener('keydown', onKey);

    dataPageApi = { showRecord };
    loadData();
    if (initialRecord) showRecord(initialRecord);
    return () => {
      stopped = true;
      reloadSoon.cancel();
      rejSoon.cancel();
      document.removeEventListener('keydown', onKey);
    };
  }

  // ---------------------------------------------------------------- boot

  window.addEventListener('hashchange', route);
  if (!location.hash) history.replaceState(null, '', location.pathname + location.search + '#/runs');
  route();
})();
