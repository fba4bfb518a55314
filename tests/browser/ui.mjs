// Browser test of the `sdg serve` web UI: drives the real pages with headless Chromium (playwright-core).
//
//   cd tests/browser && npm ci && \
//   SDG_URL=http://127.0.0.1:PORT MODEL_URL=http://127.0.0.1:P/v1 CORPUS=/path/to/docs SHOTS=/tmp/shots node ui.mjs
//
// Environment:
//   SDG_URL     the sdg serve address (required)
//   SDG_TOKEN   the access token, when the server needs one
//   MODEL_URL   an OpenAI-compatible test server base URL, e.g. http://127.0.0.1:P/v1 (required)
//   CORPUS      a folder of .txt/.md files to upload (required)
//   SHOTS       a folder for screenshots (default: $TMPDIR/sdg-ui-shots)
//   CHROMIUM    the browser binary (default /usr/bin/chromium)
//   NUM_SAMPLES num_samples of the recipe (default 40); RUN_TIMEOUT_S: how long the resumed run may take (120)
// Prints one line per step with its time; exits 1 with the reason on the first failure.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const env = process.env;
const SDG_URL = (env.SDG_URL || '').replace(/\/+$/, '');
const SDG_TOKEN = env.SDG_TOKEN || '';
const MODEL_URL = env.MODEL_URL || '';
const CORPUS = env.CORPUS || '';
const SHOTS = env.SHOTS || path.join(os.tmpdir(), 'sdg-ui-shots');
const NUM_SAMPLES = Number(env.NUM_SAMPLES || 40);
const RUN_TIMEOUT_S = Number(env.RUN_TIMEOUT_S || 120);

class Failure extends Error {}
const fail = (message) => { throw new Failure(message); };

for (const [name, value] of [['SDG_URL', SDG_URL], ['MODEL_URL', MODEL_URL], ['CORPUS', CORPUS]]) {
  if (!value) {
    console.error(`FAIL: ${name} is not set`);
    process.exit(1);
  }
}

function pageUrl(hash) {
  const query = SDG_TOKEN ? `?token=${encodeURIComponent(SDG_TOKEN)}` : '';
  return `${SDG_URL}/${query}#${hash}`;
}

function corpusFiles(dir) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...corpusFiles(full));
    else if (entry.isFile() && !entry.name.startsWith('.')) out.push(full);
  }
  return out.sort();
}

const started = Date.now();
let stepNo = 0;

