"""The registry API, options, and readable reasons for what cannot run."""

from __future__ import annotations

import pytest

import implementations
from implementations import Implementation, Option
from implementations.base import must_be_positive
from suite.case import Case
from tests.conftest import aten_ops

CPU_CASE = Case(1, 2, 64, 64, "float32", False, "fwd", "cpu")


def test_names_lists_every_exact_implementation():
    assert {"naive", "sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "xformers", "reference"} <= set(
        implementations.names()
    )


@pytest.mark.parametrize("name", implementations.names())
def test_every_entry_builds_and_declares_itself(name):
    impl = implementations.get(name)
    assert impl.name == name and impl.label == name
    assert impl.family in {"exact", "sparse", "linear", "performer", "low-rank"}
    assert isinstance(impl.supports(CPU_CASE), list)


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match=r"unknown implementation 'flashy'.*valid: .*sdpa-flash"):
        implementations.get("flashy")


class Windowed(Implementation):
    options = {"window": Option(default=256, parse=int, check=must_be_positive, help="a positive integer")}


@pytest.mark.parametrize(
    "given,message",
    [
        ({"size": "3"}, r"unknown option 'size' \(allowed: window\)"),
        ({"window": "0"}, r"window='0' must be a positive integer"),
        ({"window": "wide"}, r"window='wide' is not valid"),
    ],
)
def test_bad_options_are_named(given, message):
    with pytest.raises(ValueError, match=message):
        Windowed("windowed", **given)


def test_options_parse_and_show_in_label():
    impl = Windowed("windowed", window="64")
    assert impl.settings == {"window": 64}
    assert impl.label == "windowed:window=64"
    assert Windowed("windowed").label == "windowed"


@pytest.mark.parametrize(
    "name,expected",
    [
        ("sdpa-cudnn", "device=cpu (supported: cuda)"),
        ("sdpa-efficient", "device=cpu (supported: cuda)"),
        ("xformers", "xformers"),
    ],
)
def test_cpu_unsupported_paths_give_reasons(name, expected):
    reasons = implementations.get(name).supports(CPU_CASE)
    assert reasons and any(expected in reason for reason in reasons), reasons


def test_xformers_reason_names_device_and_dtype():
    pytest.importorskip("xformers")
    reasons = " ".join(implementations.get("xformers").supports(CPU_CASE))
    assert "device=cpu" in reasons and "dtype=torch.float32" in reasons


def test_xformers_import_leaves_its_load_warning_to_the_rows():
    """A build for another torch logs a multi-line warning on import; the rows' reason carries it instead."""
    pytest.importorskip("xformers")
    import subprocess
    import sys

    probe = (
        "from implementations.xformers_memeff import _extension_problem, _load_xformers;"
        "_load_xformers(); print(bool(_extension_problem()))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    if done.stdout.strip() != "True":
        pytest.skip("xformers' compiled extension loads here, so it has nothing to warn about")
    assert "WARNING[XFORMERS]" not in done.stderr, done.stderr


def test_xformers_build_mismatch_is_one_clause_naming_both_builds():
    from implementations.xformers_memeff import _condense_load_failure

    message = (
        "xFormers can't load C++/CUDA extensions. xFormers was built for:\n"
        "    PyTorch 2.10.0+cu128 with CUDA 1208 (you have 2.11.0+cu130)\n"
        "    Python  3.11.7 (you have 3.11.7)\n"
        "  Please reinstall xformers (see https://github.com/facebookresearch/xformers#installing-xformers)\n"
        "  Memory-efficient attention, SwiGLU, sparse and more won't be available."
    )
    assert _condense_load_failure(message) == (
        "built for PyTorch 2.10.0+cu128 with CUDA 1208 (this is 2.11.0+cu130); install an xformers built for this torch"
    )
    assert _condense_load_failure("something  else\nentirely") == "something else entirely"


def test_sdpa_reports_the_backend_it_dispatches_to():
    import torch

    q = torch.randn(1, 2, 8, 16)
    assert implementations.get("sdpa-math").backend(q, q, q) == "math"
    assert implementations.get("sdpa").backend(q, q, q) in {"math", "flash"}


def test_implementations_without_grouped_query_attention_say_so():
    grouped = Case(1, 4, 64, 64, "bfloat16", True, "fwd", "cuda", kv_heads=2)
    reasons = " ".join(implementations.get("linear-fla").supports(grouped))
    assert "kv_heads=2 with heads=4 (supported: kv_heads = heads" in reasons
    assert implementations.base.grouped_query_reasons(Case(1, 4, 64, 64, "bfloat16", True, "fwd", "cuda"), "x") == []


@pytest.mark.parametrize(
    "name,kernel",
    [
        ("sdpa-math", "aten::_scaled_dot_product_attention_math"),
        ("sdpa-flash", "aten::_scaled_dot_product_flash_attention_for_cpu"),
    ],
)
def test_a_forced_backend_is_set_once_for_a_session_and_holds_in_every_call_inside_it(name, kernel, monkeypatch):
    """Saving, setting and restoring the backend flags in every call cost ~10 µs, which timed calls of short
    kernels counted: `sdpa-flash` took 17.7 µs where `sdpa`, dispatching to the same CPU kernel, took 6.3."""
    import torch

    from implementations import sdpa

    entered = []
    real = sdpa.sdpa_kernel
    monkeypatch.setattr(sdpa, "sdpa_kernel", lambda backends: entered.append(backends) or real(backends))
    impl = implementations.get(name)
    q = torch.randn(1, 2, 17, 16)
    flags = lambda: [  # noqa: E731
        getattr(torch.backends.cuda, f"{b}_sdp_enabled")() for b in ("math", "flash", "mem_efficient", "cudnn")
    ]
    before = flags()
    with impl.session():
        ops = aten_ops(lambda: [impl(q, q, q, causal=causal) for causal in (False, True, False)])
    assert kernel in ops
    assert {"aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_flash_attention_for_cpu"} - ops
    assert len(entered) == 1
    assert flags() == before  # PyTorch's own choice is back once the session ends
    impl(q, q, q)  # outside a session a call still forces its backend, itself
    assert len(entered) == 2


def test_every_registered_family_is_one_the_api_accepts():
    from implementations.base import FAMILIES

    assert {implementations.get(name).family for name in implementations.names()} <= set(FAMILIES)
