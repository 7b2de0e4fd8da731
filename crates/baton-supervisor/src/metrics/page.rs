//! `GET /`: the status page a person looks at. Server-rendered HTML with
//! inline SVG from the same snapshot as `/status`, with no external asset
//! (the Content-Security-Policy forbids loading any), refreshing itself
//! every two seconds: listeners, generations and what each costs, the
//! cost over the last minutes, and the recent reloads as a timeline.
//!
//! Every string that comes from config, workers or the system is escaped
//! ([`format::esc`]); the structure carries `data-*` attributes (the
//! generation, its state, a reload's outcome) for tests and scripts.

mod charts;
mod format;
mod timeline;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use hyper::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, HeaderMap, HeaderValue};

use self::format::{bytes, colour, duration, esc, millis, percent};
use super::Snapshot;
use crate::status::{GenerationStatus, ListenerHealth, ListenerStatus, Outcome, Status};

/// The page's content type.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// How often the page fetches itself again, in milliseconds.
const REFRESH_MS: u32 = 2000;

/// Nothing but what the page carries inline, and fetches of itself.
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Headers beside the content type: never cached, nothing external.
pub fn headers(headers: &mut HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
}

/// Render the page for `snapshot`, as seen at `now` (seconds since the
/// Unix epoch).
pub fn render(snapshot: &Snapshot, now: f64) -> String {
    let status = &snapshot.status;
    let mut out = String::with_capacity(32 * 1024);
    head(&mut out, status);
    let _ = write!(out, "<body>");
    header(&mut out, status, now);
    let _ = write!(
        out,
        "<div id=\"stale\">baton does not answer: this is the page of {} UTC.</div><main>",
        format::clock(now)
    );
    listeners(&mut out, &status.listeners);
    summary(&mut out, status, now);
    generations(&mut out, &status.generations, now);
    charts::cost(&mut out, &snapshot.history, status, now);
    timeline::reloads(&mut out, status, now);
    let _ = write!(out, "</main></body></html>");
    out
}

fn head(out: &mut String, status: &Status) {
    let title = match status.generations.iter().find(|g| g.state == "active") {
        Some(g) => format!("generation {} active", g.generation),
        None => "no generation active".to_owned(),
    };
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>baton · {}</title><style>{STYLE}</style><script>{SCRIPT}</script>\
         <noscript><meta http-equiv=\"refresh\" content=\"{}\"></noscript></head>",
        esc(&title),
        REFRESH_MS / 1000,
    );
}

fn header(out: &mut String, status: &Status, now: f64) {
    let serving = match status.generations.iter().find(|g| g.state == "active") {
        Some(g) => format!(
            "<span class=\"serving\">generation {} serving</span>",
            g.generation
        ),
        None => "<span class=\"serving none\">no generation serving</span>".to_owned(),
    };
    let _ = write!(
        out,
        "<header><h1>baton</h1>{serving}<span class=\"meta\">v{} · pid {} · up {}</span>\
         <span class=\"updated\" title=\"the page fetches itself every {} s\">updated {} UTC</span></header>",
        esc(&status.version),
        status.pid,
        duration(status.uptime_s),
        REFRESH_MS / 1000,
        format::clock(now),
    );
}

fn listeners(out: &mut String, listeners: &[ListenerStatus]) {
    let with_health = listeners.iter().any(|l| health(l).is_some());
    let _ = write!(
        out,
        "<section id=\"listeners\" class=\"w6\"><h2>Listeners</h2><table><thead><tr>\
         <th>fd</th><th>name</th><th>address</th><th class=\"num\">backlog</th>{}</tr></thead><tbody>",
        if with_health { "<th>health</th>" } else { "" }
    );
    for (i, l) in listeners.iter().enumerate() {
        let backlog = l
            .backlog
            .map_or_else(|| "inherited".to_owned(), |b| b.to_string());
        let _ = write!(
            out,
            "<tr data-listener=\"{}\"><td class=\"muted\">{}</td><td><b>{}</b></td><td class=\"mono\">{}</td><td class=\"num\">{}</td>",
            esc(&l.name),
            i + 3,
            esc(&l.name),
            esc(&l.address),
            backlog,
        );
        if with_health {
            let (good, text) = health(l).unwrap_or((true, String::new()));
            let _ = write!(
                out,
                "<td><span class=\"badge h-{}\">{}</span></td>",
                if good { "ok" } else { "bad" },
                esc(&text)
            );
        }
        let _ = write!(out, "</tr>");
    }
    if listeners.is_empty() {
        let _ = write!(out, "<tr><td colspan=\"4\" class=\"muted\">none</td></tr>");
    }
    let _ = write!(out, "</tbody></table></section>");
}

