import HTTPServer
import JSON
import Platform

/// `GET /ui`: a small dashboard page, one HTML document with its style and script inline (no
/// external assets, no framework), kept here as strings so that the binary serves it without
/// resource files. The page carries no data: its script polls `GET /v1/cluster` (and, on a
/// group's detail view, `GET /v1/groups/{group}`) with relative URLs, so any node serves it, and
/// those requests go through the routes' own authentication (a `401` asks for a token, kept in
/// the tab's `sessionStorage`).
///
/// The script writes data into the page only as text (`textContent`, attributes), never as
/// markup, and the `Content-Security-Policy` allows exactly this style and this script (by their
/// SHA-256) and requests to this origin, so nothing a node reports can run in the page.
///
/// Tests read the page by stable hooks: `#nodes tr[data-node]` (with `data-reachable`),
/// `#groups tr[data-group]` with a `[data-leader]` cell, `#peers tr[data-peer]` with cells
/// `[data-field=matchIndex]`, `[data-field=state]` and so on, `#banner`, `#refreshed`.
enum Dashboard {
  /// The page's bytes, built once.
  static let document: [UInt8] = Array(
    """
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Caucus dashboard</title>
    <style>\(style)</style>
    </head>
    <body>
    \(body)
    <script>\(script)</script>
    </body>
    </html>

    """.utf8)

