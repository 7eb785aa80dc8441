"""fxlab.nn.kernels.choice: measured once per shape bucket, cached on disk per machine, forced by
policy, never on the autograd path or under graph capture, never an implementation that is not exact."""

from __future__ import annotations

import itertools
import json
import logging

import pytest
import torch
from torch import nn

from fxlab.nn import Int8DynamicLinear, kernels
from fxlab.nn.kernels import choice
from fxlab.nn.quantized import DYNAMIC_OP


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh user cache and no decisions in memory; the policy ``auto`` with the kernels on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(choice, "_load_per_cpu", lambda: 0.25)  # a quiet machine, whatever runs beside
    monkeypatch.setattr(choice, "_pool_contended", lambda: False)
    choice.reset(disk=True)
    with kernels.enabled(), choice.forced("auto"):
        yield tmp_path
    choice.reset(disk=True)


def _module() -> Int8DynamicLinear:
    torch.manual_seed(0)
    return Int8DynamicLinear.from_float(nn.Linear(96, 24), relu=True)


def test_buckets_round_rows_up_to_a_power_of_two() -> None:
    assert [choice.bucket(r, 784, 128) for r in (1, 2, 3, 8, 9, 256, 257)] == [
        "1x784x128", "2x784x128", "4x784x128", "8x784x128", "16x784x128", "256x784x128", "512x784x128"]


def test_conv_buckets_hold_the_input_shape_and_the_geometry(cache) -> None:
    """Two convs with the same input and output channels but another padding, and a Conv1d, each get
    their own decision; the same conv on another batch of the same bucket is not measured again."""
    from fxlab.nn import HalfConv1d, HalfConv2d

    torch.manual_seed(0)
    plain = HalfConv2d.from_float(nn.Conv2d(3, 5, 3))
    padded = HalfConv2d.from_float(nn.Conv2d(3, 5, 3, padding=1, stride=(2, 1)))
    one_d = HalfConv1d.from_float(nn.Conv1d(3, 5, 4, dilation=2))
    with torch.no_grad():
        plain(torch.randn(3, 3, 12, 11))
        plain(torch.randn(4, 3, 12, 11))  # same bucket
        padded(torch.randn(4, 3, 12, 11))
        one_d(torch.randn(2, 3, 17))
    mine = [d for d in choice.decisions() if d.op == "bf16-conv"]
    assert [d.bucket for d in mine] == ["4x3x12x11x5k3x3", "4x3x12x11x5k3x3s2x1p1x1", "2x3x1x17x5k1x4d1x2"]
    assert all(d.source == "measured" and d.chosen in d.times_us for d in mine)
    doc = json.loads(choice.cache_path().read_text())
    assert {f"bf16-conv/{d.bucket}" for d in mine} <= set(doc["decisions"])


def test_a_conv_input_in_channels_last_layout_has_buckets_of_its_own(cache) -> None:
    """The int8 reference conv writes its output channels-last (a free view of its GEMM), so the
    next conv's input is in that layout: it is measured under a bucket of its own, as is the
    contiguous input of the same shape; any other non-contiguous input runs the reference."""
    from fxlab.nn import Int8DynamicConv2d
    from fxlab.nn.quantized_conv import DYNAMIC_CONV_OP

    torch.manual_seed(0)
    first = Int8DynamicConv2d.from_float(nn.Conv2d(1, 4, 3))
    second = Int8DynamicConv2d.from_float(nn.Conv2d(4, 5, 3))
    x = torch.randn(3, 1, 12, 11)
    with torch.no_grad(), choice.forced("torch"):
        h = first(x)
    assert not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = second(h)
        assert torch.equal(second(h.contiguous()), y)  # the same numbers in either layout
        args = (second.weight, second.weight_scale, second.bias)
        odd = h.contiguous().transpose(2, 3)  # neither contiguous nor channels-last
        assert choice.choose(DYNAMIC_CONV_OP, second, odd, second.bucket_suffix(), *args) is None
    mine = [d.bucket for d in choice.decisions() if d.op == "dynamic-conv" and d.source == "measured"]
    assert mine == ["4x4x10x9x5k3x3/nhwc", "4x4x10x9x5k3x3"]
    assert choice.CHANNELS_LAST == "/nhwc"


def test_auto_measures_once_per_bucket_and_writes_the_cache(cache) -> None:
    m = _module()
    with torch.no_grad():
        m(torch.randn(200, 96))
        m(torch.randn(250, 96))  # same bucket: no second measurement
        m(torch.randn(3, 96))
    mine = [d for d in choice.decisions() if d.op == "dynamic"]
    assert [d.bucket for d in mine] == ["256x96x24", "4x96x24"]
    d = mine[0]
    assert d.source == "measured" and d.reason.startswith("fastest of")
    timed = {n: t for n, t in d.times_us.items() if t is not None}
    assert set(timed) == {"torch", "numba", "numba+int_mm"} or len(timed) >= 2
    assert d.chosen == min(timed, key=timed.__getitem__)
    doc = json.loads(choice.cache_path().read_text())
    assert choice.cache_path().parent == cache / "fxlab" / "kernels"
    assert doc["machine"] == choice.machine() and doc["machine"]["torch"] == torch.__version__
    assert doc["decisions"]["dynamic/256x96x24"]["chosen"] == d.chosen
    assert not list(choice.cache_path().parent.glob("*.tmp*"))  # written atomically, nothing left over


