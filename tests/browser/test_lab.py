"""A live JupyterLab session: run a chapter notebook top to bottom, then drive its widget.

JupyterLab is started on 127.0.0.1 with a token and ``--expose-app-in-browser`` (so the
test can read the notebook model instead of scraping a virtualised DOM), on a copy of the
notebook in a temporary folder (Lab autosaves; the committed notebook must stay clean).
This run is the notebook's second execution in CI; ``make determinism`` skips it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NOTEBOOK = os.environ.get("LAB_NOTEBOOK", "03_sparse_attention.ipynb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    shutil.copy2(ROOT / "notebooks" / NOTEBOOK, work / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / ".jupyter"), "PYTHONUNBUFFERED": "1"}
    env.pop("COURSE_BOOK_BUILD", None)  # live mode: figures render natively in Lab
    cmd = [
        str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--allow-root", "--expose-app-in-browser",
        "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("JupyterLab did not start:\n" + (work / "lab.log").read_text()[-3000:])
    yield {"url": url, "token": token, "dir": work}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


STATE_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  if (!w || !w.content || !w.content.model) return null;
  const cells = [...w.content.model.cells];
  const code = cells.filter(c => c.type === 'code');
  const errors = code.flatMap(c => { const o = c.outputs; const out = [];
      for (let i = 0; i < o.length; i++) { const j = o.get(i).toJSON();
        if (j.output_type === 'error') out.push(j.ename + ': ' + j.evalue); } return out; });
  return {status: w.sessionContext.session && w.sessionContext.session.kernel ? w.sessionContext.session.kernel.status : 'none',
          done: code.filter(c => c.executionCount !== null).length, total: code.length, errors};
}"""


def test_run_all_then_move_a_slider(lab, browser, screenshots):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.sessionContext",
        timeout=120000,
    )
    page.wait_for_function(
        "() => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session; return k && k.kernel && k.kernel.status === 'idle'; }",
        timeout=120000,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.time() + 600
    state = None
    while time.time() < deadline:
        state = page.evaluate(STATE_JS)
        if state["errors"] or (state["done"] == state["total"] and state["status"] == "idle"):
            break
        time.sleep(2)
    assert state is not None and not state["errors"], f"error output: {state['errors'] if state else None}"
    assert state["done"] == state["total"], f"only {state['done']} of {state['total']} cells ran"

    # The first live widget with a slider: move it and watch its figure change.
    page.evaluate("""() => { const nb = window.jupyterapp.shell.currentWidget.content;
        const i = [...nb.model.cells].findIndex(c => c.type === 'code' && JSON.stringify(c.outputs.toJSON()).includes('widget-view'));
        nb.activeCellIndex = i; return nb.scrollToItem(i); }""")
    slider = page.locator(
        ".jp-OutputArea .widget-slider .noUi-handle, .jp-OutputArea .widget-hslider .noUi-handle"
    ).first
    slider.wait_for(timeout=30000)
    box = slider.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]").element_handle()
    box.scroll_into_view_if_needed()
    # textContent, not innerText: Lab skips laying out off-screen cells, and innerText needs layout
    # the whole plot's text (all its SVG layers: the title lives in the info layer, not the first)
    text_js = "b => { const f = b.querySelector('.js-plotly-plot'); return f && f.querySelector('.main-svg') ? f.textContent : null; }"
    try:
        page.wait_for_function(text_js, arg=box, timeout=30000)
    except Exception:
        page.screenshot(path=str(screenshots / f"lab_failure_{Path(NOTEBOOK).stem}.png"))
        html = box.evaluate("b => b.outerHTML")
        pytest.fail(f"no plotly figure drew in the widget's box within 30 s; its HTML ends:\n{html[-3000:]}")
    before = box.evaluate(text_js)
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "([b, old]) => { const f = b.querySelector('.js-plotly-plot'); return f && f.querySelector('.main-svg') && f.textContent !== old; }",
        arg=[box, before],
        timeout=60000,
    )
    box.screenshot(path=str(screenshots / f"lab_widget_{Path(NOTEBOOK).stem}.png"))
    assert box.evaluate(text_js) != before
    ctx.close()
    (screenshots / "lab_run.json").write_text(json.dumps(state))
