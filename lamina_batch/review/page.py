"""The review page: markup, stylesheet and script, served as one document with a per-session token and a CSP nonce.

The script loads `/api/items`, renders one band per row and one tile per run, filters, and drives the keyboard
(a approve, r reject with a note, u undo, j/k move, ? help); it polls `/api/stamp` and re-renders what changed.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from html import escape

from lamina_batch.reports.common import STATE_LABELS, STATE_ORDER
from lamina_batch.reports.html_assets import GALLERY_CSS

__all__ = ["REFRESH_MS", "render_page"]

REFRESH_MS = 2000


def render_page(pipeline_name: str, step_ids: Sequence[str], token: str) -> tuple[bytes, str]:
    """(the page as UTF-8, its Content-Security-Policy): scripts and styles only with this response's nonce,
    requests only to this origin, never framed."""
    nonce = secrets.token_urlsafe(16)
    cfg = json.dumps({"pipeline": pipeline_name, "steps": list(step_ids), "refresh_ms": REFRESH_MS})
    cfg = cfg.replace("<", "\\u003c")  # a JSON data block must not be able to close its <script>
    name = escape(pipeline_name, quote=True)
    steps = "".join(f'<option value="{escape(s, quote=True)}">{escape(s)}</option>' for s in step_ids)
    states = "".join(f'<option value="{s.value}">{escape(STATE_LABELS[s])}</option>' for s in STATE_ORDER)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="review-token" content="{escape(token, quote=True)}">
<title>{name} · lamina-batch review</title><style nonce="{nonce}">{GALLERY_CSS}{_CSS}</style></head>
<body>
<header><div class="top"><div><p class="kicker">lamina-batch review</p><h1>{name}</h1>
<p class="sub" id="sub">Loading…</p></div>
<div class="keys"><kbd>j</kbd>/<kbd>k</kbd> move <kbd>a</kbd> approve <kbd>r</kbd> reject <kbd>u</kbd> undo
<button type="button" id="helpbtn" title="Keyboard help">?</button></div></div>
<nav><select id="f-step" aria-label="Step"><option value="">All steps</option>{steps}</select>
<select id="f-state" aria-label="Status"><option value="">Any status</option>{states}</select>
<select id="f-verdict" aria-label="Verdict"><option value="">Any verdict</option>
<option value="unreviewed">Unreviewed</option><option value="approved">Approved</option>
<option value="rejected">Rejected</option></select>
<input type="search" id="q" placeholder="Search rows…  ( / )" aria-label="Search rows">
<span id="live" class="live" title="New results appear as the batch completes them">live</span></nav></header>
<main id="rows" aria-live="off"></main><p class="empty" id="none" hidden>No images match.</p>
<div id="notebar" class="notebar" hidden><label for="note">Reject <b id="nb-what"></b> · note (optional)</label>
<input id="note" type="text" maxlength="2000" autocomplete="off" placeholder="e.g. wrong colour, product cropped">
<span><kbd>Enter</kbd> reject · <kbd>Esc</kbd> cancel</span></div>
<div id="help" class="help" hidden role="dialog" aria-label="Keyboard help"><div><h2>Keyboard</h2><dl>
<dt><kbd>j</kbd> / <kbd>k</kbd></dt><dd>next / previous image</dd><dt><kbd>a</kbd></dt><dd>approve</dd>
<dt><kbd>r</kbd></dt><dd>reject (type an optional note, then Enter)</dd><dt><kbd>u</kbd></dt>
<dd>undo the last verdict</dd><dt><kbd>/</kbd></dt><dd>search</dd><dt><kbd>?</kbd></dt><dd>this help</dd>
<dt><kbd>Esc</kbd></dt><dd>close</dd></dl><p>Each verdict is saved in the manifest at once. Regenerate the
rejected images with <code>lamina-batch run PIPELINE --redo rejected</code>.</p></div></div>
<div id="toast" class="toast" role="status" hidden></div>
<script type="application/json" id="cfg">{cfg}</script>
<script nonce="{nonce}">{_JS}</script>
</body></html>
"""
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data: https: http:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page.encode("utf-8"), csp


