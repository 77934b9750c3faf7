"""What `resbench dashboard` adds to asv's published site: the page's JavaScript from local
files (asv's page loads jQuery, flot, bootstrap, stupidtable and md5 from CDNs, so offline it
shows nothing), each variant's colour from the palette every resbench plot uses, the legend in a
column of its own beside the graph instead of over the data, and every variant drawn at first
(asv's default is 8 curves).

Local copies come from a folder laid out as Debian's /usr/share/javascript (packages
libjs-jquery, libjs-jquery-flot, libjs-bootstrap, libjs-jquery-stupidtable, node-blueimp-md5).
Debian's flot is 4.x, which draws axis labels itself and styles its legend in SVG; asv's page
was written for 0.8, hence the two small fixes below.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .errors import UserError
from .palette import colour

DEBIAN_JS = Path("/usr/share/javascript")
PACKAGES = "libjs-jquery libjs-jquery-flot libjs-bootstrap libjs-jquery-stupidtable node-blueimp-md5"
# CDN file name -> file under the JS folder (None: flot 4's bundle already holds that plugin)
LOCAL = {
    "jquery-3.3.1.min.js": "jquery/jquery.min.js",
    "jquery.flot.min.js": "jquery-flot/jquery.flot.js",
    "jquery.flot.time.min.js": None,
    "jquery.flot.selection.min.js": None,
    "jquery.flot.categories.min.js": None,
    "jquery.flot.orderBars.js": None,  # bar ordering only; the history graphs are lines
    "stupidtable.min.js": "jquery-stupidtable/stupidtable.min.js",
    "md5.min.js": "blueimp-md5/md5.min.js",
    "bootstrap.min.js": "bootstrap/js/bootstrap.min.js",
    "bootstrap.min.css": "bootstrap/css/bootstrap.min.css",
}
CDN_TAG = re.compile(r'<(script|link)\b[^>]*?(?:src|href)="(https?://[^"]+)"[^>]*>(?:</script>)?')
AXISLABELS = re.compile(r'<script[^>]*src="jquery\.flot\.axislabels\.js"[^>]*>\s*</script>')
MAX_CURVES = re.compile(r"var max_curves = \d+;")
OWN = '<link rel="stylesheet" href="resbench.css">\n<script src="resbench.js"></script>\n'

# The palette's colours by variant, and the legend moved to its own column. $.plot is wrapped,
# not asv's code edited: every graph asv draws passes through it. Each drawn graph also leaves
# its series (label -> points with a value) on the graph element, for people and tests alike.
SCRIPT = """// resbench: palette colours per variant, the legend beside the graph
(function () {
  var COLOURS = %s;
  var draw = $.plot;
  function variant(label) {
    var m = /(?:^|; )variant-([^;]+)/.exec(label || "");
    return m ? m[1] : null;
  }
  function short(label) {  // "blocks-2; machine-m; variant-v" -> "v · m · blocks 2"
    var v = variant(label), rest = [];
    $.each((label || "").split("; "), function (i, part) {
      var kv = /^([^-]+)-(.*)$/.exec(part);
      if (!kv || kv[1] === "variant") { return; }
      rest.push(kv[1] === "machine" ? kv[2] : kv[1] + " " + kv[2]);
    });
    return $("<span>").text([v || label].concat(rest).join(" · ")).html();
  }
  $.plot = function (el, series, options) {
    var seen = {}, counts = {};
    $.each(series, function (i, s) {
      var v = variant(s.label);
      if (v && COLOURS[v]) {
        s.color = COLOURS[v];
        // a variant's first series filled points, its others hollow: one colour per variant
        s.points = $.extend({}, s.points, {fillColor: seen[v] ? "#ffffff" : COLOURS[v]});
        seen[v] = true;
      }
      if (s.label) {
        counts[s.label] = $.grep(s.data || [], function (p) { return p && p[1] !== null; }).length;
        if (!counts[s.label]) { s.label = null; }  // nothing measured: no legend entry
      }
    });
    var graph = $(el);
    if (graph.attr("id") === "main-graph") {
      graph.attr("data-series", JSON.stringify(counts));
      var legend = $("#resbench-legend");
      if (!legend.length) {
        legend = $('<div id="resbench-legend"></div>').appendTo("#graph");
      }
      if (options && options.legend && options.legend.show) {
        options.legend.container = legend[0];  // flot 4 sets its size through .style
        options.legend.labelFormatter = short;
        $("#graph").addClass("resbench-with-legend");
      } else {
        legend.empty();
        $("#graph").removeClass("resbench-with-legend");
      }
    }
    return draw.apply(this, arguments);
  };
  $.extend($.plot, draw);  // keep $.plot.plugins and the rest
})();
"""
STYLE = """/* resbench: the legend in a column right of the graph, never over the data */
#graph.resbench-with-legend > div:first-child { right: 290px !important; }
#resbench-legend { position: absolute; top: 48px; left: calc(100% - 280px); min-width: 270px; bottom: 100px; overflow: auto; }
#resbench-legend svg { overflow: visible; }
.legendLayer .background { fill: #fff !important; stroke: #ccc; }
"""


def variants_of(site: Path) -> list[str]:
    """Every value of a `variant` parameter in the published benchmarks (index.json)."""
    if not (site / "index.json").is_file():
        return []
    index = json.loads((site / "index.json").read_text())
    names: set[str] = set()
    for bench in index.get("benchmarks", {}).values():
        for pname, values in zip(bench.get("param_names", []), bench.get("params", [])):
            if pname == "variant":
                names.update(str(v).strip("'\"") for v in values)
    return sorted(names)


def js_folder(given: str | None) -> Path | None:
    """--js-dir, else Debian's folder when it holds every file the page needs; None: no local copies."""
    folder = Path(given) if given else DEBIAN_JS
    missing = [f for f in LOCAL.values() if f and not (folder / f).is_file()]
    if not missing:
        return folder
    if given:
        raise UserError(f"--js-dir {given}: lacks {missing[0]} (laid out as Debian's /usr/share/javascript: "
                        f"apt-get install {PACKAGES})")
    return None


def localize(site: Path, folder: Path) -> None:
    """Point every CDN tag of the site's pages at a copy under site/vendor."""
    vendor = site / "vendor"
    vendor.mkdir(exist_ok=True)

    def swap(m: re.Match) -> str:
        tag, url = m.group(1), m.group(2)
        name = url.rsplit("/", 1)[-1]
        if name not in LOCAL:
            raise UserError(f"asv's page loads {url}, which resbench has no local copy for; "
                            "pass --online to keep the CDN tags")
        if LOCAL[name] is None:
            return ""
        shutil.copy((folder / LOCAL[name]).resolve(), vendor / name)
        if tag == "link":
            return f'<link rel="stylesheet" href="vendor/{name}">'
        return f'<script src="vendor/{name}"></script>'

    for page in site.glob("*.html"):
        page.write_text(AXISLABELS.sub("", CDN_TAG.sub(swap, page.read_text())))


def finish(site: Path, js_dir: str | None, online: bool) -> str | None:
    """Localize (unless `online`) and restyle the published site in place. Returns a one-line
    note when the page still needs the network, else None."""
    note = None
    if not online:
        folder = js_folder(js_dir)
        if folder is None:
            note = (f"the page loads jQuery, flot and bootstrap from CDNs (no local copies in {DEBIAN_JS}: "
                    f"apt-get install {PACKAGES}, or --js-dir DIR): offline it shows nothing")
        else:
            localize(site, folder)
    colours = {v: colour(v) for v in variants_of(site)}
    # asv draws the first 8 values of a graph's first parameter by default (the variants): make
    # that every variant, at the first depth
    graphs = site / "graphdisplay.js"
    text = graphs.read_text() if graphs.is_file() else ""
    if MAX_CURVES.search(text):
        graphs.write_text(MAX_CURVES.sub(f"var max_curves = {max(8, len(colours))};", text, count=1))
    elif graphs.is_file():
        note = (note + "; " if note else "") + "asv's graph page changed: it may show only 8 variants at first"
    (site / "resbench.js").write_text(SCRIPT % json.dumps(colours, sort_keys=True))
    (site / "resbench.css").write_text(STYLE)
    for page in site.glob("*.html"):
        text = page.read_text()
        if 'src="resbench.js"' not in text:
            # after asv's own scripts: the wrapper must see $.plot defined
            page.write_text(text.replace("</head>", OWN + "</head>", 1))
    return note
