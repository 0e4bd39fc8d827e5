"""The report page's style sheet and script (:mod:`tguide.select.report_html` inlines both, so the
page needs no network): the layout at 1280 px, the heat-map and chart classes, table sorting and
candidate highlighting."""

__all__ = ["CSS", "JS"]

CSS = """*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1240px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:0 0 10px}
.sub{color:#57606a;margin:0 0 12px}
section,.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 18px;margin:0 0 14px}
.card{border-left:6px solid #1a7f37}.card.unsure{border-left-color:#bf8700}.card.none{border-left-color:#cf222e}
.pick{font-size:20px;margin:0 0 4px}.pick code{font-size:15px}
.conf{font-size:16px;margin:4px 0 10px}.grid2{display:grid;grid-template-columns:1fr 1fr;gap:8px 28px}
.card h3{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;margin:6px 0 4px}
.card ul{margin:0;padding-left:18px}.agree{color:#1a7f37}.differ{color:#9a6700}
.flagl li{color:#9a6700}
table{border-collapse:collapse;width:100%;table-layout:fixed}
td,th{border-bottom:1px solid #e1e4e8;padding:5px 6px;text-align:right;overflow-wrap:anywhere;vertical-align:top}
th{font-size:12px;color:#424a53;background:#f6f8fa;vertical-align:bottom}
.l{text-align:left}
table.heat td{text-align:center;font-weight:600;border:2px solid #fff;padding:6px 2px}
table.heat th{text-align:center;font-weight:600;line-height:1.2;font-size:10.5px;padding:4px 1px}
table.heat th.l{text-align:left;padding-left:6px}table.heat th.first{color:#0550ae}
table.heat td.l{text-align:left;font-weight:400}
table.heat th,td.flagged{overflow-wrap:normal}
td.flagged{font-weight:400;
background:repeating-linear-gradient(45deg,#eee,#eee 4px,#fff 4px,#fff 8px);color:#9a6700;font-size:11px}
tr.pickrow td:first-child{font-weight:700}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#eaeef2}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.warn{font-size:12px;color:#6e4d00;text-align:left}
.badge{display:inline-block;background:#fff8c5;border:1px solid #d4a72c;border-radius:10px;padding:0 6px;
margin:0 3px 2px 0;font-size:11px;color:#6e4d00}
.charts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:10px}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid #e1e4e8;border-radius:6px}
svg .grid{stroke:#e1e4e8}svg .tick{font-size:12px;fill:#57606a}svg .ct{font-size:15px;font-weight:600;fill:#1f2328}
svg .line{fill:none;stroke-width:2}svg .line.em{stroke-width:3.5}svg .band{opacity:.15;stroke:none}
svg.hbar{width:100%;height:16px}svg .track{stroke:#d0d7de;stroke-width:1}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:0 0 8px;padding:0;list-style:none;font-size:13px}
.legend li{cursor:default}.sw{display:inline-block;width:18px;height:4px;margin:0 5px 3px 0;vertical-align:middle}
.dim g.cand{opacity:.12}.dim g.cand.hi{opacity:1}
.note{font-size:12px;color:#57606a;margin:6px 0 0}code{font-size:12px}
"""

JS = """(function(){
function key(td,num){var v=td.getAttribute('data-v');if(v===null)v=td.textContent.trim();
 if(num){var x=parseFloat(v);return isNaN(x)?null:x;}return v.toLowerCase();}
document.querySelectorAll('table.sortable').forEach(function(t){
 var ths=t.tHead.rows[0].cells;
 Array.prototype.forEach.call(ths,function(th,i){th.addEventListener('click',function(){
  var asc=th.getAttribute('aria-sort')!=='ascending',num=th.getAttribute('data-type')==='num';
  Array.prototype.forEach.call(ths,function(h){h.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',asc?'ascending':'descending');
  var tb=t.tBodies[0],rows=Array.prototype.slice.call(tb.rows);
  rows.sort(function(a,b){var x=key(a.cells[i],num),y=key(b.cells[i],num);
   if(x===null||y===null)return (x===null)-(y===null);
   return (x<y?-1:x>y?1:0)*(asc?1:-1);});
  rows.forEach(function(r){tb.appendChild(r);});});});});
document.querySelectorAll('.legend li').forEach(function(li){
 var c=li.getAttribute('data-cand'),box=document.getElementById('charts');
 li.addEventListener('mouseenter',function(){box.classList.add('dim');
  box.querySelectorAll('g.cand').forEach(function(g){g.classList.toggle('hi',g.getAttribute('data-cand')===c);});});
 li.addEventListener('mouseleave',function(){box.classList.remove('dim');});});
})();"""