_CSS = """
.keys{color:var(--muted);font-size:12.5px;display:flex;gap:6px;align-items:center;flex-wrap:wrap}
kbd{font:11.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;border:1px solid #d0d5dd;border-bottom-width:2px;
border-radius:4px;padding:0 5px;background:#fff;color:var(--ink)}
#helpbtn{font:inherit;font-weight:700;border:1px solid var(--line);background:#fff;border-radius:50%;width:26px;
height:26px;cursor:pointer}
.live{font-size:12px;color:var(--ok-ink)}.live::before{content:"";display:inline-block;width:7px;height:7px;
border-radius:50%;background:var(--ok);margin-right:5px}.live.off{color:var(--muted)}.live.off::before{background:var(--cx)}
main#rows{display:block;padding:16px 28px}
.row{display:grid;grid-template-columns:250px minmax(0,1fr);gap:16px;background:#fff;border:1px solid var(--line);
border-radius:12px;padding:12px 14px;margin-bottom:12px;content-visibility:auto;contain-intrinsic-size:auto 260px}
.row[hidden]{display:none}
.rowhead{min-width:0}.rowhead dl.kv{margin-top:6px;padding-top:6px}
.tiles{display:flex;flex-wrap:wrap;gap:10px;align-content:flex-start}
.tile{width:290px;border:2px solid transparent;border-radius:10px;padding:6px;background:#f9fafb;cursor:pointer;
scroll-margin-top:170px;scroll-margin-bottom:24px;outline:none}
.tile[hidden]{display:none}
.tile.focus{border-color:var(--ink);background:#fff;box-shadow:0 4px 14px rgba(16,24,40,.14)}
.tile .img{aspect-ratio:4/3;display:grid;gap:2px;border-radius:6px;overflow:hidden;background:#eef0f3;
border:3px solid transparent}
.tile .img.n2,.tile .img.n4{grid-template-columns:1fr 1fr}.tile .img.n3{grid-template-columns:1fr 1fr 1fr}
.tile .img a{display:block;min-height:0}.tile .img img{width:100%;height:100%;object-fit:cover;display:block}
.tile .img.none{display:grid;place-items:center;color:var(--muted);font-size:12px;
background:repeating-linear-gradient(45deg,#f6f7f9,#f6f7f9 10px,#eff1f4 10px,#eff1f4 20px)}
.tile.v-approved .img{border-color:var(--ok)}.tile.v-rejected .img{border-color:var(--bad)}
.meta{display:flex;align-items:center;gap:6px;margin-top:6px;white-space:nowrap;min-width:0}
.meta .step{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#475467;overflow:hidden;
text-overflow:ellipsis;flex:0 1 auto;min-width:3ch}.meta .badge{flex:none}
.vb{margin-left:auto;font-size:11.5px;font-weight:600;color:var(--muted);flex:none}
.v-approved .vb{color:var(--ok-ink)}.v-rejected .vb{color:var(--bad-ink)}
.tile .note{margin:4px 0 0;font-size:12px;color:var(--bad-ink);white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
.tile .err{-webkit-line-clamp:2}
.tile .btns{display:flex;gap:6px;margin-top:6px}
.tile .btns button{flex:1;font:inherit;font-size:12px;border:1px solid var(--line);background:#fff;border-radius:6px;
padding:2px 6px;cursor:pointer}
.tile.v-approved .va{background:var(--ok-bg);border-color:var(--ok);color:var(--ok-ink);font-weight:600}
.tile.v-rejected .vr{background:var(--bad-bg);border-color:var(--bad);color:var(--bad-ink);font-weight:600}
.tile .atts{margin:6px 0 0}
.notebar{position:fixed;left:50%;bottom:24px;transform:translateX(-50%);background:var(--ink);color:#fff;
border-radius:12px;padding:12px 16px;display:flex;gap:12px;align-items:center;z-index:20;
box-shadow:0 10px 30px rgba(16,24,40,.35);font-size:13px}
.notebar[hidden],.help[hidden],.toast[hidden]{display:none}
.notebar input{font:inherit;min-width:340px;padding:6px 10px;border-radius:8px;border:0}
.notebar kbd{background:#344054;color:#fff;border-color:#475467}
.help{position:fixed;inset:0;background:rgba(16,24,40,.45);display:grid;place-items:center;z-index:30}
.help>div{background:#fff;border-radius:14px;padding:20px 26px;max-width:460px}
.help h2{margin:0 0 10px;font-size:17px}.help dl{display:grid;grid-template-columns:auto 1fr;gap:6px 14px}
.help dd{margin:0}.help p{color:var(--muted);font-size:12.5px}
.toast{position:fixed;right:20px;bottom:20px;background:#101828;color:#fff;padding:8px 14px;border-radius:8px;
font-size:13px;z-index:25}
"""

