"""The HTML report of ``python -m fxlab.show --html``: one self-contained page, checked in a real browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import check_report, click_node, console_errors, network_requests, open_browser

from fxlab.cli import run
from fxlab.models import build
from fxlab.rendering.html import build_html, line_chart, pipeline_html, pipeline_steps

PIPELINE = "fold-batchnorm,remove-dropout,fuse-linear-relu"


def _data_nodes(page: str, step: int, side: str) -> dict[str, str]:
    """node name → class, as drawn on one side of one step (read from the file, no browser)."""
    return {m[1]: m[0] for m in re.findall(rf'<g id="s{step}{side}_\d+" class="node ([a-z]+)" data-node="([^"]+)"', page)}


def _steps(page: str) -> int:
    return len(re.findall(r'<details[^>]* data-step="\d+"', page))


@pytest.fixture(scope="module")
def simplenn_page() -> str:
    return pipeline_html(build("simplenn").eval(), PIPELINE, title="simplenn")


def test_page_is_self_contained(simplenn_page: str) -> None:
    page = simplenn_page
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page  # no URL at all: nothing to fetch
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(?!data:|#)', page)
    assert _steps(page) == 3
    assert len(page) < 1_000_000


def test_nodes_carry_their_change_on_both_sides(simplenn_page: str) -> None:
    steps = pipeline_steps(build("simplenn").eval(), PIPELINE)
    for s in steps:
        before, after = _data_nodes(simplenn_page, s.index, "b"), _data_nodes(simplenn_page, s.index, "a")
        assert set(before) == {n.name for n in s.before.graph.nodes}
        assert set(after) == {n.name for n in s.after.graph.nodes}
        for n in s.diff.changed:
            assert before[n] == after[n] == "changed"
        assert all(before[n] == "removed" for n in s.diff.removed)
        assert all(after[n] == "added" for n in s.diff.added)
        for new, olds in s.diff.replaced.items():
            assert after[new] == "replaced" and all(before[o] == "replaced" for o in olds)
    assert steps[0].diff.removed == ["bn1", "bn2"]  # fold-batchnorm takes the BatchNorms out


def test_replaced_nodes_are_matched_across_sides() -> None:
    import copy

    import torch
    import torch.nn.functional as F

    from fxlab.core import diff_signatures, signatures, trace
    from fxlab.rendering.html import HtmlStep

    before = trace(build("mymodule").eval())
    after = copy.deepcopy(before)
    relu = next(n for n in after.graph.nodes if n.name == "relu")
    with after.graph.inserting_after(relu):
        gelu = after.graph.call_function(F.gelu, relu.args)
    relu.replace_all_uses_with(gelu)
    after.graph.erase_node(relu)
    after.recompile()
    diff = diff_signatures(signatures(before), signatures(after), None, {"gelu": ("relu",)})
    assert diff.replaced == {"gelu": ["relu"]}
    page = build_html("t", [], [HtmlStep(1, "spell-gelu", "changes", before, after, diff)])
    assert _data_nodes(page, 1, "a")["gelu"] == "replaced" and _data_nodes(page, 1, "b")["relu"] == "replaced"
    assert '"peers": ["relu"]' in page and '"peers": ["gelu"]' in page
    assert torch.is_tensor(after(torch.zeros(1, 1, 28, 28)))


def test_sites_and_per_node_numbers_are_shown() -> None:
    steps = pipeline_steps(build("mymodule").eval(), "fuse-linear-relu")
    steps[0].rewritten = [("layer1", "Linear followed by ReLU: fused")]
    steps[0].skipped = [{"node": "layer3", "reason": "no ReLU after it"}]
    steps[0].numbers = {"layer1": {"error": 1e-7}, "layer3": {"error": 2e-5}}
    page = build_html("t", [("model", "mymodule")], steps)
    assert "layer1: Linear followed by ReLU: fused" in page and "layer3: no ReLU after it" in page
    assert "Per-node numbers" in page and 'class="scale"' in page
    assert 'fillcolor' not in page and "#d73027" in page.lower()  # the largest error drawn the reddest


def test_line_chart_is_plain_svg() -> None:
    svg = line_chart("acc", [{"name": "a", "xs": [0, 1, 2], "ys": [90.0, None, 95.5], "marks": [(1, 91.0, "x")]}],
                     hlines=[(89.0, "floor")])
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "<polyline" in svg and "floor" in svg


def test_fifty_steps_stay_usable() -> None:
    passes = ",".join(["insert-relu{after=layer2}", "dce"] * 25)
    page = pipeline_html(build("mymodule").eval(), passes)
    assert _steps(page) == 50
    assert " open>" not in page  # long pipelines start collapsed
    assert len(page) < 5_000_000


def test_show_cli_writes_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.html"
    assert run("show", ["simplenn", "--passes", PIPELINE, "--html", str(out)]) == 0
    assert _steps(out.read_text(encoding="utf-8")) == 3
    assert str(out) in capsys.readouterr().err
    # checked before any work, like the other outputs; and --html needs a pipeline
    assert run("show", ["simplenn", "--passes", PIPELINE, "--html", str(tmp_path / "no" / "out.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run("show", ["simplenn", "--html", str(out)]) == 2
    assert "--html needs --passes" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["mymodule", "neuralnetwork", "simplenn", "mymnist", "linear-relu-stack"])
def test_every_seed_model_renders(model: str, tmp_path: Path) -> None:
    page = pipeline_html(build(model).eval(), "remove-dropout,fuse-linear-relu,dce")
    assert _steps(page) == 3 and "data-node=" in page


def test_report_in_a_real_browser(simplenn_page: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(simplenn_page, encoding="utf-8")
    driver = open_browser()
    try:
        check_report(driver, page, 3, tmp_path / "show-report.png")
        # step 3 fused fc1 with its ReLU: fc1 is changed, and marked so on both sides
        before = driver.find_element("css selector", '[data-step="3"] [data-side="b"] g[data-node="fc1"]')
        after = driver.find_element("css selector", '[data-step="3"] [data-side="a"] g[data-node="fc1"]')
        assert "changed" in before.get_attribute("class").split() and "changed" in after.get_attribute("class").split()
        text = click_node(driver, 3, "fc1")
        assert "fc1" in text and "after: changed" in text and "counterpart" in text
        assert "[1, 128]" in text  # its figures: the output shape
        assert "sel" in before.get_attribute("class").split()  # its counterpart is highlighted
        assert console_errors(driver) == []
        assert network_requests(driver) == []
    finally:
        driver.quit()


def test_fifty_step_report_in_a_real_browser(tmp_path: Path) -> None:
    page = tmp_path / "fifty.html"
    page.write_text(pipeline_html(build("mymodule").eval(), ",".join(["insert-relu{after=layer2}", "dce"] * 25)),
                    encoding="utf-8")
    driver = open_browser()
    try:
        check_report(driver, page, 50, tmp_path / "fifty.png")
        driver.execute_script("document.querySelector('[data-step=\"49\"]').open = true")
        added = driver.find_element("css selector", '[data-step="49"] [data-side="a"] g.added').get_attribute("data-node")
        text = click_node(driver, 49, added)
        assert text.startswith(f"{added}  (after: added)") and "torch.relu" in text
        assert console_errors(driver) == [] and network_requests(driver) == []
    finally:
        driver.quit()
