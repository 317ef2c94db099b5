"""The gallery page's inline stylesheet and script (kept apart from the markup code that embeds them).

The script filters cards and keeps offline verdicts in localStorage (keyed by pipeline) until they are exported
as verdicts.json; it must never fetch anything, so the page stays one self-contained file."""

from __future__ import annotations

GALLERY_CSS = """
:root{--bg:#f4f5f7;--card:#fff;--ink:#1b1f24;--muted:#667085;--line:#e4e7ec;
--ok:#12b76a;--ok-bg:#e7f8ef;--ok-ink:#05603a;--bad:#f04438;--bad-bg:#fdecea;--bad-ink:#912018;
--to:#f79009;--to-bg:#fef4e6;--to-ink:#93370d;--cx:#98a2b3;--cx-bg:#f2f4f7;--cx-ink:#344054;
--un:#9e77ed;--un-bg:#f4f0ff;--un-ink:#53389e;--run:#2e90fa;--run-bg:#eaf3ff;--run-ink:#1849a9;
--pe:#94a3b8;--pe-bg:#f1f5f9;--pe-ink:#334155}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.94);backdrop-filter:blur(6px);
border-bottom:1px solid var(--line);padding:18px 28px 14px}
.top{display:flex;justify-content:space-between;align-items:flex-end;gap:16px}
.kicker{margin:0;font-size:11px;letter-spacing:.08em;text-transform:uppercase;color:var(--muted);font-weight:600}
h1{margin:2px 0 2px;font-size:24px;letter-spacing:-.01em}
.sub{margin:0;color:var(--muted)}
.imgnote{margin:4px 0 0;color:var(--muted);font-size:12px;max-width:900px}
.imgnote code{font-size:11.5px;background:#f2f4f7;padding:0 4px;border-radius:4px;white-space:nowrap}
.score{text-align:right}.score b{display:block;font-size:28px;line-height:1;color:var(--ok-ink)}
.score span{font-size:12px;color:var(--muted)}
nav{display:flex;flex-wrap:wrap;gap:8px;margin-top:14px;align-items:center}
nav button,nav select{font:inherit;font-size:13px;border:1px solid var(--line);background:#fff;border-radius:999px;
padding:5px 12px;cursor:pointer;color:var(--ink);display:inline-flex;align-items:center;gap:6px}
nav button b{font-weight:600;color:var(--muted)}
nav button i{width:8px;height:8px;border-radius:50%;background:var(--pe)}
nav button:hover{border-color:#c3c9d3}
nav button.on{background:var(--ink);color:#fff;border-color:var(--ink)}nav button.on b{color:#d0d5dd}
nav .export{border-color:var(--ink)}nav .export:disabled{cursor:default;opacity:.5}
#q{margin-left:auto;font:inherit;padding:6px 12px;border:1px solid var(--line);border-radius:8px;min-width:220px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:18px;padding:22px 28px}
.card{background:var(--card);border-radius:12px;overflow:hidden;border:1px solid var(--line);min-width:0;
box-shadow:0 1px 2px rgba(16,24,40,.05);display:flex;flex-direction:column;border-top:3px solid var(--pe)}
.card:hover{box-shadow:0 6px 18px rgba(16,24,40,.10)}
.card.rejected{outline:2px solid var(--bad);outline-offset:-1px}
.thumbs{display:grid;gap:2px;background:var(--line);aspect-ratio:4/3}
.thumbs.n2,.thumbs.n4{grid-template-columns:1fr 1fr}.thumbs.n3{grid-template-columns:1fr 1fr 1fr}
.thumbs.n4{grid-template-rows:1fr 1fr}
.thumb{position:relative;display:block;background:#eef0f3;overflow:hidden;min-height:0}
.thumb img{width:100%;height:100%;object-fit:cover;display:block}
.thumb span{position:absolute;left:6px;bottom:6px;background:rgba(16,24,40,.62);color:#fff;font-size:11px;
padding:1px 7px;border-radius:999px;max-width:calc(100% - 12px);overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}
.thumb.broken img{visibility:hidden}.thumb.broken::after{content:"image unavailable";position:absolute;
inset:0;display:grid;place-items:center;color:var(--muted);font-size:12px}
.thumbs.none{display:grid;place-items:center;color:var(--muted);font-size:13px;
background:repeating-linear-gradient(45deg,#f6f7f9,#f6f7f9 10px,#eff1f4 10px,#eff1f4 20px)}
.body{padding:12px 14px 14px;min-width:0}
h2{margin:0 0 8px;font-size:15px;display:flex;align-items:baseline;gap:6px;white-space:nowrap;min-width:0}
.ttl{overflow:hidden;text-overflow:ellipsis;min-width:0}
.rn{color:var(--muted);font-weight:500;font-size:12px;flex:none}
.axes{font-weight:500;color:var(--muted);font-size:12px;overflow:hidden;text-overflow:ellipsis;min-width:0}
.step{display:flex;align-items:center;gap:8px;margin:4px 0;flex-wrap:wrap}
.step-id{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#475467;min-width:56px}
.badge{font-size:11.5px;font-weight:600;padding:1px 9px;border-radius:999px;background:var(--pe-bg);color:var(--pe-ink)}
.file{font-size:12px}
.vd{display:contents}
.vd button{font:inherit;font-size:12px;line-height:18px;border:1px solid var(--line);background:#fff;border-radius:6px;
width:28px;padding:0;cursor:pointer;color:#344054}
.vd .va{margin-left:auto}
.vd button:hover{border-color:#98a2b3}
.vd .va[aria-pressed=true]{background:var(--ok-bg);border-color:var(--ok);color:var(--ok-ink);font-weight:600}
.vd .vr[aria-pressed=true]{background:var(--bad-bg);border-color:var(--bad);color:var(--bad-ink);font-weight:600}
.vnote{flex:1 1 100%;min-width:0;font:inherit;font-size:12px;padding:3px 8px;border:1px solid var(--line);
border-radius:6px}
.atts{display:flex;gap:6px;overflow-x:auto;margin:2px 0 6px 64px;padding-bottom:2px}
.att{margin:0;flex:none;width:68px}.att img,.att .noimg{display:block;width:68px;height:51px;object-fit:cover;
border-radius:4px;background:#eef0f3;border:2px solid transparent}
.att.cur img{border-color:var(--ink)}.att.a-rejected img{border-color:var(--bad)}
.att.a-approved img{border-color:var(--ok)}
.att figcaption{font-size:10.5px;color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.err{margin:4px 0 6px;padding:6px 9px;border-radius:6px;background:var(--bad-bg);color:var(--bad-ink);
font-size:12.5px;overflow-wrap:break-word;display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;
overflow:hidden}
.out{margin:4px 0;font-size:12.5px;color:#344054;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.lbl{color:var(--muted)}
dl.kv{display:grid;grid-template-columns:fit-content(42%) minmax(0,1fr);gap:2px 10px;margin:10px 0 0;
padding-top:10px;border-top:1px dashed var(--line);font-size:12.5px}
dl.kv dt,dl.kv dd{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-width:0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0}
details.more{margin-top:6px;font-size:12.5px}
details.more summary{cursor:pointer;color:var(--muted);list-style-position:inside}
details.more dl.kv{border-top:0;margin-top:4px;padding-top:0}
.empty{text-align:center;color:var(--muted);padding:40px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:8px 28px 28px}
.s-completed{background:var(--ok-bg);color:var(--ok-ink)}.f-completed i{background:var(--ok)}
.s-failed{background:var(--bad-bg);color:var(--bad-ink)}.f-failed i{background:var(--bad)}
.s-timed_out{background:var(--to-bg);color:var(--to-ink)}.f-timed_out i{background:var(--to)}
.s-cancelled{background:var(--cx-bg);color:var(--cx-ink)}.f-cancelled i{background:var(--cx)}
.s-unknown{background:var(--un-bg);color:var(--un-ink)}.f-unknown i{background:var(--un)}
.s-running,.s-submitting{background:var(--run-bg);color:var(--run-ink)}
.f-running i,.f-submitting i{background:var(--run)}
.card.w-completed{border-top-color:var(--ok)}.card.w-failed{border-top-color:var(--bad)}
.card.w-timed_out{border-top-color:var(--to)}.card.w-cancelled{border-top-color:var(--cx)}
.card.w-unknown{border-top-color:var(--un)}.card.w-running,.card.w-submitting{border-top-color:var(--run)}
.card[hidden]{display:none}
@media (max-width:600px){header,main{padding-left:12px;padding-right:12px}#q{min-width:0;width:100%}}
"""