  /// The response's headers: the policy lets the page load its own inline style and script and
  /// talk to its own origin, nothing else (no frames around it, no forms posted elsewhere).
  static let headers: [(name: String, value: String)] = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("Content-Security-Policy", contentSecurityPolicy),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
  ]

  static let contentSecurityPolicy =
    "default-src 'none'; script-src '\(hashSource(script))'; style-src '\(hashSource(style))'; "
    + "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

  /// A CSP hash source (`sha256-<base64>`) for an inline element's exact text.
  static func hashSource(_ text: String) -> String {
    "sha256-" + String(decoding: Base64.encode(SHA256.hash(Array(text.utf8))), as: UTF8.self)
  }

  // The markup: the fixed frame the script fills. No `style` attributes (the policy allows only
  // the style element) and no inline event handlers (only the script element runs).
  static let body = #"""
    <header>
      <h1><a href="#/">Caucus</a></h1>
      <span id="served-by"></span>
      <span class="spacer"></span>
      <span id="status" data-state="loading">loading…</span>
      <span id="refreshed">never refreshed</span>
    </header>
    <div id="banner" role="alert" hidden></div>
    <form id="auth" hidden>
      <label for="token-input">This node needs a token (read role or more):</label>
      <input id="token-input" type="password" autocomplete="off" spellcheck="false">
      <button type="submit">Use token</button>
      <span class="hint">kept in this tab only (sessionStorage)</span>
    </form>
    <main>
      <section id="overview">
        <p id="summary"></p>
        <h2>Nodes</h2>
        <table id="nodes">
          <thead><tr><th>id</th><th>client URL</th><th>consensus endpoint</th><th>reachable</th><th class="number">groups</th><th class="number">leads</th></tr></thead>
          <tbody></tbody>
        </table>
        <h2>Groups</h2>
        <table id="groups">
          <thead><tr><th>group</th><th>protocol</th><th>leader</th><th class="number">term</th><th class="number">commit index</th><th class="number">applied index</th><th>replicas (as each node reports its role)</th></tr></thead>
          <tbody></tbody>
        </table>
        <p id="groups-empty" class="muted" hidden>No groups.</p>
      </section>
      <section id="detail" hidden>
        <p><a href="#/">← all groups</a></p>
        <h2 id="detail-title"></h2>
        <dl id="detail-summary"></dl>
        <p id="detail-note" hidden></p>
        <h3 id="peers-title">Peers</h3>
        <table id="peers">
          <thead><tr><th>peer</th><th>endpoint</th><th>learner</th><th class="number">match index</th><th class="number">next index</th><th class="number">lag</th><th class="number">last contact</th><th>state</th></tr></thead>
          <tbody></tbody>
        </table>
      </section>
    </main>
    <noscript>This dashboard needs JavaScript.</noscript>
    """#

  static let style = #"""
    :root { color-scheme: light; --ink: #1d2430; --muted: #6b7280; --line: #e3e6ea; --accent: #2f5bd3;
      --good: #1f7a3a; --warn: #9a6700; --bad: #b42318; --panel: #f6f7f9; }
    * { box-sizing: border-box; }
    body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: #fff; }
    header { display: flex; align-items: center; gap: 16px; padding: 10px 20px; background: #17202e; color: #e8ecf2; }
    header h1 { margin: 0; font-size: 18px; }
    header h1 a { color: inherit; text-decoration: none; }
    header .spacer { flex: 1; }
    #served-by, #refreshed { color: #b8c1cf; font-size: 13px; }
    #status { font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #334155; }
    #status[data-state="ok"] { background: var(--good); }
    #status[data-state="error"] { background: var(--bad); }
    #banner { margin: 12px 20px 0; padding: 10px 14px; border: 1px solid #f1b5ae; border-radius: 6px; background: #fdecea; color: var(--bad); font-weight: 600; }
    #auth { margin: 12px 20px 0; padding: 10px 14px; border: 1px solid var(--line); border-radius: 6px; background: var(--panel); display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
    #auth[hidden], #banner[hidden], section[hidden], p[hidden] { display: none; }
    #auth input { font: inherit; padding: 4px 8px; min-width: 260px; }
    .hint, .muted { color: var(--muted); font-size: 12px; }
    main { padding: 4px 20px 24px; }
    #summary { margin: 14px 0 0; color: var(--muted); }
    #detail-note { margin: 14px 0 0; padding: 8px 12px; border-radius: 6px; background: #fff3d6; color: #5c4400; }
    h2 { font-size: 15px; margin: 18px 0 8px; }
    h3 { font-size: 14px; margin: 16px 0 8px; }
    table { border-collapse: collapse; width: 100%; }
    th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
    th { font-size: 12px; font-weight: 600; color: var(--muted); background: var(--panel); }
    td.number { font-variant-numeric: tabular-nums; text-align: right; }
    th.number { text-align: right; }
    tr[data-reachable="false"] td { color: var(--muted); }
    .stale table { opacity: 0.55; }
    .badge { display: inline-block; padding: 0 7px; margin-right: 4px; border-radius: 9px; font-size: 12px; background: #e9edf3; }
    .badge.leader, .badge.yes, .badge.replicate { background: #dcf3e3; color: var(--good); }
    .badge.candidate, .badge.probe, .badge.learner, .badge.snapshot { background: #fff3d6; color: var(--warn); }
    .badge.unreachable, .badge.no, .badge.none { background: #fde4e1; color: var(--bad); }
    a { color: var(--accent); }
    dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
    dt { color: var(--muted); }
    dd { margin: 0; font-variant-numeric: tabular-nums; }
    """#

  static let script = #"""
    'use strict';
    // Polls the cluster through this node's API (relative URLs: any node serves the page) and
    // writes what it reads into the page as text only.
    const pollIntervalMs = 2000;
    // A refresh that takes long (a cluster of thousands of groups) is repeated less often: the
    // next starts after this many times its own duration, so an open page cannot keep the nodes
    // busy gathering answers.
    const pollSlowdownFactor = 5;
    const requestTimeoutMs = 8000;
    // Rows of the groups table at most (in id order): a node may host ten thousand groups, and a
    // table that large every two seconds makes the page slow; the summary counts every group.
    const groupRowsMax = 1000;
    const tokenStorageKey = 'caucus.dashboard.token';
    const groupRoutePattern = /^#\/groups\/([A-Za-z]+-[0-9]+)$/;

    const state = { cluster: null, clusterError: null, refreshedAt: null, servedBy: null, group: null, groupError: null };

    class UnauthorizedError extends Error {}

    function byId(id) { return document.getElementById(id); }

    // An element with attributes and children; strings become text nodes, never markup.
    function element(tag, attributes, ...children) {
      const node = document.createElement(tag);
      for (const [name, value] of Object.entries(attributes || {})) {
        if (value !== undefined && value !== null) node.setAttribute(name, String(value));
      }
      for (const child of children) {
        if (child === undefined || child === null) continue;
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
      return node;
    }

    function badge(text, kind) { return element('span', { class: 'badge ' + (kind || text) }, text); }
    function show(value) { return value === undefined || value === null ? '—' : String(value); }
    function selectedGroup() {
      const match = groupRoutePattern.exec(location.hash);
      return match ? match[1] : null;
    }

    // The answer's JSON and the node that produced it (`X-Caucus-Node`: the leader, when this
    // node relayed the request to it).
    async function getJSON(path) {
      const headers = { Accept: 'application/json' };
      const token = sessionStorage.getItem(tokenStorageKey);
      if (token) headers.Authorization = 'Bearer ' + token;
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), requestTimeoutMs);
      try {
        const response = await fetch(path, { headers, cache: 'no-store', signal: controller.signal });
        const node = response.headers.get('X-Caucus-Node');
        const body = await response.json().catch(() => null);
        if (response.status === 401) throw new UnauthorizedError(body && body.message ? body.message : 'a token is needed');
        if (!response.ok) {
          const detail = body && body.error ? body.error + ': ' + (body.message || '') : 'no JSON error';
          throw new Error('HTTP ' + response.status + ' (' + detail + ')');
        }
        return { body, node };
      } catch (error) {
        if (error.name === 'AbortError') throw new Error('no answer within ' + requestTimeoutMs + ' ms');
        throw error;
      } finally {
        clearTimeout(timer);
      }
    }

    // One group as the reachable nodes report it: the leader and figures of the report with the
    // highest term that names a leader (the leader's own report first), and every node's role.
    function groupsOf(cluster) {
      const groups = new Map();
      for (const node of cluster.nodes || []) {
        for (const summary of node.groups || []) {
          let group = groups.get(summary.id);
          if (!group) {
            group = { id: summary.id, protocol: summary.protocol, reports: new Map(), peers: new Set() };
            groups.set(summary.id, group);
          }
          group.reports.set(node.id, summary);
          for (const peer of summary.peers || []) group.peers.add(peer.id);
        }
      }
      for (const group of groups.values()) {
        const reports = [...group.reports.values()];
        const rank = (report) => [report.term, report.role === 'leader' ? 1 : 0, report.leader === null ? 0 : 1];
        reports.sort((left, right) => {
          const [a, b] = [rank(left), rank(right)];
          for (let index = 0; index < a.length; index += 1) if (a[index] !== b[index]) return b[index] - a[index];
          return 0;
        });
        const best = reports.find((report) => report.leader !== null) || reports[0];
        group.leader = best.leader;
        group.term = Math.max(...reports.map((report) => report.term));
        group.commitIndex = best.commitIndex;
        group.appliedIndex = best.appliedIndex;
      }
      return [...groups.values()].sort((left, right) => left.id.localeCompare(right.id, 'en', { numeric: true }));
    }

    function renderNodes(cluster) {
      const rows = (cluster.nodes || []).map((node) => element('tr', { 'data-node': node.id, 'data-reachable': node.reachable },
        element('td', { 'data-field': 'id' }, node.id),
        element('td', { 'data-field': 'clientURL' }, nodeLink(node)),
        element('td', { 'data-field': 'consensusEndpoint' }, node.consensusEndpoint),
        element('td', { 'data-field': 'reachable', title: node.error || '' },
          node.reachable ? badge('yes') : badge('no'), node.reachable ? null : show(node.error)),
        element('td', { 'data-field': 'groupCount', class: 'number' }, show(node.groupCount)),
        element('td', { 'data-field': 'leaderCount', class: 'number' }, show(node.leaderCount))));
      byId('nodes').tBodies[0].replaceChildren(...rows);
    }

    // Another node's own dashboard (at `fragment`), when its client URL is plain http(s).
    function dashboardURL(clientURL, fragment) {
      if (!/^https?:\/\/[^\s]+$/.test(clientURL || '')) return null;
      return clientURL.replace(/\/+$/, '') + '/ui' + (fragment || '');
    }
    function nodeLink(node) {
      const url = dashboardURL(node.clientURL);
      return url ? element('a', { href: url }, node.clientURL) : show(node.clientURL);
    }

    function renderGroups(cluster) {
      const reachable = new Map((cluster.nodes || []).map((node) => [node.id, node.reachable]));
      const groups = groupsOf(cluster);
      const rows = groups.slice(0, groupRowsMax).map((group) => {
        const replicas = [...group.peers].sort((a, b) => a - b).map((peer) => {
          const report = group.reports.get(peer);
          const role = reachable.get(peer) === false ? 'unreachable' : report ? report.role : 'not reporting';
          return element('span', { 'data-replica': peer, 'data-role': role }, badge(peer + ' ' + role, role.replace(/ /g, '-')));
        });
        return element('tr', { 'data-group': group.id },
          element('td', { 'data-field': 'id' }, element('a', { href: '#/groups/' + group.id }, group.id)),
          element('td', { 'data-field': 'protocol' }, group.protocol),
          element('td', { 'data-leader': group.leader === null ? '' : group.leader },
            group.leader === null ? badge('none') : String(group.leader)),
          element('td', { 'data-field': 'term', class: 'number' }, group.term),
          element('td', { 'data-field': 'commitIndex', class: 'number' }, group.commitIndex),
          element('td', { 'data-field': 'appliedIndex', class: 'number' }, group.appliedIndex),
          element('td', { 'data-field': 'replicas' }, ...replicas));
      });
      byId('groups').tBodies[0].replaceChildren(...rows);
      const empty = byId('groups-empty');
      empty.hidden = rows.length === groups.length && rows.length > 0;
      empty.textContent = groups.length === 0 ? 'No groups.'
        : 'The first ' + rows.length + ' groups of ' + groups.length + ' are shown; open one by its id: #/groups/<id>.';
      const nodes = cluster.nodes || [];
      byId('summary').textContent = nodes.filter((node) => node.reachable).length + ' of ' + nodes.length +
        ' nodes reachable · ' + groups.filter((group) => group.leader !== null).length + ' of ' + groups.length +
        ' groups with a leader';
    }

    function renderDetail(id) {
      byId('detail-title').textContent = 'Group ' + id;
      const status = state.group && state.group.id === id ? state.group : null;
      const summary = byId('detail-summary');
      if (!status) {
        summary.replaceChildren(element('dt', {}, 'status'), element('dd', {}, state.groupError || 'loading…'));
        byId('peers').tBodies[0].replaceChildren();
        return;
      }
      const facts = [
        ['answered by', 'node ' + status.answeredBy + ' (' + status.role + ')'], ['protocol', status.protocol],
        ['leader', show(status.leader)], ['term', status.term], ['commit index', status.commitIndex],
        ['applied index', status.appliedIndex], ['snapshot index', status.snapshotIndex],
        ['log entries', status.logEntries], ['log bytes', status.logBytes],
        ['quiesced', status.quiesced === undefined ? '—' : status.quiesced ? 'yes (idle: no ticks, no heartbeats)' : 'no'],
        ['bootstrap voters', (status.bootstrapVoters || []).join(', ')],
      ];
      if (state.groupError) facts.unshift(['last error', state.groupError]);
      // Only the leader tracks its peers' replication; a follower answers for itself, so say
      // whose figures these are and where the leader's view is.
      const note = byId('detail-note');
      const leaderView = status.role === 'leader';
      note.hidden = leaderView;
      byId('peers-title').textContent = leaderView
        ? 'Peers, as the leader sees their replication'
        : 'Peers, as node ' + status.answeredBy + ' (' + status.role + ') last knew them';
      if (!leaderView) {
        const leaderNode = ((state.cluster && state.cluster.nodes) || []).find((node) => node.id === status.leader);
        const url = leaderNode ? dashboardURL(leaderNode.clientURL, '#/groups/' + id) : null;
        note.replaceChildren('Node ' + status.answeredBy + ' is a ' + status.role + ' of ' + id +
          '; only the leader tracks its peers\' replication. ',
          status.leader === null ? 'No leader is known.'
            : url ? element('a', { href: url, 'data-leader-view': status.leader }, 'Open the leader\'s view (node ' + status.leader + ')')
            : 'The leader is node ' + status.leader + '.');
      }
      summary.replaceChildren(...facts.flatMap(([name, value]) => [element('dt', {}, name), element('dd', { 'data-field': name }, show(value))]));
      const rows = (status.peers || []).map((peer) => {
        let progress = badge(peer.state);
        if (peer.state === 'snapshot' && peer.snapshotBytesTotal) {
          const percent = Math.floor((100 * (peer.snapshotBytesSent || 0)) / peer.snapshotBytesTotal);
          progress = element('span', {}, badge('snapshot'), peer.snapshotBytesSent + ' / ' + peer.snapshotBytesTotal + ' bytes (' + percent + '%)');
        }
        return element('tr', { 'data-peer': peer.id, 'data-state': peer.state },
          element('td', { 'data-field': 'id' }, peer.id, peer.id === status.leader ? ' ' : null, peer.id === status.leader ? badge('leader') : null),
          element('td', { 'data-field': 'endpoint' }, peer.endpoint),
          element('td', { 'data-field': 'learner' }, peer.learner ? badge('learner') : 'no'),
          element('td', { 'data-field': 'matchIndex', class: 'number' }, peer.matchIndex),
          element('td', { 'data-field': 'nextIndex', class: 'number' }, peer.nextIndex),
          element('td', { 'data-field': 'lag', class: 'number' }, peer.lag),
          element('td', { 'data-field': 'lastContactMs', class: 'number' },
            typeof peer.lastContactMs === 'number' ? peer.lastContactMs + ' ms' : '—'),
          element('td', { 'data-field': 'state' }, progress));
      });
      byId('peers').tBodies[0].replaceChildren(...rows);
    }

    function render() {
      const group = selectedGroup();
      byId('overview').hidden = group !== null;
      byId('detail').hidden = group === null;
      byId('served-by').textContent = state.servedBy ? 'served by node ' + state.servedBy : '';
      const banner = byId('banner');
      const failed = state.clusterError !== null;
      banner.hidden = !failed;
      banner.textContent = failed
        ? 'This node cannot read the cluster (GET /v1/cluster): ' + state.clusterError +
          (state.refreshedAt ? '. Showing what it read at ' + state.refreshedAt.toLocaleTimeString() + '.' : '.')
        : '';
      const status = byId('status');
      status.dataset.state = failed ? 'error' : state.cluster ? 'ok' : 'loading';
      status.textContent = failed ? 'unreachable' : state.cluster ? 'live' : 'loading…';
      const refreshed = byId('refreshed');
      refreshed.textContent = state.refreshedAt ? 'refreshed ' + state.refreshedAt.toLocaleTimeString() : 'never refreshed';
      refreshed.dataset.refreshedAt = state.refreshedAt ? String(state.refreshedAt.getTime()) : '';
      document.querySelector('main').classList.toggle('stale', failed);
      if (state.cluster) {
        renderNodes(state.cluster);
        renderGroups(state.cluster);
      }
      if (group !== null) renderDetail(group);
    }

    function needToken(message) {
      byId('auth').hidden = false;
      return message + ' — enter a token above';
    }

    async function refresh() {
      const group = selectedGroup();
      try {
        const answer = await getJSON('v1/cluster');
        state.cluster = answer.body;
        state.servedBy = answer.node;
        state.clusterError = null;
        state.refreshedAt = new Date();
        byId('auth').hidden = true;
      } catch (error) {
        state.clusterError = error instanceof UnauthorizedError ? needToken(error.message) : error.message;
      }
      if (group !== null) {
        try {
          const answer = await getJSON('v1/groups/' + encodeURIComponent(group));
          state.group = Object.assign(answer.body, { answeredBy: answer.node });
          state.groupError = null;
        } catch (error) {
          state.groupError = error instanceof UnauthorizedError ? needToken(error.message) : error.message;
        }
      }
      render();
    }

    // One refresh at a time; a view change asks for one at once, or, when one is under way (it
    // reads the view it started with), for one more right after it.
    let refreshing = null;
    let refreshAgain = false;
    function refreshNow() {
      if (refreshing) {
        refreshAgain = true;
        return refreshing;
      }
      refreshing = refresh().finally(() => {
        refreshing = null;
        if (refreshAgain) {
          refreshAgain = false;
          refreshNow();
        }
      });
      return refreshing;
    }
    // A refresh that throws (a node's answer the page did not expect) must not end the polling.
    async function poll() {
      const started = Date.now();
      try {
        await refreshNow();
      } catch (error) {
        const banner = byId('banner');
        banner.hidden = false;
        banner.textContent = 'The page could not show the last answer: ' + error;
      } finally {
        setTimeout(poll, Math.max(pollIntervalMs, (Date.now() - started) * pollSlowdownFactor));
      }
    }

    byId('auth').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = byId('token-input').value.trim();
      if (token) sessionStorage.setItem(tokenStorageKey, token); else sessionStorage.removeItem(tokenStorageKey);
      byId('token-input').value = '';
      refreshNow();
    });
    window.addEventListener('hashchange', () => { render(); refreshNow(); });
    render();
    poll();
    """#
}
