//! The page around every view, its style and its script: vendored in the
//! binary, nothing loaded from anywhere else.

use maud::{html, Markup, PreEscaped, DOCTYPE};

/// The dashboard's style: readable on a phone (tables scroll sideways,
/// the navigation wraps).
const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5b6577; --line:#d9dee7; --bg:#f6f7f9; --accent:#2456a6; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui, sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:.6rem 1rem; display:flex; flex-wrap:wrap; gap:.4rem 1.2rem; align-items:center; }
header a { color:#fff; text-decoration:none; }
header .who { margin-left:auto; color:#b9c2d3; font-size:.85rem; overflow-wrap:anywhere; }
main { padding:1rem; max-width:72rem; margin:0 auto; }
h1 { font-size:1.3rem; margin:.2rem 0 1rem; overflow-wrap:anywhere; }
h2 { font-size:1.05rem; margin:1.4rem 0 .5rem; }
.scroll { overflow-x:auto; background:#fff; border:1px solid var(--line); border-radius:6px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:.45rem .6rem; border-bottom:1px solid var(--line); white-space:nowrap; }
th { color:var(--muted); font-weight:600; font-size:.85rem; }
.state { font-weight:600; }
.state.running { color:#1a7f37; } .state.paused { color:#9a6700; } .state.corrupted { color:#cf222e; }
.actions { display:flex; flex-wrap:wrap; gap:.4rem; margin:.6rem 0; }
.actions form { display:inline-flex; gap:.3rem; }
button { font:inherit; padding:.35rem .8rem; border:1px solid var(--accent); background:var(--accent); color:#fff; border-radius:5px; cursor:pointer; }
button.quiet { background:#fff; color:var(--accent); }
input, textarea { font:inherit; padding:.35rem; border:1px solid var(--line); border-radius:5px; max-width:100%; }
textarea { width:100%; min-height:16rem; font-family:ui-monospace, monospace; font-size:.85rem; }
pre { background:#0f1420; color:#dfe6f3; padding:.7rem; border-radius:6px; overflow:auto; max-height:26rem; font-size:.8rem; }
.error { background:#ffebe9; border:1px solid #ff8182; padding:.6rem .8rem; border-radius:6px; margin:.6rem 0; }
.error li { font-family:ui-monospace, monospace; font-size:.85rem; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:.25rem 1rem; background:#fff; border:1px solid var(--line); border-radius:6px; padding:.7rem; }
dt { color:var(--muted); } dd { margin:0; overflow-wrap:anywhere; }
.charts { display:flex; flex-wrap:wrap; gap:1rem; }
.charts figure { margin:0; background:#fff; border:1px solid var(--line); border-radius:6px; padding:.5rem .7rem; flex:1 1 14rem; }
.charts figcaption { color:var(--muted); font-size:.85rem; }
.charts svg { width:100%; height:4rem; display:block; }
.charts polyline { fill:none; stroke:var(--accent); stroke-width:1.2; vector-effect:non-scaling-stroke; }
@media (max-width: 40rem) { main { padding:.6rem; } dl { grid-template-columns:1fr; } dt { margin-top:.4rem; } }
"#;

/// Live updates: states follow the event stream, forms marked `data-live`
/// are sent without leaving the page, a console follows its workspace.
const SCRIPT: &str = r#"
(function () {
  const es = new EventSource('/ui/events');
  // A browser holds few connections per server: the stream goes with the page.
  window.addEventListener('pagehide', () => es.close());
  es.addEventListener('workspace', (m) => {
    const ev = JSON.parse(m.data);
    const state = ev.data.state || 'destroyed';
    document.querySelectorAll('[data-ws="' + ev.subject + '"] .state').forEach((el) => {
      el.textContent = state;
      el.className = 'state ' + state;
    });
    document.querySelectorAll('[data-ws="' + ev.subject + '"] .placement').forEach((el) => {
      el.textContent = ev.data.placement || '';
    });
    document.querySelectorAll('[data-ws="' + ev.subject + '"] .node').forEach((el) => {
      el.textContent = ev.data.node || '-';
    });
    const list = document.querySelector('[data-list]');
    if (list && ev.data.action === 'create' && !document.querySelector('[data-ws="' + ev.subject + '"]')) {
      const row = document.createElement('tr');
      row.dataset.ws = ev.subject;
      row.innerHTML = '<td><a></a></td><td></td><td class="state"></td><td class="placement"></td><td></td>';
      row.querySelector('a').href = '/ui/w/' + ev.subject;
      row.querySelector('a').textContent = ev.subject;
      row.children[1].textContent = ev.data.name || '';
      row.children[2].textContent = state;
      row.children[3].textContent = ev.data.placement || '';
      list.appendChild(row);
    }
  });
  document.querySelectorAll('form[data-live]').forEach((f) => {
    f.addEventListener('submit', async (e) => {
      e.preventDefault();
      const out = document.getElementById('outcome');
      if (out) { out.textContent = '…'; out.className = ''; }
      const r = await fetch(f.action, { method: 'POST', body: new URLSearchParams(new FormData(f)), headers: { 'x-vws-live': '1' } });
      const text = await r.text();
      if (out) { out.textContent = r.ok ? text : text; out.className = r.ok ? '' : 'error'; }
    });
  });
  const pre = document.querySelector('pre[data-console]');
  if (pre) {
    const follow = async () => {
      try {
        const r = await fetch(pre.dataset.console);
        if (r.ok) { const t = await r.text(); if (t !== pre.textContent) { pre.textContent = t; pre.scrollTop = pre.scrollHeight; } }
      } catch (_) {}
      setTimeout(follow, 1000);
    };
    setTimeout(follow, 1000);
  }
  const charts = document.querySelector('[data-usage]');
  if (charts) {
    const series = { cpu: [], memory: [] };
    let last = null;
    const human = (b) => { const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0; while (b >= 1024 && i < 4) { b /= 1024; i++; } return b.toFixed(i ? 1 : 0) + ' ' + u[i]; };
    const draw = (name) => {
      const svg = charts.querySelector('svg[data-chart="' + name + '"]');
      const pts = series[name];
      const max = Math.max(1e-9, ...pts);
      const line = pts.map((v, i) => (i * 120 / 59).toFixed(1) + ',' + (40 - 38 * v / max).toFixed(1)).join(' ');
      svg.innerHTML = '<polyline points="' + line + '"></polyline>';
    };
    const sample = async () => {
      try {
        const r = await fetch(charts.dataset.usage);
        const u = r.ok ? (await r.json()).usage : null;
        if (u) {
          const now = Date.now() / 1000;
          if (last) {
            const cpu = Math.max(0, (u.cpu_seconds - last.cpu) / (now - last.at));
            series.cpu.push(cpu * 100);
            charts.querySelector('[data-now="cpu"]').textContent = (cpu * 100).toFixed(0) + ' %';
          }
          last = { cpu: u.cpu_seconds, at: now };
          series.memory.push(u.memory_bytes);
          charts.querySelector('[data-now="memory"]').textContent = human(u.memory_bytes);
          for (const k of ['cpu', 'memory']) { if (series[k].length > 60) series[k].shift(); draw(k); }
        }
      } catch (_) {}
      setTimeout(sample, 2000);
    };
    sample();
  }
  const file = document.querySelector('input[type=file][data-into]');
  if (file) {
    file.addEventListener('change', async () => {
      const f = file.files[0];
      if (f) { document.getElementById(file.dataset.into).value = await f.text(); }
    });
  }
})();
"#;

/// A whole page: navigation, who is signed in, the view.
pub fn page(title: &str, who: Option<&str>, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · vws" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { a href="/ui" { "vws" } }
                    @if who.is_some() {
                        a href="/ui" { "Workspaces" }
                        a href="/ui/new" { "New" }
                        a href="/ui/images" { "Images" }
                        a href="/ui/nodes" { "Nodes" }
                        a href="/ui/networks" { "Networks" }
                    }
                    @if let Some(w) = who {
                        span class="who" { (w) }
                    }
                    @if let Some(t) = csrf {
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(t);
                            button class="quiet" type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
                @if who.is_some() {
                    script { (PreEscaped(SCRIPT)) }
                }
            }
        }
    }
}
