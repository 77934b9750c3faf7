"""`resbench dashboard` on a results folder of one's own, outside any checkout; its one-line
errors, before asv runs, when it lacks what asv publish needs or is given hostile input; and the
site served on loopback unless --host opens it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

import resbench.dashboard as dashboard
import resbench.history as history
from resbench.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
ASV_RESULTS = ROOT / "results" / "asv"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def own_results(tmp_path, monkeypatch):
    if not (ASV_RESULTS / "benchmarks.json").is_file():
        pytest.skip("no committed asv history")
    shutil.copytree(ASV_RESULTS, tmp_path / "mine" / "asv")
    monkeypatch.chdir(tmp_path)  # no asv.conf.json here or above
    return tmp_path / "mine" / "asv"


def test_publishes_a_results_folder_outside_the_checkout(own_results, capsys):
    assert main(["dashboard", "--results", str(own_results), "--no-serve"]) == 0
    index = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert index == own_results.parent / "asv-html" / "index.html" and index.is_file()
    graphs = list((index.parent / "graphs").rglob("bench_speed.SpeedVsPreNorm.track_train_ratio.json"))
    assert graphs, "no graph of the train ratio"


def test_without_a_checkout_it_says_what_it_needs(own_results, monkeypatch, capsys):
    monkeypatch.setattr(history, "checkout_root", lambda: None)
    assert main(["dashboard", "--no-serve"]) == 2
    assert "--results DIR" in one_line_error(capsys)
    assert main(["dashboard", "--results", str(own_results), "--no-serve"]) == 2
    assert "--repo PATH" in one_line_error(capsys)


def test_bad_folders_are_one_line_errors(own_results, tmp_path, capsys):
    assert main(["dashboard", "--results", str(tmp_path), "--no-serve"]) == 2
    assert "no benchmarks.json" in one_line_error(capsys)
    assert main(["dashboard", "--results", str(own_results), "--repo", str(tmp_path), "--no-serve"]) == 2
    assert "not a git repository" in one_line_error(capsys)
    assert not (own_results.parent / "asv-html").exists()  # nothing half-written


# -- hostile input: refused in one line before asv runs; the site served on loopback ---------------

@pytest.fixture
def asv_calls(monkeypatch):
    """asv replaced by a stand-in publish that writes a one-page site: what was asked of it."""
    calls = []

    def fake_asv(conf, *args):
        calls.append(args)
        html = Path(json.loads(conf.read_text())["html_dir"])
        html.mkdir(parents=True, exist_ok=True)
        (html / "asv.js").write_text("")
        (html / "index.html").write_text("<title>resbench history</title>")
        return 0

    monkeypatch.setattr(history, "_asv", fake_asv)
    return calls


def _refusals(own_results: Path, tmp: Path) -> dict:
    (tmp / "a-file").write_text("")
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("mine")
    (tmp / "garbage.json").write_text("{not json")
    (tmp / "list.json").write_text("[1, 2]")
    res = ["--results", str(own_results), "--no-serve"]
    return {
        "html under a file": (res + ["--html", str(tmp / "a-file" / "site")], "cannot be created"),
        "html holding the results": (res + ["--html", str(own_results.parent)], "holds the results folder"),
        "html a folder of other files": (res + ["--html", str(tmp / "notes")], "not an asv site"),
        "port -1": (res + ["--port=-1"], "--port"),
        "port 99999": (res + ["--port", "99999"], "--port"),
        "port 0": (res + ["--port", "0"], "--port"),
        "garbage config": (["--config", str(tmp / "garbage.json"), "--no-serve"], "garbage.json"),
        "list config": (["--config", str(tmp / "list.json"), "--no-serve"], "list.json"),
    }


REFUSALS = ["html under a file", "html holding the results", "html a folder of other files", "port -1",
            "port 99999", "port 0", "garbage config", "list config"]


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_input_is_refused_before_asv_runs(own_results, tmp_path, asv_calls, capsys, case):
    argv, says = _refusals(own_results, tmp_path)[case]
    assert main(["dashboard", *argv]) == 2
    assert says in one_line_error(capsys)
    assert asv_calls == []  # asv publish deletes the html folder first: it must not have run
    assert (tmp_path / "notes" / "todo.txt").is_file() and not (own_results.parent / "asv-html").exists()


@pytest.mark.parametrize("text", ["garbage", "[1, 2]", '{"version": 2, "bench": 5}'])
def test_a_malformed_benchmarks_json_is_refused_before_asv_runs(own_results, asv_calls, capsys, text):
    (own_results / "benchmarks.json").write_text(text)
    assert main(["dashboard", "--results", str(own_results), "--no-serve"]) == 2
    assert str(own_results / "benchmarks.json") in one_line_error(capsys)
    assert asv_calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_html_folder_is_refused(own_results, tmp_path, asv_calls, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["dashboard", "--results", str(own_results), "--html", str(locked / "site"), "--no-serve"]) == 2
    finally:
        locked.chmod(0o700)
    assert "cannot be written" in one_line_error(capsys) and asv_calls == []


def test_a_port_in_use_is_refused_before_asv_runs(own_results, asv_calls, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["dashboard", "--results", str(own_results), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot serve on" in one_line_error(capsys) and asv_calls == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch_once(server, seen: dict) -> None:
    """Serve in a thread, fetch the index once, stop: what `resbench dashboard` serves, for real."""
    seen["bound"] = server.socket.getsockname()[:2]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = seen["bound"]
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as reply:
            seen["index"] = reply.read().decode()
    finally:
        server.shutdown()
        thread.join(10)


def test_serves_on_loopback_by_default_and_says_where(own_results, asv_calls, monkeypatch, capsys):
    seen: dict = {}
    monkeypatch.setattr(history, "_serve", lambda server: _fetch_once(server, seen))
    port = _free_port()
    assert main(["dashboard", "--results", str(own_results), "--port", str(port)]) == 0
    assert asv_calls == [("publish",)]
    assert seen["bound"] == ("127.0.0.1", port)  # not every interface, as `asv preview` binds
    assert "resbench history" in seen["index"]
    assert f"on http://127.0.0.1:{port}/ (Ctrl-C stops)" in capsys.readouterr().err
    # the site it published is one asv may replace: publishing again is not refused
    assert main(["dashboard", "--results", str(own_results), "--no-serve"]) == 0


def test_the_server_binds_the_host_it_is_given(tmp_path):
    (tmp_path / "index.html").write_text("<title>resbench history</title>")
    server = history.make_server(tmp_path, "127.0.0.1", 0)
    seen: dict = {}
    with server:
        _fetch_once(server, seen)
        assert history.url(server) == f"http://127.0.0.1:{seen['bound'][1]}/"
    assert seen["bound"][0] == "127.0.0.1" and "resbench history" in seen["index"]


def test_host_flag_defaults_to_loopback(capsys):
    assert build_parser().parse_args(["dashboard"]).host == "127.0.0.1"
    with pytest.raises(SystemExit):
        main(["dashboard", "--help"])
    assert "default 127.0.0.1" in " ".join(capsys.readouterr().out.split())


# -- the page a person sees: offline, every variant drawn, in the palette's colours -----------------

CHROMIUM = shutil.which("chromium")


def render_dom(site: Path, fragment: str, tmp: Path) -> str:
    """The page's DOM after its JavaScript ran, in headless Chromium, served on loopback with no
    other network (the flags keep Chromium from reaching out; a CDN would simply fail)."""
    import subprocess

    server = history.make_server(site, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.socket.getsockname()[1]
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=20000",
             "--dump-dom", f"http://127.0.0.1:{port}/#{fragment}"],
            capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
@pytest.mark.skipif(dashboard.js_folder(None) is None,
                    reason=f"needs the page's JavaScript from Debian: apt-get install {dashboard.PACKAGES}")
def test_the_published_dashboard_draws_every_variant_offline(own_results, tmp_path, capsys):
    """The committed history, published and opened in a real browser with no internet: the page's
    scripts load from local copies, and every registered variant has a series with points, in
    its palette colour, with the legend in its own column."""
    import html as htmlmod
    import re

    from resbench import variants
    from resbench.palette import colour

    assert main(["dashboard", "--results", str(own_results), "--no-serve"]) == 0
    site = Path(capsys.readouterr().out.strip().splitlines()[-1]).parent
    for page in site.glob("*.html"):
        assert not dashboard.CDN_TAG.search(page.read_text()), f"{page.name}: a script or style from a CDN is left"
    assert f'"full-attnres": "{colour("full-attnres")}"' in (site / "resbench.js").read_text()
    drawn: dict[str, int] = {}
    for bench in ("bench_speed.SpeedVsPreNorm.track_train_ratio", "bench_speed.CpuTime.track_train_ms"):
        dom = render_dom(site, bench, tmp_path)
        found = re.search(r'id="main-graph"[^>]*data-series="([^"]*)"', dom) or \
            re.search(r'data-series="([^"]*)"[^>]*id="main-graph"', dom)
        assert found, f"{bench}: no graph drawn (did the page's scripts load?)"
        assert 'id="resbench-legend"' in dom
        for label, points in json.loads(htmlmod.unescape(found.group(1))).items():
            name = re.search(r"(?:^|; )variant-([^;]+)", label).group(1)
            drawn[name] = max(drawn.get(name, 0), points)
    missing = sorted(v for v in variants.names() if drawn.get(v, 0) == 0)
    assert not missing, f"variants without a point in the history: {missing}"
