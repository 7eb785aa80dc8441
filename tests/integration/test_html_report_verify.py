"""The HTML report of ``verify`` (``Report.write_html``, ``python -m fxlab.verify --html``), in a real browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import check_report, click_node, console_errors, network_requests, open_browser

import fxlab
from fxlab.cli import run

PIPELINE = "insert-activation{after=layer2 fn=gelu},fuse-linear-relu,quantize-linear{mode=dynamic}"


@pytest.fixture(scope="module")
def report(trained, mnist):
    return fxlab.verify(trained["mymodule"], PIPELINE, data=mnist, retrain_epochs=0.05, device="cpu")


def test_write_html(report, tmp_path: Path) -> None:
    path = report.write_html(tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    assert len(re.findall(r'<details[^>]* data-step="\d+"', page)) == 3
    assert f"{report.baseline.accuracy:.2f}%" in page and report.summary() in page
    assert page.count('<svg class="chart"') == 3  # accuracy per step, retraining accuracy and loss
    assert "http://" not in page and "https://" not in page
    assert len(page) < 3_000_000
    assert "graph_before" not in report.to_json()  # the graphs are kept for the page, not in the JSON
    # the per-node numerics of each step: a table, and the quantized step's nodes on the error colour scale
    assert page.count("<h4>Per-node numbers</h4>") == 3
    quantized = page[page.index('data-step="3"'):]
    assert "rel_error" in quantized and "layer3" in quantized
    # what each pass rewrote and left alone
    assert "layer1" in page[page.index('data-step="2"'):page.index('data-step="3"')]


def test_report_in_a_real_browser(report, tmp_path: Path) -> None:
    page = report.write_html(tmp_path / "report.html")
    driver = open_browser()
    try:
        check_report(driver, page, 3, tmp_path / "verify-report.png")
        # step 1 inserted a GELU after layer2: relu_1 now reads it, so it is changed on both sides
        for side in "ba":
            node = driver.find_element("css selector", f'[data-step="1"] [data-side="{side}"] g[data-node="relu_1"]')
            assert "changed" in node.get_attribute("class").split()
        text = click_node(driver, 1, "relu_1")
        assert "relu_1" in text and "torch.relu" in text and "[1, 64]" in text
        assert "ok" in driver.find_element("css selector", '[data-step="1"] summary').text
        assert console_errors(driver) == []
        assert network_requests(driver) == []
    finally:
        driver.quit()


def test_verify_cli_html(trained, mnist_root, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.pth"
    import torch

    torch.save(trained["mymodule"].state_dict(), model)
    out = tmp_path / "r.html"
    assert run("verify", [str(model), "--passes", "remove-dropout,fuse-linear-relu", "--data", str(mnist_root),
                          "--device", "cpu", "--html", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert 'data-step="2"' in out.read_text(encoding="utf-8")
    # the output location is checked before any work
    assert run("verify", [str(model), "--passes", "dce", "--html", str(tmp_path / "no" / "r.html")]) == 2
