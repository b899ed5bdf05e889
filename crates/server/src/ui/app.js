// The Tanvrit Compute console: plain JavaScript over the public API, live through the
// event stream (fetch + NDJSON, so the key travels in the Authorization header).
'use strict';

const API = '/api/compute';
const KEY = 'tanvrit-key';
const state = { stream: null, timers: [] };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === 'onclick' || name === 'oninput' || name === 'onchange') node[name] = value;
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ''));
  }
  return node;
}

const PLAIN = {
  unauthorized: 'That API key was not accepted: it is unknown or has been revoked.',
  forbidden: 'This key is not allowed to do that.',
  not_found: 'Not found, or not visible to this key.',
  no_leader: 'The cluster has no leader right now; try again in a moment.',
  illegal_transition: 'That is not possible in the current state.',
  insufficient_credits: 'The business does not have enough credits.',
  rate_limited: 'Too many requests; slow down a little.',
};

class ApiError extends Error {
  constructor(status, error) {
    super(`${PLAIN[error.code] || error.message} (${error.code})`);
    this.status = status;
    this.code = error.code;
  }
}

function headers() {
  return { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, 'Content-Type': 'application/json' };
}

async function call(path, body) {
  const response = await fetch(API + path, { method: 'POST', headers: headers(), body: JSON.stringify(body || {}) });
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { data = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || { code: `http_${response.status}`, message: text });
  }
  return data;
}

function say(text, isError) {
  const status = $('status');
  status.textContent = text || '';
  status.className = isError ? 'status error' : 'status';
}

function stopLive() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.timers.forEach(clearInterval);
  state.timers = [];
}

