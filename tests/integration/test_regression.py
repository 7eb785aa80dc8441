"""The pass regression suite: every registered pass × every seed model where it applies.

For each configuration of each built-in pass (``CONFIGS``) on each seed model:

- golden printout (``tests/golden/<pass>/<model>.txt``, shared with the pass's own tests, or
  ``tests/golden/verify/<config>/<model>.txt`` for configurations only this suite checks);
- the contract's numerics on random inputs: ``exact`` equal within 1e-5 of the output's scale,
  ``approximate`` within the error its scheme implies, ``changes`` equal to an eager reference;
- the accuracy contract on real MNIST, through ``fxlab.verify`` on a seed model trained with a
  small budget (the ``trained`` fixture) and a small retraining budget.

Then property tests (hypothesis): random MLPs × random pipelines of exact passes keep outputs (and
``fxlab.verify`` says so), ``apply`` never mutates its input, and pipeline text round-trips for every
registered pass.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import fxlab
from conv_models import CONV_MODELS, conv_model
from seed_helpers import SEED_LAYERS, assert_close, randomize_batchnorm, seed_model, state
from fxlab.models import seed_names as names
from fxlab.pipeline import option_fields, required_options, text_types

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


#: A hidden layer of every seed model (SEED_LAYERS names some output layers).
HIDDEN_LAYERS = {
    "mymodule": "layer1",
    "neuralnetwork": "fc1",
    "simplenn": "fc1",
    "mymnist": "_hidden_layer_0",
    "linear-relu-stack": "linear_relu_stack.0",
}

#: Retraining after a ``changes`` step, in epochs (a fraction of one: the suite must stay fast).
RETRAIN = 0.1

#: Relative error (max |Δ| / max |y|) an approximate pass may cause on random inputs, by config.
APPROX_ERROR = {"dynamic": 0.05, "weight-only": 0.02, "static": 0.1, "bf16": 0.02, "fp16": 0.005,
                # low-bit modes (measured on the untrained seeds: int4 ≤ 0.13, fp8 ≤ 0.043, int2 ≤ 0.56)
                "int4": 0.2, "int8-int4": 0.2, "fp8": 0.06, "int2": 0.7}


def builtin_passes() -> dict[str, type[fxlab.Pass]]:
    """The passes fxlab itself registers (tests may register more)."""
    return {n: c for n, c in fxlab.registered_passes().items() if c.__module__.startswith("fxlab.")}


@dataclass(frozen=True)
class Config:
    """One configuration of a pass: pipeline text (``{layer}`` is the model's seed layer) and its golden name."""

    pass_name: str
    template: str
    golden: str  # tests/golden/<golden>/<model>.txt
    eager: Callable[[torch.Tensor], torch.Tensor] | None = None  # changes passes: the activation inserted
    error: float | None = None  # approximate passes: relative error allowed on random inputs

    def text(self, model: str) -> str:
        return self.template.replace("{layer}", SEED_LAYERS[model]).replace("{hidden}", HIDDEN_LAYERS[model])

    def layer(self, model: str) -> str:
        return HIDDEN_LAYERS[model] if "{hidden}" in self.template else SEED_LAYERS[model]

    @property
    def id(self) -> str:
        return self.template.replace("{layer}", "LAYER").replace("{hidden}", "HIDDEN")


def _quantize_configs() -> list[Config]:
    cls = builtin_passes().get("quantize-linear")
    if cls is None:
        return []
    return [Config("quantize-linear", f"quantize-linear{{mode={m}}}", f"quantize-linear/{m}", error=APPROX_ERROR.get(m, 0.1))
            for m in _modes(cls)]


def _modes(cls: type) -> list[str]:
    module = __import__(cls.__module__, fromlist=["MODES"])
    found = getattr(cls, "MODES", None) or getattr(module, "MODES", None)
    return list(found) if found else list(APPROX_ERROR)


def configs() -> list[Config]:
    """Every configuration the suite checks: one per option-less pass, chosen ones for the others."""
    special = {
        "insert-relu": [Config("insert-relu", "insert-relu{after={layer}}", "insert-relu", eager=torch.relu)],
        "insert-activation": [
            Config("insert-activation", "insert-activation{after={layer} fn=gelu}", "verify/insert-activation-gelu",
                   eager=F.gelu),
            Config("insert-activation", "insert-activation{after={hidden} fn=silu}", "verify/insert-activation-silu",
                   eager=F.silu),
        ],
        "quantize-linear": _quantize_configs(),
        # prepare alone: observers only, so the float function (error 0) and its own printout
        # the seed models are MLPs: quantize-conv has no conv to quantize there (a no-op, error 0);
        # its numbers on convs are tests/unit/test_quantize_conv.py's and the accuracy test's
        "quantize-conv": [Config("quantize-conv", "quantize-conv{mode=dynamic}", "verify/quantize-conv-on-mlp", error=0.0)],
        "quantize-prepare": [Config("quantize-prepare", "quantize-prepare", "quantize-prepare", error=0.0)],
        # convert needs an observed, calibrated model: after prepare and the same calibration
        # batches as quantize-linear{mode=static}, it must print (and compute) exactly that
        "quantize-convert": [Config("quantize-convert", "quantize-prepare,quantize-convert", "quantize-linear/static",
                                    error=APPROX_ERROR["static"])],
    }
    out = []
    for name, cls in builtin_passes().items():
        if name in special:
            out += special[name]
        elif not required_options(cls):
            out.append(Config(name, name, name))
        else:
            out.append(Config(name, "", name))  # test_every_pass_is_covered names it
    return out


CONFIGS = configs()
CASES = [pytest.param(c, m, id=f"{c.id}-{m}") for c in CONFIGS if c.template for m in names()]


def test_every_pass_is_covered() -> None:
    missing = [c.pass_name for c in CONFIGS if not c.template]
    assert not missing, f"passes with required options need a configuration in CONFIGS: {missing}"
    assert {c.pass_name for c in CONFIGS} == set(builtin_passes())


# -- helpers -----------------------------------------------------------------------------------






def same_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)


