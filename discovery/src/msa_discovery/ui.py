"""/ui: one page for people. It reads the same JSON API every client uses (agent/services, agent/checks, kv),
every 1.5 s, so what you see is exactly what a client would be told."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse

__all__ = ["ui_page", "PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>msa-discovery</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:baseline}
 header h1{font-size:18px;margin:0} header span{opacity:.75;font-size:12px}
 main{padding:16px 20px;max-width:1200px}
 section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin-bottom:16px}
 section h2{font-size:15px;margin:0;padding:8px 12px;border-bottom:1px solid #dde1e7;display:flex;gap:10px}
 table{border-collapse:collapse;width:100%} td,th{padding:6px 12px;text-align:left;vertical-align:top}
 th{font-size:12px;color:#5b6475;font-weight:600} tr+tr td{border-top:1px solid #eef0f3}
 code{font-size:12px} .tag{background:#e8eefc;border-radius:3px;padding:0 5px;margin-right:3px;font-size:12px}
 .st{border-radius:3px;padding:1px 6px;color:#fff;font-size:12px;font-weight:600}
 .passing{background:#2e9e5b}.warning{background:#d69a00}.critical{background:#d0393e}
 .out{color:#5b6475;font-size:12px;white-space:pre-wrap;word-break:break-all;max-height:4.5em;overflow:hidden}
 #err{color:#d0393e} .muted{color:#8a93a3}
</style></head><body>
<header><h1>msa-discovery</h1><span>Consul HTTP API subset &middot; node <b id="node">?</b></span>
<span>X-Consul-Index <b id="idx">?</b></span><span id="err"></span></header>
<main><div id="services"><p class="muted">loading&hellip;</p></div>
<section><h2>Key/value</h2><div id="kv"></div></section></main>
<script>
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const badge = s => `<span class="st ${esc(s)}">${esc(s)}</span>`;
function worst(checks){ const o={passing:0,warning:1,critical:2};
  return checks.reduce((w,c)=>o[c.Status]>o[w]?c.Status:w,"passing"); }
async function get(path){ const r = await fetch(path, {cache:"no-store"});
  if (r.status === 404) return [null, r.headers.get("X-Consul-Index")];
  if (!r.ok) throw new Error(path + ": " + r.status);
  return [await r.json(), r.headers.get("X-Consul-Index")]; }
async function refresh(){
  try {
    const [[services, idx], [checks], [self], [keys]] = await Promise.all(
      [get("/v1/agent/services"), get("/v1/agent/checks"), get("/v1/agent/self"), get("/v1/kv/?keys")]);
    document.getElementById("idx").textContent = idx;
    document.getElementById("node").textContent = self.Config.NodeName + " (" + self.Member.Addr + ")";
    // Checks registered without a ServiceID belong to the node: they count for every instance, as in ?passing.
    const nodeChecks = Object.values(checks).filter(c => !c.ServiceID);
    const byName = {};
    for (const s of Object.values(services)) (byName[s.Service] ??= []).push(s);
    const html = Object.keys(byName).sort().map(name => {
      const rows = byName[name].map(s => {
        const cs = Object.values(checks).filter(c => c.ServiceID === s.ID);
        const all = nodeChecks.concat(cs);
        const addr = (s.Address || self.Member.Addr) + ":" + s.Port;
        return `<tr><td>${badge(all.length ? worst(all) : "passing")}</td><td><code>${esc(s.ID)}</code></td>
          <td><code>${esc(addr)}</code></td><td>${s.Tags.map(t=>`<span class="tag">${esc(t)}</span>`).join("")}</td>
          <td><code>${Object.entries(s.Meta||{}).map(([k,v])=>esc(k)+"="+esc(v)).join("<br>")}</code></td>
          <td>${cs.map(c=>`<div>${badge(c.Status)} <code>${esc(c.CheckID)}</code> <span class="muted">${esc(c.Type)}</span>
            <div class="out">${esc(c.Output)}</div></div>`).join("") || '<span class="muted">no checks</span>'}</td></tr>`;
      }).join("");
      const up = byName[name].filter(s => nodeChecks.concat(Object.values(checks).filter(c => c.ServiceID === s.ID))
        .every(c => c.Status === "passing")).length;
      return `<section><h2>${esc(name)} <span class="muted">${up}/${byName[name].length} passing</span></h2>
        <table><tr><th>state</th><th>instance id</th><th>address</th><th>tags</th><th>meta</th><th>checks</th></tr>
        ${rows}</table></section>`;
    }).join("");
    const node = nodeChecks.length ? `<section><h2>node checks <span class="muted">count for every instance</span>
      </h2><table>${nodeChecks.map(c => `<tr><td>${badge(c.Status)}</td><td><code>${esc(c.CheckID)}</code></td>
      <td>${esc(c.Name)}</td><td class="muted">${esc(c.Notes)}</td><td><div class="out">${esc(c.Output)}</div></td>
      </tr>`).join("")}</table></section>` : "";
    document.getElementById("services").innerHTML = node + (html || '<p class="muted">no services registered</p>');
    document.getElementById("kv").innerHTML = keys && keys.length
      ? "<table>" + keys.map(k => `<tr><td><code>${esc(k)}</code></td></tr>`).join("") + "</table>"
      : '<p class="muted" style="padding:0 12px">empty</p>';
    document.getElementById("err").textContent = "";
  } catch (e) { document.getElementById("err").textContent = "disconnected: " + e.message; }
}
refresh(); setInterval(refresh, 1500);
</script></body></html>
"""


async def ui_page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)
