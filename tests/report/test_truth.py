"""Issue 16: what `status`, `plan` and `report` say about the same real
environments agrees -- with each other, with `du` run by hand, and with
the wall time of `up` -- and the HTML report looks the same for every
strategy in a real browser."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import hybridiso, status_json, write_manifest
from tests.support.gitrepo import git, make_repo, many_files_repo


def du(*paths: Path) -> list[int]:
    """``du -s -B1`` over ``paths`` at once: each inode counted once, for the
    first path it is met under (so a path after the store gets only what
    the store does not hold)."""
    out = subprocess.run(["du", "-s", "-B1", "--", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()]


def repo_with_history(root: Path) -> Path:
    """300 files and three commits of incompressible content: a pack of
    several MiB, which a local clone hard-links and a worktree does not have."""
    repo = make_repo(root, {f"src/m{i // 30}/f{i}.txt": "start\n" for i in range(300)})
    for n in range(3):
        for i in range(300):
            (repo / f"src/m{i // 30}/f{i}.txt").write_text(os.urandom(4096).hex())
        git(repo, "commit", "-q", "-a", "-m", f"round {n}")
    git(repo, "gc", "-q")
    return repo


def test_status_report_and_du_agree_on_the_same_environments(tmp_path: Path) -> None:
    repo = repo_with_history(tmp_path / "proj")
    write_manifest(repo, "agents:\n  - {name: w1}\n  - {name: w2}\n  - {name: c1, isolation: clone}\n")
    hybridiso(repo, "up")
    ws = tmp_path / "proj.agents"
    envs = {n: ws / n for n in ("w1", "w2", "c1")}
    status = status_json(repo)
    report = {e["agent"]: e for e in json.loads(hybridiso(repo, "report", "--format", "json").stdout)["envs"]}
    again = status_json(repo)
    # one count, so status and report say the very same bytes
    for name in envs:
        assert status[name]["disk_bytes"] == report[name]["disk_unique_bytes"] == again[name]["disk_bytes"], name
        assert status[name]["disk_shared_bytes"] == report[name]["disk_shared_bytes"], name
    # ... and du by hand agrees: the state dir is hybridiso's, not the store
    store = repo / ".git"
    state_dir = store / "hybridiso"
    for name in ("w1", "w2"):
        (alone,) = du(envs[name])
        assert status[name]["disk_bytes"] == alone and status[name]["disk_shared_bytes"] == 0, (name, alone)
    store_and_clone = du(store, envs["c1"])
    (clone_alone,) = du(envs["c1"])
    (state_bytes,) = du(state_dir)
    unique, shared = status["c1"]["disk_bytes"], status["c1"]["disk_shared_bytes"]
    assert unique == store_and_clone[1], (unique, store_and_clone)  # what du finds in it beyond the store
    assert unique + shared == clone_alone
    pack = next((envs["c1"] / ".git" / "objects" / "pack").glob("*.pack"))
    assert pack.stat().st_nlink > 1 and shared >= pack.stat().st_blocks * 512  # hard-linked: shared
    assert shared > 4 * unique // 10  # the pack is several MiB: status used to add it to the clone's DISK
    report_all = json.loads(hybridiso(repo, "report", "--format", "json").stdout)
    assert report_all["repository"]["object_store_bytes"] == store_and_clone[0] - state_bytes
    # the table shows the same figures, with SHARED where it matters
    table = hybridiso(repo, "status")
    header, *rows = [line.split() for line in table.stdout.splitlines() if line and not line.startswith("-")]
    assert "SHARED" in header
    c1 = next(r for r in rows if r[0] == "c1")
    human = {n: f"{status[n]['disk_bytes'] / (1 << 20):.1f}" for n in envs}
    assert c1[-2] == "-"  # LAND: never a candidate
    assert c1[-6] == human["c1"] and c1[-4] == f"{shared / (1 << 20):.1f}", c1
    print(
        "c1: status/report unique", unique, "shared", shared, "| du after the store", store_and_clone[1], "du alone", clone_alone,
        "| w1: status", status["w1"]["disk_bytes"], "du", du(envs["w1"])[0],
    )


def _plan(repo: Path) -> dict[str, dict[str, Any]]:
    return {a["agent"]: a for a in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}


def _timings(repo: Path) -> dict[str, dict[str, float]]:
    return {n: r["timings"] for n, r in json.loads((repo / ".git" / "hybridiso" / "state.json").read_text())["agents"].items()}


def _up_timed(repo: Path, *agents: str) -> float:
    t = time.perf_counter()
    hybridiso(repo, "up", *agents)
    return time.perf_counter() - t


def test_plan_projects_what_up_then_measures(tmp_path: Path) -> None:
    """The demo's shape (2,000 small files): plan projected 90.8 KiB and
    0.1 s where up took 8.0 MiB and 1.6 s (issue 16)."""
    repo = many_files_repo(tmp_path / "demo", 2000)
    write_manifest(repo, "agents:\n  - {name: w1}\n  - {name: c1, isolation: clone}\n  - {name: w2}\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    before = _plan(repo)
    text = hybridiso(repo, "plan")
    assert "startup unknown until measured" in text.stderr and "~ = estimated" in text.stderr
    for name in before:
        assert before[name]["projected_disk_measured"] is False and before[name]["projected_startup_seconds"] is None
    wall = {"w1": _up_timed(repo, "w1")}
    # startup: a worktree's now as up timed it (no ~); a clone's from the
    # seconds per file up took here (~)
    middle = _plan(repo)
    assert middle["w2"]["projected_startup_measured"] is True
    assert middle["w2"]["projected_startup_seconds"] == pytest.approx(_timings(repo)["w1"]["total"], abs=0.01)
    assert middle["c1"]["projected_startup_measured"] is False and middle["c1"]["projected_startup_seconds"] is not None
    wall["c1"] = _up_timed(repo, "c1")
    wall["w2"] = _up_timed(repo, "w2")
    ws = tmp_path / "demo.agents"
    real = {"w1": du(ws / "w1")[0], "w2": du(ws / "w2")[0], "c1": du(repo / ".git", ws / "c1")[1]}  # a clone's own: after the store
    for name, size in real.items():
        projected = before[name]["projected_disk_bytes"]
        assert abs(projected - size) <= size * 0.03, (name, projected, size)
    assert real["w1"] > 7 << 20  # 2,000 files of a few bytes each take 4 KiB blocks: about 8 MiB
    timings = _timings(repo)
    for name in ("c1", "w2"):
        got, projected = timings[name]["total"], middle[name]["projected_startup_seconds"]
        assert got <= wall[name]  # up's own clock never runs ahead of the one taken by hand
        # one shared 2-core machine: within a factor of 3 either way
        assert projected / 3 <= got <= projected * 3, (name, projected, got)
    print("projected disk", {n: before[n]["projected_disk_bytes"] for n in real}, "du", real)
    print(
        "projected startup", {n: middle[n]["projected_startup_seconds"] for n in ("c1", "w2")},
        "up timed", {n: timings[n]["total"] for n in timings}, "wall (with python start)", {n: round(v, 2) for n, v in wall.items()},
    )


# what the browser is asked about each report: every bar with the label
# drawn beside it, and every table cell with where its text sits
_LOOK = """(() => {
  const bars = [...document.querySelectorAll('svg')].map(svg => [...svg.querySelectorAll('rect')].map(rect => {
    const label = rect.previousElementSibling.textContent.trim();
    const b = rect.getBoundingClientRect();
    return {label, x: b.left + b.width / 2 + window.scrollX, y: b.top + b.height / 2 + window.scrollY, top: b.top};
  }));
  const tables = [...document.querySelectorAll('table')].map(table => [...table.rows].map(row => [...row.cells].map(cell => {
    const range = document.createRange();
    range.selectNodeContents(cell);
    const text = range.getBoundingClientRect(), box = cell.getBoundingClientRect(), style = getComputedStyle(cell);
    return {text: cell.textContent.trim(), left: text.left - box.left - parseFloat(style.paddingLeft),
            right: box.right - parseFloat(style.paddingRight) - text.right, lines: Math.round(text.height / parseFloat(style.lineHeight))};
  })));
  return {bars, tables};
})()"""


def _look(binary: str, html: Path, shot: Path) -> dict[str, Any]:
    """Open ``html`` in headless Chromium: what it drew (geometry from the
    DOM), and the colour of the pixels at the middle of every bar."""
    from tests.support.browser import Page, pixel, png_pixels

    with Page(binary, html.as_uri()) as page:
        seen: dict[str, Any] = page.evaluate(_LOOK)
        page.screenshot(shot)  # the whole page, for a person to look at
        for chart in seen["bars"]:
            for bar in chart:
                clip = {"x": bar["x"] - 1, "y": bar["y"] - 1, "width": 2, "height": 2, "scale": 1}
                data = page.call("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})["data"]
                one = shot.with_suffix(".bar.png")
                import base64

                one.write_bytes(base64.b64decode(data))
                bar["pixel"] = pixel(png_pixels(one)[2], 0, 0)
    return seen


def test_html_reports_look_the_same_for_every_strategy_in_a_browser(tmp_path: Path) -> None:
    from hybridiso.report.format import STRATEGY_COLOURS
    from tests.support.browser import find_chromium

    chromium = find_chromium()  # skipped with the reason outside CI, a failure in CI
    repo = make_repo(tmp_path / "proj", {f"f{i}.txt": f"{i}\n" * (i + 1) for i in range(40)})
    # names that sort the other way round from the strategies' order
    write_manifest(repo, "agents:\n  - {name: a-clone, isolation: clone}\n  - {name: b-work}\n")
    hybridiso(repo, "up")
    live, compare = tmp_path / "live.html", tmp_path / "compare.html"
    hybridiso(repo, "report", "--format", "html", "-o", str(live))
    # asked for in the other order: the report keeps its own
    hybridiso(repo, "report", "--compare", "1", "--strategies", "clone,worktree", "--format", "html", "-o", str(compare))
    seen = {name: _look(chromium, path, tmp_path / f"{name}.png") for name, path in (("live", live), ("compare", compare))}
    print("screenshots:", tmp_path / "live.png", tmp_path / "compare.png")
    assert len(seen["live"]["bars"]) == 2 and len(seen["compare"]["bars"]) == 3  # live reports have no fetch chart
    for name, look in seen.items():
        for chart in look["bars"]:
            # one order everywhere: worktree above clone, in every chart
            assert [b["label"] for b in chart] == ["worktree", "clone"], (name, chart)
            assert chart[0]["top"] < chart[1]["top"]
            # one colour per strategy, as the browser painted it
            for bar in chart:
                assert bar["pixel"] == STRATEGY_COLOURS[bar["label"]], (name, bar)
        summary = look["tables"][0]
        assert [row[0]["text"] for row in summary[1:]] == ["worktree", "clone"], name
        # words start at the left edge of their column, figures end at the right edge of theirs
        for table in look["tables"]:
            header = [c["text"] for c in table[0]]
            text_columns = {i for i, h in enumerate(header) if h in ("STRATEGY", "AGENT")}
            for row in table:
                for i, cell in enumerate(row):
                    if i in text_columns:
                        assert abs(cell["left"]) <= 1, (name, header[i], cell)
                    elif cell["text"] not in ("", "-"):
                        assert abs(cell["right"]) <= 1, (name, header[i], cell)
                    assert cell["lines"] == 1, (name, header[i], cell)  # "164.0 KiB" never wraps
    per_env = seen["live"]["tables"][1]
    assert [row[1]["text"] for row in per_env[1:]] == ["worktree", "clone"]  # grouped in the same order
    # a clone alone is still the clone's colour (colours went by position)
    hybridiso(repo, "down", "b-work")
    alone = tmp_path / "alone.html"
    hybridiso(repo, "report", "--format", "html", "-o", str(alone))
    bars = _look(chromium, alone, tmp_path / "alone.png")["bars"]
    assert [[(b["label"], b["pixel"]) for b in chart] for chart in bars] == [[("clone", STRATEGY_COLOURS["clone"])]] * 2