def eager_with(model: nn.Module, path: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` computed eagerly with ``fn`` applied to the output of submodule ``path``."""
    handle = model.get_submodule(path).register_forward_hook(lambda m, i, o: fn(o))
    try:
        return model(x)
    finally:
        handle.remove()


def calibration_batches() -> list[torch.Tensor]:
    """Random batches like the test inputs, for static quantization from text."""
    g = torch.Generator().manual_seed(2)
    return [torch.randn(64, 1, 28, 28, generator=g) for _ in range(4)]


def applies(config: Config, model_name: str, model: nn.Module | None = None) -> fx.GraphModule:
    """The pass applied to ``model`` (default: a fresh seed model); every pass applies to every seed model.

    A pass with an empty ``calibration`` option gets :func:`calibration_batches`; after a pass that
    ``calibrates`` (leaves observers), the same batches run through the graph, as a caller would.
    """
    passes = fxlab.parse_pipeline(config.text(model_name))
    for p in passes:
        if getattr(p, "calibration", "absent") is None:
            p.calibration = calibration_batches()
    gm = model if model is not None else seed_model(model_name)
    if not any(type(p).calibrates for p in passes):
        return fxlab.apply(gm, passes)
    for p in passes:
        gm = fxlab.apply(gm, [p])
        if type(p).calibrates:
            with torch.no_grad():
                for batch in calibration_batches():
                    gm.eval()(batch)
    return gm


# -- every pass × every seed model ---------------------------------------------------------------


@pytest.mark.parametrize("config, model_name", CASES)
def test_golden(config: Config, model_name: str, golden) -> None:
    gm = applies(config, model_name)
    golden.check(golden_name(config, model_name), fxlab.format_graph(gm))


def golden_name(config: Config, model_name: str) -> str:
    """The pass's own golden file where its tests made one (shared), else this suite's under verify/."""
    name = f"{config.golden}/{model_name}"
    if name.startswith("verify/") or (GOLDEN / f"{name}.txt").exists():
        return name
    return f"verify/{name}"


@pytest.mark.parametrize("config, model_name", CASES)
def test_contract_numerics_on_random_inputs(config: Config, model_name: str) -> None:
    torch.manual_seed(1)
    model = seed_model(model_name)
    saved = state(model)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        gm = applies(config, model_name, model)
        actual = gm(x)
    kind = fxlab.get_pass(config.pass_name).kind
    if kind == "exact":
        assert_close(actual, expected)
    elif kind == "approximate":
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        error = float((actual - expected).abs().max() / expected.abs().max())
        assert error <= config.error, f"{config.id}: relative error {error:.4f} > {config.error}"
    else:
        assert config.eager is not None, f"{config.id}: a changes pass needs an eager reference"
        with torch.no_grad():
            reference = eager_with(model, config.layer(model_name), config.eager, x)
        assert_close(actual, reference)
    assert same_state(model, saved)


@pytest.mark.parametrize("config, model_name", CASES)
def test_accuracy_contract_on_mnist(config: Config, model_name: str, trained, mnist) -> None:
    model = trained[model_name]
    text = config.text(model_name)
    report = fxlab.verify(model, text, data=mnist, device="cpu", retrain_epochs=RETRAIN)
    assert len(report.steps) == len(fxlab.parse_pipeline(text))
    step = report.steps[-1]  # the pass under test (after the passes it needs, e.g. quantize-prepare)
    assert report.ok, f"{config.id} on {model_name}: {step.verdict}\n{report.table()}"
    assert step.kind == fxlab.get_pass(config.pass_name).kind
    assert report.baseline.accuracy == pytest.approx(trained.accuracy(model_name))
    if step.kind == "changes":
        assert step.retrained_accuracy is not None
    if step.kind == "approximate":
        assert step.budget is not None, f"{config.pass_name} declares no accuracy budget"


# -- exact passes on conv nets -------------------------------------------------------------------
# The seed models are MLPs: fuse-conv-relu finds nothing there (its seed goldens say so). So that
# no pass passes the suite by doing nothing, every exact option-less pass also runs on the tests'
# conv nets (golden + numerics), and each conv pass must rewrite sites on at least one of them.

CONV_CONFIGS = [c for c in CONFIGS if c.template == c.pass_name and fxlab.get_pass(c.pass_name).kind == "exact"]
CONV_CASES = [pytest.param(c, m, id=f"{c.id}-{m}") for c in CONV_CONFIGS for m in CONV_MODELS]


@pytest.mark.parametrize("config, model_name", CONV_CASES)
def test_exact_passes_on_conv_nets(config: Config, model_name: str, golden) -> None:
    model = conv_model(model_name)
    saved = state(model)
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        gm = fxlab.apply(model, config.template)
        assert_close(gm(x), expected)
    golden.check(golden_name(config, model_name), fxlab.format_graph(gm))
    assert same_state(model, saved)


@pytest.mark.parametrize("pass_name", ["fuse-conv-relu", "fold-batchnorm", "remove-dropout", "swap-max-pool"])
def test_conv_passes_rewrite_sites_on_the_conv_nets(pass_name: str) -> None:
    found = {m: fxlab.records(fxlab.apply(conv_model(m), pass_name))[-1].rewritten for m in CONV_MODELS}
    assert any(found.values()), f"{pass_name} rewrote nothing on any conv net: {found}"


# -- property tests ----------------------------------------------------------------------------

SPELLINGS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "nn.ReLU": lambda self, x: self.relu(x),
    "F.relu": lambda self, x: F.relu(x),
    "torch.relu": lambda self, x: torch.relu(x),
    ".relu()": lambda self, x: x.relu(),
    "F.gelu": lambda self, x: F.gelu(x),
    "twice": lambda self, x: torch.relu(x) + torch.relu(x),  # a common subexpression
    "dead": lambda self, x: (x * 2, x)[1],  # dead code: x * 2 is never used
}
LAYERS = ["linear", "linear", "bn", "dropout", *SPELLINGS]


class RandomMLP(nn.Module):
    """An MNIST MLP (flatten → ... → Linear(·, 10)) from a plan of layer kinds."""

    def __init__(self, plan: list[tuple[str, int]]) -> None:
        super().__init__()
        self.plan = plan
        self.mods = nn.ModuleList()
        self.relu = nn.ReLU()
        width = 784
        for kind, arg in plan:
            if kind == "linear":
                self.mods.append(nn.Linear(width, arg, bias=arg % 5 != 0))
                width = arg
            elif kind == "bn":
                self.mods.append(nn.BatchNorm1d(width))
            elif kind == "dropout":
                self.mods.append(nn.Dropout(0.3))
            else:
                self.mods.append(nn.Identity())
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for (kind, _), mod in zip(self.plan, self.mods):
            x = mod(x) if kind in ("linear", "bn", "dropout") else SPELLINGS[kind](self, x)
        return self.head(x)


@st.composite
def random_mlps(draw: st.DrawFn) -> RandomMLP:
    plan = [("linear", draw(st.integers(4, 40)))]
    for _ in range(draw(st.integers(0, 7))):
        plan.append((draw(st.sampled_from(LAYERS)), draw(st.integers(4, 40))))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return randomize_batchnorm(RandomMLP(plan)).eval()


def exact_passes() -> list[str]:
    return sorted(n for n, c in builtin_passes().items() if c.kind == "exact" and not required_options(c))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_mlps(), data=st.data())
def test_random_mlps_random_exact_pipelines_keep_outputs(model: RandomMLP, data: st.DataObject, mnist) -> None:
    pipeline = data.draw(st.lists(st.sampled_from(exact_passes()), min_size=1, max_size=5), label="pipeline")
    x = mnist.test.batch(slice(0, 256))[0]
    with torch.no_grad():
        expected = model(x)
        gm = fxlab.apply(model, ",".join(pipeline))
        assert_close(gm(x), expected)
    scale = float(expected.abs().max())
    report = fxlab.verify(model, ",".join(pipeline), data=mnist, device="cpu", tolerance=max(1e-4, 1e-5 * scale))
    assert report.ok, report.table()
    assert all(s.agreement == 100.0 for s in report.steps)


def _any_pass(model: nn.Module) -> st.SearchStrategy[str]:
    """Pipeline text of one built-in pass that can apply to ``model`` (insertions after a random node)."""
    gm = fxlab.trace(model)
    nodes = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    options = [st.sampled_from(exact_passes())]
    options.append(st.builds(lambda n, fn: f"insert-activation{{after={n} fn={fn}}}", st.sampled_from(nodes),
                             st.sampled_from(["relu", "gelu", "tanh", "sigmoid"])))
    options.append(st.builds(lambda n: f"insert-relu{{after={n}}}", st.sampled_from(nodes)))
    quantize = [c.text("mymodule") for c in _quantize_configs()]
    if quantize:
        options.append(st.sampled_from(quantize))
    return st.one_of(options)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_mlps(), st.booleans(), st.data())
def test_apply_never_mutates_its_input(model: RandomMLP, as_graph: bool, data: st.DataObject) -> None:
    pipeline = data.draw(st.lists(_any_pass(model), min_size=1, max_size=4), label="pipeline")
    subject: nn.Module = fxlab.trace(model) if as_graph else model
    saved = state(subject)
    printout = fxlab.format_graph(fxlab.trace(subject))
    modes = {n: m.training for n, m in subject.named_modules()}
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        expected = subject(x)
    try:
        fxlab.apply(subject, ",".join(pipeline))
    except fxlab.PassError:
        pass  # refusing is fine; changing the input is not
    assert same_state(subject, saved)
    assert fxlab.format_graph(fxlab.trace(subject)) == printout
    assert {n: m.training for n, m in subject.named_modules()} == modes
    with torch.no_grad():
        assert torch.equal(subject(x), expected)


# -- pipeline text round-trips for every registered pass ----------------------------------------

# strings that would read as keywords or numbers, or need quoting, must come back as the same strings
_WORD = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.*]{0,11}", fullmatch=True)
_TEXT = st.one_of(_WORD, st.text(min_size=1, max_size=12),
                  st.sampled_from(["none", "true", "false", "1", "-2", "2.5", "1e3", "inf", "nan", "a b",
                                   'say "hi"', "x{y}", "a,b", "back\\slash"]))


def _known_values(cls: type, field_name: str) -> list[str] | None:
    if field_name == "fn":
        from fxlab.passes.activation import ACTIVATIONS

        return list(ACTIVATIONS)
    if field_name == "mode":
        return _modes(cls)
    if field_name == "group_size":
        from fxlab.nn.lowbit import GROUP_SIZES

        return list(GROUP_SIZES)
    return None


def _value_strategy(cls: type, field_name: str, annotation: typing.Any) -> st.SearchStrategy[typing.Any]:
    known = _known_values(cls, field_name)
    if known is not None:
        return st.sampled_from(known)
    allowed = text_types(annotation)
    choices: list[st.SearchStrategy[typing.Any]] = []
    if bool in allowed:
        choices.append(st.booleans())
    if int in allowed:
        choices.append(st.integers(-(10**6), 10**6))
    if float in allowed:
        choices.append(st.floats(allow_nan=False, allow_infinity=False, width=64))
    if str in allowed:
        choices.append(_TEXT)
    if list in allowed:
        choices.append(st.lists(_WORD, min_size=2, max_size=3))
    if type(None) in allowed:
        choices.append(st.none())
    return st.one_of(choices)


@st.composite
def registered_pass(draw: st.DrawFn, cls: type[fxlab.Pass]) -> fxlab.Pass:
    fields = option_fields(cls)
    required = set(required_options(cls))
    kwargs = {}
    for name, annotation in fields.items():
        if name in required or draw(st.booleans()):
            kwargs[name] = draw(_value_strategy(cls, name, annotation))
    try:
        return cls(**kwargs)
    except (fxlab.FxlabError, ValueError, TypeError):
        assume(False)
        raise


def _text_representable(p: fxlab.Pass) -> bool:
    try:
        p.to_text()
        return True
    except fxlab.PipelineError:
        return False


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_pipeline_text_round_trips(data: st.DataObject) -> None:
    classes = [fxlab.get_pass(n) for n in sorted(fxlab.registered_passes())]
    passes = data.draw(st.lists(st.sampled_from(classes).flatmap(registered_pass), min_size=1, max_size=4))
    assume(all(_text_representable(p) for p in passes))
    text = fxlab.format_pipeline(passes)
    parsed = fxlab.parse_pipeline(text)
    assert fxlab.format_pipeline(parsed) == text
    assert [type(p) for p in parsed] == [type(p) for p in passes]
    assert [p.options() for p in parsed] == [p.options() for p in passes], text


def test_every_builtin_pass_has_a_text_form() -> None:
    for name, cls in builtin_passes().items():
        kwargs = {f: (_known_values(cls, f) or [SEED_LAYERS["mymodule"]])[0] for f in required_options(cls)}
        p = cls(**kwargs)
        assert fxlab.parse_pipeline(p.to_text())[0].options() == p.options(), name


def test_keyword_strings_round_trip() -> None:
    cls = builtin_passes()["quantize-linear"]
    p = cls(mode="dynamic", targets="none")
    assert fxlab.parse_pipeline(p.to_text())[0].options() == p.options()