def test_a_new_process_reads_the_decisions_instead_of_timing(cache, monkeypatch) -> None:
    m = _module()
    x = torch.randn(40, 96)
    with torch.no_grad():
        first = m(x)
    chosen = choice.decisions()[-1].chosen
    choice.reset(disk=True)  # as a new process: nothing in memory, the file re-read

    def no_timing(*args, **kwargs):
        raise AssertionError("measured again although the cache holds the decision")

    monkeypatch.setattr(choice, "_measure", no_timing)
    with torch.no_grad():
        again = m(x)
    d = choice.decisions()[-1]
    assert d.source == "disk" and d.chosen == chosen
    torch.testing.assert_close(again, first, rtol=1e-5, atol=1e-5)


def test_an_unreadable_cache_is_measured_afresh_and_rewritten(cache, caplog) -> None:
    path = choice.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING), torch.no_grad():
        _module()(torch.randn(5, 96))
    assert "unreadable kernel choice cache" in caplog.text
    assert "dynamic/8x96x24" in json.loads(path.read_text())["decisions"]


def test_policies_force_a_candidate_or_the_reference(cache) -> None:
    m = _module()
    x = torch.randn(300, 96)
    with torch.no_grad():
        for policy, expected in (("numba", "numba"), ("torch", "torch"), ("no-such-kernel", "torch")):
            with choice.forced(policy):
                m(x)
                d = choice.decisions()[-1]
                assert (d.chosen, d.source) == (expected, "forced") and not d.times_us
    assert not choice.cache_path().exists()  # forced choices are not measurements: nothing written


def test_no_choice_on_the_autograd_path_or_for_odd_inputs(cache) -> None:
    m = _module()
    args = (m.weight, m.weight_scale, m.bias, True)
    assert choice.choose(DYNAMIC_OP, m, torch.randn(4, 96, requires_grad=True), 24, *args) is None
    assert choice.choose(DYNAMIC_OP, m, torch.randn(96, 4).t(), 24, *args) is None  # not contiguous
    with torch.no_grad():
        assert choice.choose(DYNAMIC_OP, m, torch.randn(4, 96, requires_grad=True), 24, *args) is not None
    x = torch.randn(4, 96, requires_grad=True)
    before = len(choice.decisions())
    m(x)  # the autograd path runs without a decision
    assert len(choice.decisions()) == before


def test_no_choice_while_a_graph_is_captured(cache) -> None:
    model = nn.Sequential(_module(), nn.ReLU())
    before = len(choice.decisions())
    with torch.no_grad():
        ep = torch.export.export(model, (torch.randn(8, 96),))
    assert len(choice.decisions()) == before  # the reference path was captured, nothing timed
    assert ep.module()(torch.randn(8, 96)).shape == (8, 24)


def test_a_candidate_that_is_not_exact_is_never_chosen(cache, caplog) -> None:
    def reference(module, x):
        return x * 2

    def wrong_but_fast(module, x):
        return x

    op = choice.Op("test-not-exact", [choice.Candidate("torch", reference), choice.Candidate("fast", wrong_but_fast)])
    with caplog.at_level(logging.INFO), torch.no_grad():
        c = choice.choose(op, None, torch.randn(4, 6), 6)
    assert c is not None and c.name == "torch"
    d = choice.decisions()[-1]
    assert "fast" in d.rejected and d.times_us["fast"] is None
    assert "left out" in caplog.text


def test_a_decision_taken_on_a_busy_machine_is_not_cached_and_is_measured_again(cache, monkeypatch) -> None:
    load = [3.0]
    monkeypatch.setattr(choice, "_load_per_cpu", lambda: load[0])
    monkeypatch.setattr(choice, "RECHECK_S", 0.0)
    m = _module()
    x = torch.randn(40, 96)
    with torch.no_grad():
        m(x)
        first = [d for d in choice.decisions() if d.op == "dynamic"][-1]
        assert first.busy and first.load == 3.0 and "busy" in first.reason
        assert not choice.cache_path().exists()  # not written: a later process measures afresh
        m(x)  # still busy: the provisional choice runs, nothing measured
        assert [d for d in choice.decisions() if d.op == "dynamic"][-1] is first
        load[0] = 0.5
        m(x)  # quiet now: measured again, and this decision is kept on disk
    second = [d for d in choice.decisions() if d.op == "dynamic"][-1]
    assert second is not first and not second.busy and second.load == 0.5
    doc = json.loads(choice.cache_path().read_text())
    assert doc["decisions"]["dynamic/64x96x24"]["chosen"] == second.chosen


def test_each_candidate_is_judged_by_its_median_not_its_best_call(cache, monkeypatch) -> None:
    """A candidate with one lucky fast call but slow ones otherwise loses to a steady one."""
    clock = [0.0]
    lucky = itertools.chain([0.0, 1e-6, 1e-6], itertools.repeat(50e-6))  # warm-up, two fast calls, then slow

    def steady(module, x):
        clock[0] += 20e-6
        return x * 2

    def spiky(module, x):
        clock[0] += next(lucky)
        return x * 2

    monkeypatch.setattr(choice.time, "perf_counter", lambda: clock[0])
    op = choice.Op("test-median", [choice.Candidate("torch", steady), choice.Candidate("spiky", spiky)], exact=True)
    with torch.no_grad():
        c = choice.choose(op, None, torch.randn(4, 6), 6)
    d = choice.decisions()[-1]
    assert d.times_us["spiky"] > d.times_us["torch"] and c.name == "torch" == d.chosen


def test_a_starved_thread_pool_counts_as_busy_whatever_the_load_average(cache, monkeypatch) -> None:
    monkeypatch.setattr(choice, "_pool_contended", lambda: True)
    with torch.no_grad():
        _module()(torch.randn(40, 96))
    d = [d for d in choice.decisions() if d.op == "dynamic"][-1]
    assert d.busy and "thread pool" in d.reason and not choice.cache_path().exists()


def test_the_thread_pool_probe_needs_a_pool() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert choice._pool_contended() is False  # one thread: nothing to starve
    finally:
        torch.set_num_threads(threads)