/// A listener's health as the page shows it, and whether that is good.
fn health(listener: &ListenerStatus) -> Option<(bool, String)> {
    let repaired = match listener.repairs {
        0 => String::new(),
        n => format!(", repaired {n}×"),
    };
    Some(match listener.health {
        ListenerHealth::Ok => (true, format!("ok{repaired}")),
        ListenerHealth::Broken => {
            let problem = listener.problem.as_deref().unwrap_or("not listening");
            (false, format!("broken: {problem}"))
        }
        ListenerHealth::Unchecked => (true, "unchecked".to_owned()),
    })
}

fn summary(out: &mut String, status: &Status, now: f64) {
    let c = &status.counters;
    let last = status
        .reloads
        .iter()
        .rev()
        .find(|r| r.outcome != Outcome::Pending);
    let _ = write!(
        out,
        "<section id=\"summary\" class=\"w6\"><h2>Since start</h2><div class=\"tiles\">"
    );
    let mut tile = |label: &str, value: String, class: &str| {
        let _ = write!(
            out,
            "<div class=\"tile {class}\"><div class=\"v\">{value}</div><div class=\"l\">{label}</div></div>"
        );
    };
    tile("reloads ok", c.reloads_ok.to_string(), "");
    let failed = if c.reloads_failed > 0 { "bad" } else { "" };
    tile("reloads failed", c.reloads_failed.to_string(), failed);
    let crashed = if c.crashes > 0 { "bad" } else { "" };
    tile("crashes", c.crashes.to_string(), crashed);
    tile("restarts", c.restarts.to_string(), "");
    let _ = write!(out, "</div><p class=\"last\">");
    match last {
        Some(r) => {
            let (class, word) = match r.outcome {
                Outcome::Ok => ("ok", "ok"),
                _ => ("failed", "failed"),
            };
            let at = r.finished_at.unwrap_or(r.requested_at);
            let _ = write!(
                out,
                "last reload: <b>#{}</b> <span class=\"badge r-{class}\">{word}</span> {} ({} UTC)",
                r.id,
                format::ago(at, now),
                format::clock(at)
            );
        }
        None => {
            let _ = write!(out, "<span class=\"muted\">no reload yet</span>");
        }
    }
    if let Some(ms) = c.backoff_ms {
        let _ = write!(
            out,
            " · <span class=\"bad\">no worker serving: restart in {}</span>",
            millis(ms)
        );
    }
    let _ = write!(out, "</p></section>");
}

fn generations(out: &mut String, generations: &[GenerationStatus], now: f64) {
    let _ = write!(
        out,
        "<section id=\"generations\" class=\"w12\"><h2>Generations</h2><table><thead><tr>\
         <th>generation</th><th>state</th><th class=\"num\">pid</th><th class=\"num\">up</th>\
         <th class=\"num\">ready in</th><th class=\"num\">CPU</th><th class=\"num\">CPU time</th>\
         <th class=\"num\">RSS</th><th class=\"num\">threads</th><th class=\"num\">fds</th>\
         <th class=\"num\">connections</th><th class=\"num\">processes</th></tr></thead><tbody>"
    );
    for g in generations.iter().rev() {
        let u = &g.usage;
        let sampled = u.processes > 0;
        let figure = |text: String| if sampled { text } else { "…".to_owned() };
        let _ = write!(
            out,
            "<tr data-generation=\"{n}\" data-state=\"{state}\" data-pid=\"{pid}\" class=\"g-{state}\">\
             <td><span class=\"swatch\" style=\"background:{colour}\"></span><b>{n}</b></td>\
             <td><span class=\"badge s-{state}\">{state}</span></td><td class=\"num mono\">{pid}</td>\
             <td class=\"num\">{up}</td><td class=\"num\">{ready}</td><td class=\"num\">{cpu}</td>\
             <td class=\"num\">{cpu_time}</td><td class=\"num\">{rss}</td><td class=\"num\">{threads}</td>\
             <td class=\"num\">{fds}</td><td class=\"num\">{connections}</td><td class=\"num\">{processes}</td></tr>",
            n = g.generation,
            state = esc(&g.state),
            pid = g.pid.map_or_else(|| "—".to_owned(), |p| p.to_string()),
            colour = colour(g.generation),
            up = duration(now - g.started_at),
            ready = g.ready_ms.map_or_else(|| "—".to_owned(), millis),
            cpu = figure(percent(u.cpu_percent)),
            cpu_time = figure(duration(u.cpu_seconds)),
            rss = figure(bytes(u.rss_bytes as f64)),
            threads = figure(u.threads.to_string()),
            fds = figure(u.open_fds.to_string()),
            connections = u
                .connections
                .map_or_else(|| "—".to_owned(), |c| c.to_string()),
            processes = figure(u.processes.to_string()),
        );
    }
    if generations.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"12\" class=\"muted\">no generation is running</td></tr>"
        );
    }
    let _ = write!(
        out,
        "</tbody></table><p class=\"note\">CPU is the share of one core since the previous \
         sample; connections are counted while a generation drains. Figures are summed over \
         each generation's process group and sampled every 2 s.</p></section>"
    );
}