_JS = """
(function(){
"use strict";
var cfg=JSON.parse(document.getElementById("cfg").textContent);
var TOKEN=document.querySelector('meta[name="review-token"]').getAttribute("content");
var main=document.getElementById("rows"),sub=document.getElementById("sub"),none=document.getElementById("none");
var fStep=document.getElementById("f-step"),fState=document.getElementById("f-state"),
fVerdict=document.getElementById("f-verdict"),q=document.getElementById("q"),live=document.getElementById("live");
var bar=document.getElementById("notebar"),noteIn=document.getElementById("note"),help=document.getElementById("help"),
toastEl=document.getElementById("toast");
var items=[],runs={},nodes={},stamp=null,focusId=null,undoStack=[],toastTimer=null,first=true;
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;
if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function toast(msg){toastEl.textContent=msg;toastEl.hidden=false;clearTimeout(toastTimer);
toastTimer=setTimeout(function(){toastEl.hidden=true;},2500);}
function fields(pairs){var dl=el("dl","kv");pairs.forEach(function(p){var dt=el("dt",null,p[0]),dd=el("dd",null,p[1]);
dt.title=p[0];dd.title=p[1];dl.appendChild(dt);dl.appendChild(dd);});return dl;}
function verdictOf(run){return run.verdict?run.verdict.verdict:(run.reviewable?"unreviewed":"");}
function thumb(src,alt){var img=el("img");img.loading="lazy";img.decoding="async";img.alt=alt;img.src=src;return img;}
function strip(run){var s=el("div","atts");var all=[{attempt:run.attempt,images:run.images,label:"now",cur:true}];
run.history.forEach(function(h){all.push({attempt:h.attempt,images:h.images,
label:h.verdict?h.verdict.verdict:h.state});});
all.forEach(function(a){var f=el("figure","att"+(a.cur?" cur":" a-"+a.label));
f.appendChild(a.images.length?thumb(a.images[0].src,"attempt "+a.attempt):el("i","noimg"));
f.appendChild(el("figcaption",null,"#"+a.attempt+" · "+a.label));s.appendChild(f);});return s;}
function tile(run){var t=el("div","tile");t.tabIndex=-1;var v=verdictOf(run);
t.setAttribute("data-identity",run.identity);t.setAttribute("data-step",run.step);
t.setAttribute("data-state",run.state);t.setAttribute("data-verdict",v);if(run.verdict)t.classList.add("v-"+v);
var box=el("div","img n"+Math.min(Math.max(run.images.length,1),4));
if(run.images.length){run.images.slice(0,4).forEach(function(im){var a=el("a");a.href=im.src;a.target="_blank";
a.rel="noopener";a.tabIndex=-1;a.appendChild(thumb(im.src,run.step+" · "+im.label));box.appendChild(a);});}
else{box.classList.add("none");box.appendChild(el("span",null,"no image · "+run.state.replace("_"," ")));}
t.appendChild(box);var meta=el("div","meta");meta.appendChild(el("span","step",run.step));
meta.appendChild(el("span","badge s-"+run.state,run.state.replace("_"," ")));meta.appendChild(el("span","vb",v));
t.appendChild(meta);
if(run.verdict&&run.verdict.note){var n=el("p","note",run.verdict.note);n.title=run.verdict.note;t.appendChild(n);}
if(run.error){var e=el("p","err",run.error);e.title=run.error;t.appendChild(e);}
run.texts.forEach(function(x){var o=el("p","out",x.label+": "+x.text);o.title=x.text;t.appendChild(o);});
if(run.history.length)t.appendChild(strip(run));
if(run.reviewable){var b=el("div","btns"),ba=el("button","va","Approve"),br=el("button","vr","Reject");
ba.type="button";br.type="button";ba.setAttribute("data-act","a");br.setAttribute("data-act","r");
b.appendChild(ba);b.appendChild(br);t.appendChild(b);}
return t;}
function section(item){var s=el("section","row");s.setAttribute("data-item",item.item);var head=el("div","rowhead");
var h=el("h2");h.appendChild(el("span","rn","#"+item.row_number));
var tt=el("span","ttl",item.title);tt.title=item.title;
h.appendChild(tt);if(item.axes)h.appendChild(el("span","axes",item.axes));head.appendChild(h);
if(item.shown.length)head.appendChild(fields(item.shown));
if(item.rest.length){var d=el("details","more");
d.appendChild(el("summary",null,item.rest.length+" more column"+(item.rest.length===1?"":"s")));
d.appendChild(fields(item.rest));head.appendChild(d);}
s.appendChild(head);var tiles=el("div","tiles");item.runs.forEach(function(r){tiles.appendChild(tile(r));});
s.appendChild(tiles);return s;}
function index(){runs={};items.forEach(function(it){it.runs.forEach(function(r){runs[r.identity]={run:r,item:it};});});}
function place(item,cursor){var sig=JSON.stringify(item),old=nodes[item.item],node;
if(old&&old.sig===sig){node=old.node;}else{node=section(item);
if(old){if(cursor===old.node)cursor=node;main.replaceChild(node,old.node);}nodes[item.item]={sig:sig,node:node};}
if(node===cursor)return cursor.nextSibling;main.insertBefore(node,cursor);return cursor;}
function render(){var seen={},cursor=main.firstChild;
items.forEach(function(item){seen[item.item]=1;cursor=place(item,cursor);});
Object.keys(nodes).forEach(function(k){if(!seen[k]){nodes[k].node.remove();delete nodes[k];}});
index();filter();var t=tileOf(focusId);if(t)t.classList.add("focus");else focusId=null;summary();}
function rerender(item){var old=nodes[item.item];if(!old)return;var node=section(item);
main.replaceChild(node,old.node);nodes[item.item]={sig:JSON.stringify(item),node:node};filter();
var t=tileOf(focusId);if(t)t.classList.add("focus");summary();}
function filter(){var st=fStep.value,ss=fState.value,sv=fVerdict.value,tq=q.value.trim().toLowerCase(),shown=0;
items.forEach(function(item){var node=nodes[item.item].node,rowOk=!tq||item.text.indexOf(tq)>=0,any=0;
var ts=node.querySelectorAll(".tile");for(var i=0;i<ts.length;i++){var t=ts[i];
var ok=rowOk&&(!st||t.getAttribute("data-step")===st)&&(!ss||t.getAttribute("data-state")===ss)&&
(!sv||t.getAttribute("data-verdict")===sv);t.hidden=!ok;if(ok)any++;}
node.hidden=!any;shown+=any;});none.hidden=shown>0||!items.length;}
function summary(){var n=0,a=0,r=0,u=0;items.forEach(function(it){it.runs.forEach(function(x){n++;
var v=verdictOf(x);if(v==="approved")a++;else if(v==="rejected")r++;else if(v==="unreviewed")u++;});});
sub.textContent=items.length+" rows · "+n+" runs · "+a+" approved · "+r+" rejected · "+u+" to review";}
function tileOf(id){if(!id)return null;var e=runs[id];if(!e||!nodes[e.item.item])return null;
return nodes[e.item.item].node.querySelector('.tile[data-identity="'+CSS.escape(id)+'"]');}
function visible(){return Array.prototype.filter.call(main.querySelectorAll(".tile"),function(t){
return !t.hidden&&!t.parentNode.parentNode.hidden;});}
function focusTile(t,scroll){var old=tileOf(focusId);if(old)old.classList.remove("focus");
focusId=t?t.getAttribute("data-identity"):null;if(!t)return;t.classList.add("focus");
if(scroll)t.scrollIntoView({block:"nearest"});}
function move(d){var ts=visible();if(!ts.length)return;var i=ts.indexOf(tileOf(focusId));
i=i<0?(d>0?0:ts.length-1):Math.max(0,Math.min(ts.length-1,i+d));focusTile(ts[i],true);}
function post(path,body){return fetch(path,{method:"POST",credentials:"same-origin",
headers:{"Content-Type":"application/json","X-Review-Token":TOKEN},body:JSON.stringify(body)}).then(function(res){
return res.json().then(function(j){if(!res.ok)throw new Error(j.error||("HTTP "+res.status));return j;});});}
function target(){var t=tileOf(focusId);if(!t){toast("Pick an image first: j / k");return null;}
var e=runs[focusId];if(!e.run.reviewable){toast("Only completed runs are reviewed");return null;}return e;}
function decide(verdict,note){var e=target();if(!e)return;var ts=visible(),i=ts.indexOf(tileOf(focusId)),
next=ts[i+1]?ts[i+1].getAttribute("data-identity"):focusId,run=e.run;
post("/api/verdict",{identity:run.identity,attempt:run.attempt,verdict:verdict,note:note||null}).then(function(j){
run.verdict=j.verdict;undoStack.push({identity:run.identity,attempt:run.attempt});rerender(e.item);
focusTile(tileOf(next)||tileOf(run.identity),true);toast(verdict+": "+e.item.title+" · "+run.step);
}).catch(function(err){toast(err.message);load();});}
function undo(){var last=undoStack.pop();if(!last){toast("Nothing to undo");return;}
post("/api/undo",last).then(function(j){var e=runs[last.identity];if(!e)return;e.run.verdict=j.verdict;
rerender(e.item);focusTile(tileOf(last.identity),true);toast("Undone: "+e.item.title+" · "+e.run.step);
}).catch(function(err){toast(err.message);load();});}
function askNote(){var e=target();if(!e)return;
document.getElementById("nb-what").textContent=e.item.title+" · "+e.run.step;
noteIn.value=e.run.verdict&&e.run.verdict.note?e.run.verdict.note:"";bar.hidden=false;noteIn.focus();}
noteIn.addEventListener("keydown",function(ev){if(ev.key==="Enter"){ev.preventDefault();bar.hidden=true;
noteIn.blur();decide("rejected",noteIn.value.trim());}else if(ev.key==="Escape"){ev.preventDefault();bar.hidden=true;
noteIn.blur();}ev.stopPropagation();});
function toggleHelp(show){help.hidden=show===undefined?!help.hidden:!show;}
document.getElementById("helpbtn").addEventListener("click",function(){toggleHelp();});
help.addEventListener("click",function(){toggleHelp(false);});
document.addEventListener("keydown",function(ev){if(ev.ctrlKey||ev.metaKey||ev.altKey)return;
var tag=(ev.target&&ev.target.tagName||"").toLowerCase();
if(tag==="input"||tag==="select"||tag==="textarea"){if(ev.key==="Escape")ev.target.blur();return;}
if(!help.hidden&&ev.key!=="?"&&ev.key!=="Escape")return;
switch(ev.key){case "j":move(1);break;case "k":move(-1);break;case "a":decide("approved");break;
case "r":askNote();break;case "u":undo();break;case "?":toggleHelp();break;case "/":q.focus();break;
case "Escape":toggleHelp(false);break;default:return;}ev.preventDefault();});
main.addEventListener("click",function(ev){var t=ev.target.closest(".tile");if(!t)return;
var act=ev.target.closest("button");if(!act&&ev.target.closest("a"))return;focusTile(t,false);
if(act&&act.getAttribute("data-act")==="a")decide("approved");
else if(act&&act.getAttribute("data-act")==="r")askNote();});
[fStep,fState,fVerdict].forEach(function(s){s.addEventListener("change",filter);});
q.addEventListener("input",filter);
function load(){return fetch("/api/items",{cache:"no-store"}).then(function(r){
if(!r.ok)throw new Error("HTTP "+r.status);
return r.json();}).then(function(d){stamp=d.stamp;items=d.items;render();live.classList.remove("off");
if(first){first=false;var ts=visible();if(ts.length&&!focusId)focusTile(ts[0],false);}});}
function poll(){fetch("/api/stamp",{cache:"no-store"}).then(function(r){return r.json();}).then(function(j){
live.classList.remove("off");if(j.stamp!==stamp)return load();}).catch(function(){live.classList.add("off");})
.then(function(){setTimeout(poll,cfg.refresh_ms);});}
load().catch(function(err){sub.textContent="Could not load the runs: "+err.message;}).then(function(){
setTimeout(poll,cfg.refresh_ms);});
})();
"""