GALLERY_JS = """
(function(){
"use strict";
var pipeline=document.body.getAttribute("data-pipeline")||"",KEY="lamina-batch:verdicts:"+pipeline;
var state="all",q=document.getElementById("q"),vf=document.getElementById("vf"),
cards=document.querySelectorAll(".card"),none=document.getElementById("none"),
exp=document.getElementById("export"),boxes=document.querySelectorAll(".vd");
var store={};
try{store=JSON.parse(localStorage.getItem(KEY)||"{}")||{};}catch(e){store={};}
function save(){try{localStorage.setItem(KEY,JSON.stringify(store));}catch(e){}}
function cardOf(el){while(el&&!el.classList.contains("card"))el=el.parentNode;return el;}
function local(vd){var e=store[vd.getAttribute("data-identity")];
return e&&String(e.attempt)===vd.getAttribute("data-attempt")?e:null;}
function paint(vd){var v=vd.getAttribute("data-verdict")||"",n=vd.querySelector(".vnote");
vd.querySelector(".va").setAttribute("aria-pressed",String(v==="approved"));
vd.querySelector(".vr").setAttribute("aria-pressed",String(v==="rejected"));
vd.className="vd"+(v?" v-"+v:"");n.hidden=!v;}
function verdictsOf(card){var out=[],vs=card.querySelectorAll(".vd");
for(var i=0;i<vs.length;i++)out.push(vs[i].getAttribute("data-verdict")||"unreviewed");return out;}
function mark(card){card.classList.toggle("rejected",verdictsOf(card).indexOf("rejected")>=0);}
function decided(){var n=0;for(var i=0;i<boxes.length;i++)if(local(boxes[i]))n++;return n;}
function counter(){var n=decided();exp.disabled=n===0;exp.querySelector("b").textContent=String(n);}
function apply(){var t=q.value.trim().toLowerCase(),v=vf.value,shown=0;
for(var i=0;i<cards.length;i++){var c=cards[i];
var ok=(state==="all"||c.getAttribute("data-states").split(" ").indexOf(state)>=0)&&
(!t||c.getAttribute("data-text").indexOf(t)>=0)&&(!v||verdictsOf(c).indexOf(v)>=0);
c.hidden=!ok;if(ok)shown++;}
none.hidden=shown>0||cards.length===0;}
function decide(vd,verdict){var id=vd.getAttribute("data-identity"),note=vd.querySelector(".vnote");
if((vd.getAttribute("data-verdict")||"")===verdict&&local(vd)){
delete store[id];vd.setAttribute("data-verdict",vd.getAttribute("data-orig-verdict")||"");
note.value=vd.getAttribute("data-orig-note")||"";}
else{var rk=vd.getAttribute("data-row-key");
store[id]={identity:id,attempt:parseInt(vd.getAttribute("data-attempt"),10),verdict:verdict,
note:note.value.trim()||null,at:new Date().toISOString(),step:vd.getAttribute("data-step"),
row_number:parseInt(vd.getAttribute("data-row-number"),10),row_key:rk===""?null:rk};
vd.setAttribute("data-verdict",verdict);}
save();paint(vd);mark(cardOf(vd));counter();apply();}
for(var i=0;i<boxes.length;i++){(function(vd){var e=local(vd);
if(e){vd.setAttribute("data-verdict",e.verdict);vd.querySelector(".vnote").value=e.note||"";}
paint(vd);
vd.querySelector(".va").addEventListener("click",function(){decide(vd,"approved");});
vd.querySelector(".vr").addEventListener("click",function(){decide(vd,"rejected");});
vd.querySelector(".vnote").addEventListener("input",function(){var e=local(vd);
if(e){e.note=this.value.trim()||null;save();}});})(boxes[i]);}
for(var j=0;j<cards.length;j++)mark(cards[j]);
counter();
exp.addEventListener("click",function(){var out=[];
for(var i=0;i<boxes.length;i++){var e=local(boxes[i]);if(e)out.push(e);}
var doc={pipeline:pipeline,exported_at:new Date().toISOString(),verdicts:out};
var blob=new Blob([JSON.stringify(doc,null,2)+"\\n"],{type:"application/json"});
var a=document.createElement("a");a.href=URL.createObjectURL(blob);a.download="verdicts.json";
document.body.appendChild(a);a.click();
setTimeout(function(){URL.revokeObjectURL(a.href);a.remove();},1000);});
document.querySelectorAll("nav button[data-filter]").forEach(function(b){b.addEventListener("click",function(){
document.querySelectorAll("nav button[data-filter]").forEach(function(x){x.classList.remove("on");});
b.classList.add("on");state=b.getAttribute("data-filter");apply();
if(history.replaceState)history.replaceState(null,"",state==="all"?location.pathname:"#"+state);});});
q.addEventListener("input",apply);vf.addEventListener("change",apply);
var pre=document.querySelector('nav button[data-filter="'+location.hash.slice(1).replace(/[^a-z_]/g,"")+'"]');
if(pre)pre.click();
})();
"""
