"""``notebooks/tour.ipynb``, executed top to bottom on a fresh kernel, as a reader runs it.

Every code cell of the tour asserts its own result, so executing it without a cell error
is already a test of the whole public API on dynflow's embedded LocalCluster. On top of
that, the outputs must hold what a reader is promised: the progress widget, the drawing
of a graph, a line printed on a worker and forwarded tagged with its task's label, and
the run names served by the dashboard's JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "tour.ipynb"
CELL_TIMEOUT = 120  # seconds for one cell; the whole tour takes about 10 s on 2 cores
WIDGET = "application/vnd.jupyter.widget-view+json"


def kernel_env() -> dict[str, str]:
    """This checkout's dynflow first on the path; a small embedded cluster; no address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DYNFLOW__")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # the embedded cluster: 2 single-threaded worker processes
    env["DASK_DYNFLOW__LOCAL_CLUSTER"] = '{"n-workers": 2, "threads-per-worker": 1}'
    return env


def texts(cell: nbformat.NotebookNode) -> Iterator[str]:
    """Every output of a code cell as text: streams, and each MIME type's data."""
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            yield out.text
        elif out.output_type == "error":
            yield "\n".join(out.traceback)
        for value in out.get("data", {}).values():
            yield value if isinstance(value, str) else json.dumps(value)


def cell_with(nb: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    """The one code cell whose source contains ``source``."""
    found = [c for c in nb.cells if c.cell_type == "code" and source in c.source]
    assert len(found) == 1, f"expected one code cell containing {source!r}, found {len(found)}"
    return found[0]


def test_the_notebook_is_valid_and_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    """The tour, executed on a fresh ``python3`` kernel from the repository root."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        startup_timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO)}},
    )
    # raises CellExecutionError, with the cell's traceback, when a cell fails
    client.execute(env=kernel_env())
    return nb


@pytest.mark.slow
@pytest.mark.timeout(300)  # the first test also starts the kernel and its cluster
class TestExecutedTour:
    def test_every_cell_runs_without_error(self, executed):
        code = [c for c in executed.cells if c.cell_type == "code"]
        for n, cell in enumerate(code, start=1):
            assert cell.execution_count == n, cell.source
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"{cell.source}\n{errors}"

    def test_live_views_end_as_static_html_a_saved_notebook_keeps(self, executed):
        # the progress bars and the run's view are ipywidgets while the run goes on,
        # replaced in place (display id) by a static copy when it ends
        for source in ("df.progress(fut)", "fut = squares.submit(40)"):
            cell = cell_with(executed, source)
            data = [out.get("data", {}) for out in cell.outputs]
            assert not any(WIDGET in d for d in data), (source, cell.outputs)
            html = "".join(d.get("text/html", "") for d in data)
            assert "finished" in html and "slow_square.map()" in html, (source, cell.outputs)
            plain = "".join(d.get("text/plain", "") for d in data)
            assert "squares: finished" in plain, plain  # the text fallback
        # saved without widget state and converted: each run's final state
        from nbconvert import HTMLExporter

        saved = nbformat.reads(nbformat.writes(executed), as_version=4)  # as saved, read
        saved.metadata.pop("widgets", None)
        body, _ = HTMLExporter().from_notebook_node(saved)
        assert "squares" in body and "40/40 done" in body
        assert "model not found" not in body.lower()

    def test_visualize_draws_an_svg(self, executed):
        cell = cell_with(executed, ".visualize()")
        assert any("<svg" in text for text in texts(cell)), cell.outputs

    def test_printed_lines_are_forwarded_tagged_with_the_task_label(self, executed):
        cell = cell_with(executed, "@df.flow(log_prints=True)")
        lines = "".join(texts(cell)).splitlines()
        assert "[greet-ada] hello from the cluster, ada" in lines, lines
        assert "[greet-grace] hello from the cluster, grace" in lines, lines

    def test_the_dashboard_serves_the_runs(self, executed):
        cell = cell_with(executed, "/dynflow/runs.json")
        out = "".join(texts(cell))
        assert "embedded cluster: 2 workers" in out, out  # the test's kernel_env() applies
        assert "/dynflow/" in out, out
        (runs,) = [line for line in out.splitlines() if line.startswith("runs on the page:")]
        assert "squares" in runs and "greetings" in runs, runs

    def test_the_page_link_is_html_and_no_address_is_a_link(self, executed):
        # the first run says where the page is: as HTML under its cell (not on stderr,
        # which JupyterLab shows as an error), and the scheduler's tcp:// address is text
        outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
        links = [
            o.data["text/html"]
            for o in outputs
            if "text/html" in o.get("data", {}) and "are shown at" in o.data["text/html"]
        ]
        assert links, outputs  # once per scheduler the tour uses
        for link in links:
            assert '<a href="http' in link and "/dynflow/" in link, links
            assert "tcp://" not in link, links
        stderr = "".join(o.text for o in outputs if o.get("name") == "stderr")
        assert "dynflow: runs on" not in stderr, stderr