async function step(name, timeoutS, fn) {
  stepNo += 1;
  const t0 = Date.now();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${timeoutS} s`)), timeoutS * 1000);
  });
  try {
    const detail = await Promise.race([fn(), timeout]);
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    console.log(`ok   ${String(stepNo).padStart(2)} ${name} (${secs} s)${detail ? ': ' + detail : ''}`);
  } catch (e) {
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    e.message = `step ${stepNo} "${name}" failed after ${secs} s: ${e.message}`;
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

// Polls `probe` until `done(value)`; fails with `what` and the last value seen.
async function waitFor(what, probe, done, timeoutS, intervalMs = 100) {
  const deadline = Date.now() + timeoutS * 1000;
  let last;
  for (;;) {
    try {
      last = await probe();
    } catch (e) {
      last = `<${e.message.split('\n')[0]}>`;
    }
    const verdict = done(last);
    if (verdict === true) return last;
    if (typeof verdict === 'string') fail(`${what}: ${verdict}`);
    if (Date.now() > deadline) fail(`${what}: still ${JSON.stringify(last)} after ${timeoutS} s`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, acceptDownloads: true });
const page = await context.newPage();
page.setDefaultTimeout(15000);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
page.on('console', (msg) => { if (msg.type() === 'error') console.log(`     [browser console] ${msg.text()}`); });
page.on('response', (res) => {
  if (res.status() >= 500) console.log(`     [http ${res.status()}] ${res.request().method()} ${res.url()}`);
});

const byId = (id) => page.getByTestId(id, { exact: true });
const text = async (id) => ((await byId(id).textContent()) || '').trim();
const shot = async (name, fullPage = true) => {
  fs.mkdirSync(SHOTS, { recursive: true });
  if (fullPage) await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
  await page.screenshot({ path: path.join(SHOTS, name), fullPage });
};
const outCounters = () => page.evaluate(() => {
  const out = {};
  for (const g of document.querySelectorAll('[data-testid="graph"] [data-node]')) {
    const id = g.getAttribute('data-node');
    const el = g.querySelector(`[data-testid="node-${CSS.escape(id)}-out"]`);
    if (el) out[id] = Number((el.textContent || '0').replace(/[^0-9]/g, '')) || 0;
  }
  return out;
});
const status = () => text('run-status');

const name = `ui-test-${Date.now().toString(36)}`;
const files = corpusFiles(CORPUS);
if (files.length === 0) {
  console.error(`FAIL: no files in CORPUS ${CORPUS}`);
  process.exit(1);
}
let runId = null;

try {
  // ---------------------------------------------------------------- 1. new run
  await step('open #/new (defaults, draft)', 30, async () => {
    await page.goto(pageUrl('/new'));
    await waitFor('the draft id', () => text('draft-id'), (v) => v !== '' && v !== '…' && v !== '—', 20);
    await waitFor('the starter YAML', () => byId('yaml').inputValue(), (v) => v.includes('task'), 20);
    await waitFor('the form', () => byId('task-name').inputValue(), (v) => v !== '', 20);
  });

  await step('fill the form (local source, API teacher, vote n=2)', 30, async () => {
    await byId('task-name').fill(name);
    await byId('task-instruction').fill('Write a question that a reader of the passage can answer from it, with a short answer.');
    await byId('task-num-samples').fill(String(NUM_SAMPLES));
    await byId('task-source').selectOption('local');
    await byId('local-paths').fill('inputs');
    await byId('teacher-provider').selectOption('openai');
    await byId('teacher-base-url').fill(MODEL_URL);
    await byId('teacher-model').fill('test-model');
    await byId('teacher-api-key-env').fill('');
    await byId('vote-n').fill('2');
    // The test server's generated answers are placeholders the vote cannot agree with; vote on its own.
    await byId('vote-match-generated').selectOption('false');
    if (!(await byId('vote-enabled').isChecked())) fail('vote-n was filled but the vote is not enabled');
    return name;
  });

  await step(`upload ${files.length} corpus file(s)`, 60, async () => {
    await byId('upload').setInputFiles(files);
    await waitFor('uploaded files listed', () => page.locator('[data-testid="files-list"] [data-testid="file-row"]').count(),
      (n) => n >= files.length, 50);
    const upload = await text('upload-status');
    if (/failed/i.test(upload)) fail(`upload reported: ${upload}`);
    return upload;
  });

  await step('YAML view follows the form', 20, async () => {
    await waitFor('the YAML view to hold the name, base_url, the model URL and n: 2', () => byId('yaml').inputValue(),
      (v) => v.includes(name) && v.includes('base_url') && v.includes(MODEL_URL) && /(\bn|"n"): 2\b/.test(v), 15);
  });

  await step('validation shows no errors', 30, async () => {
    await waitFor('validation', () => byId('validation').getAttribute('data-state'), (s) => {
      if (s === 'ok') return true;
      return undefined;
    }, 25).catch(async (e) => {
      const errors = await page.locator('[data-testid="validation-error"]').allTextContents();
      fail(`${e.message}${errors.length ? '; errors shown: ' + errors.join(' | ') : ''}`);
    });
    const errors = await page.locator('[data-testid="validation-error"]').count();
    if (errors !== 0) fail(`validation is ok but ${errors} error(s) are shown`);
  });

  await step('estimate shows requests > 0', 40, async () => {
    await waitFor('the estimate', () => byId('estimate').getAttribute('data-state'),
      (s) => (s === 'ok' ? true : s === 'failed' ? 'the estimate failed' : undefined), 35);
    const requests = Number(await byId('estimate-requests').getAttribute('data-value'));
    if (!(requests > 0)) fail(`estimated requests = ${requests}`);
    await shot('new-run.png');
    return `${requests} requests`;
  });

  // ---------------------------------------------------------------- 2. run
  await step('start the run', 30, async () => {
    await byId('start-run').click();
    await waitFor('the run page', () => page.evaluate(() => location.hash), (h) => {
      if (/^#\/run\/[a-z0-9-]+$/.test(h)) return true;
      return undefined;
    }, 25).catch(async (e) => {
      const err = (await byId('start-error').isVisible()) ? await text('start-error') : '';
      fail(`${e.message}${err ? '; ' + err : ''}`);
    });
    runId = decodeURIComponent((await page.evaluate(() => location.hash)).replace('#/run/', ''));
    await waitFor('the graph', () => page.locator('[data-testid="graph"] g.node').count(), (n) => n > 0, 20);
    return runId;
  });

  let first = null;
  await step('live updates: a node\'s out counter rises twice', 60, async () => {
    first = await waitFor('some node out > 0', outCounters, (c) => {
      if (Object.values(c).some((v) => v > 0)) return true;
      return undefined;
    }, 45, 100);
    const st = await status();
    if (st !== 'running') fail(`the run is already ${st} after the first rows; it must still run to test live updates and cancel`);
    const later = await waitFor('an out counter to increase again', outCounters, (c) => {
      if (Object.entries(c).some(([id, v]) => v > (first[id] || 0))) return true;
      return undefined;
    }, 45, 100);
    await shot('run.png');
    const grew = Object.keys(later).filter((id) => later[id] > (first[id] || 0));
    return grew.map((id) => `${id} ${first[id]}→${later[id]}`).join(', ');
  });

  await step('cancel -> interrupted', 60, async () => {
    const st = await status();
    if (st !== 'running') fail(`the run is ${st} before cancel; make it slower (model latency, num_samples)`);
    await byId('cancel').click();
    await waitFor('status interrupted', status, (s) => {
      if (s === 'interrupted') return true;
      if (s === 'completed' || s === 'failed') return `the run ended ${s} instead of interrupted`;
      return undefined;
    }, 55, 150);
    if (!(await byId('resume').isVisible())) fail('no Resume button on an interrupted run');
  });

  await step('resume -> completed', RUN_TIMEOUT_S + 10, async () => {
    await byId('resume').click();
    await waitFor('status completed', status, (s) => {
      if (s === 'completed') return true;
      if (s === 'failed') return 'the resumed run failed';
      return undefined;
    }, RUN_TIMEOUT_S, 250);
    const pct = await text('progress-pct');
    await shot('run-done.png');
    return `progress ${pct}, rows ${await text('stat-rows')}`;
  });

  // ---------------------------------------------------------------- 3. data
  let total = 0;
  await step('data page lists rows', 30, async () => {
    await byId('open-data').click();
    await waitFor('the data table to load', () => byId('data-table').getAttribute('data-loading'), (v) => v === '0', 25);
    total = Number(await text('rows-total'));
    if (!(total > 0)) fail(`rows total = ${total}`);
    return `${total} rows`;
  });

  let word = '';
  await step('text filter narrows the rows', 30, async () => {
    const question = await page.evaluate(() => {
      const table = document.querySelector('[data-testid="data-table"]');
      const heads = Array.from(table.querySelectorAll('thead th')).map((th) => th.textContent.trim());
      const row = table.querySelector('[data-testid="data-row"]');
      if (!row) return '';
      const cells = Array.from(row.querySelectorAll('td'));
      const i = heads.indexOf('question');
      return (i >= 0 ? cells[i] : cells[1] || cells[0]).textContent || '';
    });
    // The longest token of the first row's question (the test server's questions carry a hash).
    const words = (question.replace(/…$/, '').match(/[A-Za-z0-9][A-Za-z0-9-]{3,}/g) || []).map((w) => w.toLowerCase());
    if (!words.length) fail(`no word to search in the first row's question ${JSON.stringify(question)}`);
    word = words.sort((a, b) => b.length - a.length)[0];
    await byId('filter-q').fill(word);
    await waitFor('the filtered table', () => page.evaluate(() => {
      const t = document.querySelector('[data-testid="data-table"]');
      return `${t.getAttribute('data-loading')}|${t.getAttribute('data-q')}`;
    }), (v) => v === `0|${word}`, 25);
    const filtered = Number(await text('rows-total'));
    if (!(filtered > 0)) fail(`searching "${word}" (from the first row) found ${filtered} rows`);
    if (filtered > total) fail(`searching "${word}" grew the rows from ${total} to ${filtered}`);
    if (total > 1 && filtered === total) fail(`searching "${word}" did not narrow the ${total} rows`);
    const rows = await page.locator('[data-testid="data-row"]').allInnerTexts();
    if (rows.length === 0) fail('no rows are shown');
    const missing = rows.filter((r) => !r.toLowerCase().includes(word));
    if (missing.length) fail(`${missing.length} of ${rows.length} visible rows do not contain "${word}": ${JSON.stringify(missing[0].slice(0, 200))}`);
    return `"${word}": ${filtered} of ${total} rows`;
  });

  await step('record view shows the passage', 30, async () => {
    await page.locator('[data-testid="data-row"]').first().click();
    await byId('record-view').waitFor({ state: 'visible' });
    const passage = await waitFor('the passage', () => text('record-passage'), (v) => v !== '', 20);
    if (/^No passage/.test(passage)) fail('the record view shows no passage');
    await shot('data.png', false); // the record view is a drawer over the viewport
    return `${passage.length} chars`;
  });

  // ---------------------------------------------------------------- 4. runs
  await step('runs page lists the run as completed', 30, async () => {
    await page.goto(pageUrl('/runs'));
    await byId('runs-table').waitFor({ state: 'visible' });
    const row = byId(`run-row-${runId}`);
    await row.waitFor({ state: 'visible' });
    const st = await row.getAttribute('data-status');
    if (st !== 'completed') fail(`run ${runId} is listed as ${st}`);
    const rowText = await row.innerText();
    if (!rowText.includes(name)) fail(`the row of ${runId} does not show the name ${name}`);
    await shot('runs.png');
  });

  if (pageErrors.length) fail(`uncaught errors in the page:\n${pageErrors.join('\n')}`);
  console.log(`PASS (${((Date.now() - started) / 1000).toFixed(1)} s, run ${runId}, screenshots in ${SHOTS})`);
  await browser.close();
} catch (e) {
  console.error(`FAIL: ${e.message}`);
  if (!(e instanceof Failure) && e.stack) console.error(e.stack);
  if (pageErrors.length) console.error(`uncaught errors in the page:\n${pageErrors.join('\n')}`);
  try { await shot('failure.png'); console.error(`screenshot: ${path.join(SHOTS, 'failure.png')}`); } catch (err) { /* ignore */ }
  await browser.close().catch(() => {});
  process.exit(1);
}