// Follows the event stream from `request.from_index`, resuming after the last event
// (or heartbeat) it saw whenever the connection ends; calls `onEvent` for each event.
async function follow(request, onEvent) {
  const control = new AbortController();
  state.stream = control;
  let position = { from_index: request.from_index };
  while (!control.signal.aborted) {
    try {
      const response = await fetch(`${API}/events/stream`, {
        method: 'POST', headers: headers(), signal: control.signal,
        body: JSON.stringify({ ...request, ...position, heartbeat_ms: 5000 }),
      });
      if (!response.ok) {
        const data = await response.json().catch(() => ({}));
        throw new ApiError(response.status, data.error || { code: `http_${response.status}`, message: '' });
      }
      say('Live');
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (!line) continue;
          const frame = JSON.parse(line);
          if (frame.event) {
            position = { from_index: frame.event.index, from_seq: frame.event.seq };
            onEvent(frame.event);
          } else if (frame.heartbeat) {
            if (position.from_index === undefined || frame.heartbeat.index >= position.from_index) {
              position = { from_index: frame.heartbeat.index };
            }
          }
        }
      }
    } catch (error) {
      if (control.signal.aborted) return;
      if (error instanceof ApiError && error.status === 410) {
        say('The live view fell too far behind; reloading.', true);
        route();
        return;
      }
      say(`Live view interrupted (${error.message}); reconnecting…`, true);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

const time = (ms) => (ms ? new Date(ms).toLocaleString() : '-');
const credits = (micro) => `${((micro || 0) / 1e6).toFixed(6).replace(/\.?0+$/, '')}`;
const commandText = (spec) => spec.shell || (spec.command || []).join(' ');
const stateCell = (value) => el('td', { class: `state-${value}` }, value);
const TERMINAL = ['succeeded', 'failed', 'cancelled', 'lost'];

// ---- jobs -------------------------------------------------------------------------------

async function jobsPage(page) {
  const filter = { state: '', business: '', search: '' };
  const jobs = new Map();
  const body = el('tbody', { id: 'jobs-body' });
  const render = () => {
    const search = filter.search.toLowerCase();
    const rows = [...jobs.values()]
      .filter((job) => !filter.state || job.state === filter.state)
      .filter((job) => !filter.business || job.business === filter.business)
      .filter((job) => !search || job.id.toLowerCase().includes(search)
        || (job.spec.name || '').toLowerCase().includes(search))
      .sort((a, b) => b.created_at - a.created_at)
      .slice(0, 500)
      .map((job) => el('tr', { 'data-job': job.id },
        el('td', { class: 'id' }, el('a', { href: `#/job/${job.id}` }, job.id)),
        stateCell(job.state),
        el('td', {}, job.business),
        el('td', { class: 'wide' }, job.spec.name || '-'),
        el('td', { class: 'wide' }, commandText(job.spec)),
        el('td', { class: 'wide' }, time(job.created_at))));
    body.replaceChildren(...rows);
  };
  const states = ['', 'pending', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'lost'];
  page.append(
    el('h1', {}, 'Jobs'),
    el('div', { class: 'filters' },
      el('label', { for: 'filter-state' }, 'State'),
      el('select', { id: 'filter-state', onchange: (e) => { filter.state = e.target.value; render(); } },
        states.map((s) => el('option', { value: s }, s || 'any'))),
      el('label', { for: 'filter-business' }, 'Business'),
      el('input', { id: 'filter-business', placeholder: 'any', oninput: (e) => { filter.business = e.target.value.trim(); render(); } }),
      el('label', { for: 'filter-search' }, 'Search'),
      el('input', { id: 'filter-search', placeholder: 'id or name', oninput: (e) => { filter.search = e.target.value.trim(); render(); } })),
    el('table', {},
      el('thead', {}, el('tr', {}, el('th', {}, 'ID'), el('th', {}, 'State'), el('th', {}, 'Business'),
        el('th', { class: 'wide' }, 'Name'), el('th', { class: 'wide' }, 'Command'), el('th', { class: 'wide' }, 'Created'))),
      body));
  const list = await call('/jobs/list', { limit: 500 });
  list.jobs.forEach((job) => jobs.set(job.id, job));
  render();
  follow({ from_index: list.index, topic: ['job'] }, (event) => {
    if (event.object && event.object.job) jobs.set(event.id, event.object.job);
    else if (event.type === 'job_collected') jobs.delete(event.id);
    render();
  });
}

// ---- one job ----------------------------------------------------------------------------

async function jobPage(page, id) {
  const details = el('div', { id: 'job-details' });
  const log = el('pre', { class: 'log', id: 'job-log', 'aria-live': 'polite' });
  const actions = el('div', { class: 'actions' });
  page.append(el('h1', {}, 'Job ', el('span', { class: 'id' }, id)), actions, details, el('h2', {}, 'Output'), log);
  const act = (verb) => async () => {
    try {
      await call(`/jobs/${encodeURIComponent(id)}/${verb}`, {});
      say(`Job ${verb === 'cancel' ? 'cancelled' : 'retried'}.`);
    } catch (error) { say(error.message, true); }
  };
  const show = (job) => {
    const charged = job.attempts.reduce((sum, a) => sum + (a.charged || 0), 0);
    const r = job.spec.resources || {};
    details.replaceChildren(
      el('table', { id: 'job-fields' }, el('tbody', {},
        el('tr', {}, el('th', {}, 'State'), el('td', { id: 'job-state', class: `state-${job.state}` }, job.state)),
        el('tr', {}, el('th', {}, 'Business'), el('td', {}, job.business)),
        el('tr', {}, el('th', {}, 'Command'), el('td', {}, commandText(job.spec))),
        el('tr', {}, el('th', {}, 'Resources'), el('td', {}, `${r.cpu_millis} mCPU, ${r.memory_mb} MB, ${r.gpus} GPU`)),
        el('tr', {}, el('th', {}, 'Held / charged'), el('td', {}, `${credits(job.held)} / ${credits(charged)} credits`)))),
      el('h2', {}, 'Attempts'),
      el('table', {}, el('thead', {}, el('tr', {}, ['#', 'Node', 'State', 'Started', 'Finished', 'Exit', 'Reason'].map((h) => el('th', {}, h)))),
        el('tbody', {}, job.attempts.map((a) => el('tr', {},
          el('td', {}, String(a.number)), el('td', { class: 'id' }, a.node), stateCell(a.state),
          el('td', {}, time(a.started_at)), el('td', {}, time(a.finished_at)),
          el('td', {}, a.exit_code === null || a.exit_code === undefined ? '-' : String(a.exit_code)),
          el('td', {}, a.reason || '-'))))));
    actions.replaceChildren(
      el('button', { type: 'button', id: 'job-cancel', onclick: act('cancel'), disabled: TERMINAL.includes(job.state) ? '' : null }, 'Cancel'),
      el('button', { type: 'button', id: 'job-retry', onclick: act('retry'), disabled: ['failed', 'cancelled', 'lost'].includes(job.state) ? null : '' }, 'Retry'));
  };
  const got = await call(`/jobs/${encodeURIComponent(id)}/get`, {});
  show(got.job);
  follow({ from_index: got.index, job: id, topic: ['job'] }, (event) => {
    if (event.object && event.object.job) show(event.object.job);
  });
  const control = state.stream;
  let offset = 0;
  let attempt = null;
  while (!control.signal.aborted) {
    try {
      const window = await call(`/jobs/${encodeURIComponent(id)}/logs`, { offset, attempt, wait_ms: 20000 });
      if (window.attempt && attempt && window.attempt !== attempt) { log.textContent = ''; }
      attempt = window.attempt || attempt;
      log.textContent += window.data;
      offset = window.next_offset;
      if (window.complete && !window.data) await new Promise((resolve) => setTimeout(resolve, 2000));
    } catch (error) {
      say(error.message, true);
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

// ---- nodes and cluster ------------------------------------------------------------------

async function nodesPage(page) {
  const body = el('tbody', { id: 'nodes-body' });
  page.append(el('h1', {}, 'Nodes'), el('table', {},
    el('thead', {}, el('tr', {}, ['Name', 'State', 'CPU (used / total)', 'Memory MB', 'GPUs', 'Attempts', ''].map((h) => el('th', {}, h)))), body));
  const load = async () => {
    const list = await call('/nodes/list', {});
    body.replaceChildren(...list.nodes.map((view) => {
      const n = view; // the node, flattened, with `allocated` and `active_attempts`
      const drain = async () => {
        const minutes = prompt(`Drain ${n.name}: stop its work after how many minutes? (empty: let it finish)`, '10');
        if (minutes === null) return;
        try {
          await call(`/nodes/${encodeURIComponent(n.id)}/drain`, minutes ? { deadline_secs: Math.round(Number(minutes) * 60) } : {});
          say(`Node ${n.name} is draining.`);
        } catch (error) { say(error.message, true); }
      };
      return el('tr', {}, el('td', {}, n.name), stateCell(n.state),
        el('td', {}, `${view.allocated.cpu_millis} / ${n.resources.cpu_millis}`),
        el('td', {}, `${view.allocated.memory_mb} / ${n.resources.memory_mb}`),
        el('td', {}, `${view.allocated.gpus} / ${n.resources.gpus}`),
        el('td', {}, String(view.active_attempts)),
        el('td', {}, n.state === 'ready' ? el('button', { type: 'button', onclick: drain }, 'Drain') : ''));
    }));
    return list.index;
  };
  const index = await load();
  follow({ from_index: index, topic: ['node', 'attempt'] }, () => load().catch((e) => say(e.message, true)));
}

async function clusterPage(page) {
  const summary = el('p', { id: 'cluster-leader' });
  const rate = el('p', { id: 'cluster-rate' });
  const counts = el('p', { id: 'cluster-counts' });
  const body = el('tbody', { id: 'cluster-body' });
  let last = null;
  page.append(el('h1', {}, 'Cluster'), summary, rate, counts, el('table', {},
    el('thead', {}, el('tr', {}, ['Replica', 'Region', 'Role', 'Term', 'Commit', 'Applied', 'Lag', 'Reachable'].map((h) => el('th', {}, h)))), body));
  const load = async () => {
    try {
      const t = await call('/cluster/topology', {});
      const now = Date.now();
      if (last) {
        const perSecond = ((t.index - last.index) * 1000) / Math.max(1, now - last.at);
        rate.textContent = `Throughput: ${perSecond.toFixed(1)} log entries/s applied here`;
      }
      last = { index: t.index, at: now };
      call('/metrics', {}).then((m) => {
        const jobs = Object.entries(m.jobs_by_state).map(([k, v]) => `${v} ${k}`).join(', ');
        counts.textContent = `Jobs: ${jobs || 'none'} · nodes: ${Object.values(m.nodes_by_state).reduce((a, b) => a + b, 0)}`;
      }).catch(() => { counts.textContent = ''; });
      summary.textContent = `Leader: ${t.leader || 'none'} · answered by ${t.this_replica} · ${t.mode}`;
      body.replaceChildren(...t.replicas.map((r) => el('tr', { 'data-role': r.role },
        el('td', {}, r.name), el('td', {}, r.region), el('td', {}, r.role), el('td', {}, String(r.term)),
        el('td', {}, String(r.commit_index)), el('td', {}, String(r.applied_index)),
        el('td', {}, r.lag === null || r.lag === undefined ? '-' : String(r.lag)), el('td', {}, r.reachable ? 'yes' : 'no'))));
      say('Live');
    } catch (error) { say(error.message, true); }
  };
  await load();
  state.timers.push(setInterval(load, 1000));
}

// ---- credits, schedules, keys -----------------------------------------------------------

async function creditsPage(page) {
  const business = el('input', { id: 'credits-business', placeholder: 'your key\'s business' });
  const summary = el('p', { id: 'credits-balance' });
  const body = el('tbody', { id: 'credits-body' });
  const exportLink = el('a', { id: 'credits-csv', hidden: '' }, 'Download CSV');
  const load = async () => {
    const named = business.value.trim() || undefined;
    try {
      const balance = await call('/credits/balance', { business: named });
      summary.textContent = `${balance.business}: ${credits(balance.available)} available, `
        + `${credits(balance.held)} held, ${balance.entries} entries`;
      const list = await call('/credits/entries/list', { business: named });
      body.replaceChildren(...list.entries.slice(-500).reverse().map((e) => el('tr', {},
        el('td', {}, String(e.seq)), el('td', {}, e.kind), el('td', {}, credits(e.amount)),
        el('td', {}, credits(e.balance_after)), el('td', { class: 'id wide' }, e.job || '-'),
        el('td', { class: 'wide' }, e.note || '-'))));
      say('');
    } catch (error) { say(error.message, true); }
  };
  const download = async () => {
    try {
      const response = await fetch(`${API}/credits/entries/export`, {
        method: 'POST', headers: headers(), body: JSON.stringify({ business: business.value.trim() }),
      });
      if (!response.ok) {
        const data = await response.json().catch(() => ({}));
        throw new ApiError(response.status, data.error || { code: `http_${response.status}`, message: '' });
      }
      exportLink.href = URL.createObjectURL(await response.blob());
      exportLink.download = `${business.value.trim()}-ledger.csv`;
      exportLink.hidden = false;
    } catch (error) { say(error.message, true); }
  };
  page.append(el('h1', {}, 'Credits'),
    el('div', { class: 'filters' }, el('label', { for: 'credits-business' }, 'Business'), business,
      el('button', { type: 'button', id: 'credits-show', onclick: load }, 'Show'),
      el('button', { type: 'button', id: 'credits-export', onclick: download }, 'Export CSV (admin)'), exportLink),
    summary,
    el('table', {}, el('thead', {}, el('tr', {}, ['#', 'Kind', 'Amount', 'Balance', 'Job', 'Note']
      .map((h, i) => el('th', { class: i > 3 ? 'wide' : null }, h)))), body));
  await load();
}

async function schedulesPage(page) {
  const list = await call('/schedules/list', {});
  page.append(el('h1', {}, 'Schedules'), el('table', {},
    el('thead', {}, el('tr', {}, ['Name', 'Business', 'Cron', 'Time zone', 'Enabled', 'Next fire'].map((h) => el('th', {}, h)))),
    el('tbody', { id: 'schedules-body' }, list.schedules.map((s) => el('tr', {},
      el('td', {}, s.name || s.id), el('td', {}, s.business), el('td', {}, s.cron), el('td', {}, s.timezone),
      el('td', {}, s.enabled ? 'yes' : 'no'), el('td', {}, time(s.next_fire_at)))))));
}

async function keysPage(page) {
  const list = await call('/keys/list', {});
  page.append(el('h1', {}, 'API keys'), el('table', {},
    el('thead', {}, el('tr', {}, ['ID', 'Name', 'Scope', 'Business', 'Created', 'Revoked'].map((h) => el('th', {}, h)))),
    el('tbody', { id: 'keys-body' }, list.keys.map((k) => el('tr', {},
      el('td', { class: 'id' }, k.id), el('td', {}, k.name), el('td', {}, k.scope), el('td', {}, k.business || '-'),
      el('td', {}, time(k.created_at)), el('td', {}, time(k.revoked_at)))))));
}

// ---- sign-in and routing ----------------------------------------------------------------

async function route() {
  stopLive();
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  $('sign-in').hidden = signedIn;
  $('nav').hidden = !signedIn;
  const page = $('page');
  page.replaceChildren();
  if (!signedIn) { $('key').focus(); return; }
  const [, name, id] = (location.hash || '#/jobs').split('/');
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.id === `nav-${name}`));
  try {
    if (name === 'job' && id) await jobPage(page, decodeURIComponent(id));
    else if (name === 'nodes') await nodesPage(page);
    else if (name === 'cluster') await clusterPage(page);
    else if (name === 'credits') await creditsPage(page);
    else if (name === 'schedules') await schedulesPage(page);
    else if (name === 'keys') await keysPage(page);
    else await jobsPage(page);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) { signOut(error.message); return; }
    page.append(el('p', { class: 'error', role: 'alert' }, error.message));
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  route();
  $('sign-in-error').textContent = message || '';
}

$('sign-in').addEventListener('submit', async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $('key').value.trim());
  try {
    await call('/jobs/list', { limit: 1 });
    $('key').value = '';
    $('sign-in-error').textContent = '';
    route();
  } catch (error) {
    sessionStorage.removeItem(KEY);
    $('sign-in-error').textContent = error.message;
  }
});
$('sign-out').addEventListener('click', () => signOut(''));
window.addEventListener('hashchange', route);
route();