/// Fetch the page again and swap its body in place (no flicker, the
/// scroll position stays); when baton does not answer, say so and keep
/// the last page. `data-refreshes` counts the swaps (tests read it).
const SCRIPT: &str = "setInterval(async()=>{const h=document.documentElement;try{\
const r=await fetch(location.pathname,{cache:'no-store'});if(!r.ok)throw r.status;\
const d=new DOMParser().parseFromString(await r.text(),'text/html');document.title=d.title;\
document.body.replaceWith(d.body);h.classList.remove('stale');h.dataset.refreshes=(+h.dataset.refreshes||0)+1}\
catch(e){h.classList.add('stale')}},2000)";

const STYLE: &str = "\
:root{--bg:#f3f4f7;--card:#fff;--ink:#1b2130;--muted:#687385;--line:#e3e6eb;--ok:#137a52;--bad:#c2302a;--warn:#a85f00;--info:#2a5fcc}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--ink);font:13px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;font-variant-numeric:tabular-nums}\
header{display:flex;align-items:baseline;gap:14px;padding:9px 20px;background:#1b2130;color:#fff}\
header h1{font-size:18px;margin:0;letter-spacing:.03em}\
header .meta,header .updated{color:#aeb7c7}header .updated{margin-left:auto}\
#stale{display:none;background:var(--bad);color:#fff;padding:6px 20px;font-weight:600}.stale #stale{display:block}\
main{padding:12px 20px 20px;display:grid;gap:12px;grid-template-columns:repeat(12,minmax(0,1fr))}\
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:9px 14px 10px;min-width:0}\
h2{font-size:11px;text-transform:uppercase;letter-spacing:.08em;color:var(--muted);margin:0 0 6px}\
.w6{grid-column:span 6}.w12{grid-column:span 12}\
table{border-collapse:collapse;width:100%}\
th{font-weight:600;color:var(--muted);text-align:left;font-size:11.5px;padding:3px 8px;border-bottom:1px solid var(--line);white-space:nowrap}\
td{padding:4px 8px;border-bottom:1px solid #eef0f3;white-space:nowrap}\
tbody tr:last-child td{border-bottom:0}\
.num{text-align:right}.mono{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px}\
.muted{color:var(--muted)}.bad{color:var(--bad)}\
.badge{display:inline-block;padding:0 8px;border-radius:9px;font-size:11.5px;font-weight:600;line-height:18px}\
.s-active,.r-ok,.h-ok{background:#e2f3ea;color:var(--ok)}\
.s-starting,.r-pending{background:#e4ecfb;color:var(--info)}\
.s-draining{background:#fbf0dc;color:var(--warn)}\
.s-killing,.r-failed,.h-bad{background:#fbe4e2;color:var(--bad)}\
tr.g-active td{background:#f6fbf8}\
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:7px}\
.tiles{display:flex;gap:10px}\
.tile{flex:1;border:1px solid var(--line);border-radius:6px;padding:4px 10px}\
.tile .v{font-size:20px;font-weight:650}.tile .l{color:var(--muted);font-size:11.5px}\
.tile.bad .v{color:var(--bad)}\
.last{margin:8px 0 0}\
.note{margin:6px 0 0;color:var(--muted);font-size:11.5px}\
.charts{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:14px}\
.chart h3{font-size:12px;margin:0 0 2px;font-weight:600}\
.chart h3 span{color:var(--muted);font-weight:400}\
.chart svg{display:block;width:100%;height:auto}\
svg text{font:10.5px system-ui,'DejaVu Sans',sans-serif;fill:#687385}\
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin-top:4px;color:var(--muted);font-size:11.5px}\
.legend .total{display:inline-block;width:16px;border-top:2px dashed #1b2130;margin-right:6px;vertical-align:3px}\
td.bar{padding-top:2px;padding-bottom:0}\
td.detail{width:100%;max-width:0}td.detail div{overflow:hidden;text-overflow:ellipsis}\
.gone{text-decoration:line-through;text-decoration-color:var(--bad)}\
header .serving{font-weight:600;color:#7ee2b0}header .serving.none{color:#ff9c94}\
.key{float:right;display:inline-flex;gap:14px;font-weight:400;text-transform:none;letter-spacing:0;font-size:11.5px}\
.key i{display:inline-block;width:10px;height:8px;margin-right:4px;border-radius:1px}\
";
