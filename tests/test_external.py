"""Implementations declared by other installed packages (entry points), built and run like built-ins."""

from __future__ import annotations

import textwrap

import pytest

import implementations
from suite.cli import main
from suite.results.files import load
from tests.plugin_package import write_package

MODULE = textwrap.dedent('''
    import torch
    from implementations import Implementation, Option

    class ScaledSdpa(Implementation):
        """softmax attention through SDPA; `scale` multiplies the output (1 is correct)."""
        options = {"scale": Option(default=1.0, parse=float, help="scale: a number")}

        def __call__(self, q, k, v, *, causal=False):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return out * self.settings["scale"]

    def not_an_implementation(name, **options):
        return "attention"

    class Crashing(Implementation):
        def __init__(self, name, **options):
            raise RuntimeError("no GPU context")

    class Moody(Implementation):
        def supports(self, case):
            raise RuntimeError("cannot tell")

    def attention(q, k, v, *, causal=False):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    NOT_CALLABLE = "attention"
''')

ENTRY_POINTS = {
    "scaled-sdpa": "plugged_attention:ScaledSdpa",
    "missing": "plugged_attention:NoSuchClass",
    "wrong-type": "plugged_attention:not_an_implementation",
    "crashing": "plugged_attention:Crashing",
    "moody": "plugged_attention:Moody",
    "plain-function": "plugged_attention:attention",
    "not-callable": "plugged_attention:NOT_CALLABLE",
    "sdpa": "plugged_attention:ScaledSdpa",  # a built-in's name: ignored
}


@pytest.fixture
def installed_package(tmp_path, monkeypatch):
    """A package on sys.path with a dist-info that declares ENTRY_POINTS, as `pip install` would leave it."""
    write_package(tmp_path, "plugged_attention", MODULE, ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(implementations, "_declared", None)  # look again, with the package installed
    return tmp_path


def test_declared_implementations_follow_the_built_ins(installed_package):
    names = implementations.names()
    assert names[: len(implementations.REGISTRY)] == list(implementations.REGISTRY)
    assert names[len(implementations.REGISTRY) :] == [
        "scaled-sdpa",
        "missing",
        "wrong-type",
        "crashing",
        "moody",
        "plain-function",
        "not-callable",
    ]
    assert implementations.get("sdpa").__class__.__name__ == "SdpaAttention"
    [ignored] = implementations.ignored_declarations()
    assert ignored.startswith("sdpa: plugged_attention:ScaledSdpa (from plugged-attention) ignored")


def test_broken_declarations_say_why_they_cannot_run(installed_package):
    missing = implementations.get("missing", scale="2")
    assert missing.family == "unavailable"
    [reason] = missing.supports(None)
    assert "plugged_attention:NoSuchClass (from plugged-attention) failed to load: AttributeError" in reason
    [reason] = implementations.get("wrong-type").supports(None)
    assert "built a str, not an implementations.Implementation: it should point at" in reason
    [reason] = implementations.get("crashing").supports(None)
    assert "failed to build: RuntimeError: no GPU context" in reason
    with pytest.raises(ValueError, match="scale='x' is not valid"):
        implementations.get("scaled-sdpa", scale="x")


def test_a_declared_plain_function_says_what_the_entry_point_should_name(installed_package):
    """An attention function is not a factory: calling it with a name failed as a bare TypeError."""
    [reason] = implementations.get("plain-function").supports(None)
    assert reason == (
        "entry point plugged_attention:attention (from plugged-attention) names attention(q, k, v, *, "
        "causal=False), which cannot be called as factory(name, **options): it should point at an "
        "implementations.Implementation subclass, or at a factory(name, **options) returning one; a "
        "plain attention function (q, k, v, *, causal) -> out becomes one in a factory that returns "
        "suite.api.as_implementation(function, name)"
    )
    [reason] = implementations.get("not-callable").supports(None)
    assert reason.startswith(
        "entry point plugged_attention:NOT_CALLABLE (from plugged-attention) names a str, which "
        "is not callable: it should point at an implementations.Implementation subclass"
    )


def test_run_checks_and_records_declared_implementations(installed_package, tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    argv = [
        "run",
        "--device",
        "cpu",
        "--impl",
        "scaled-sdpa,scaled-sdpa:scale=1.5,missing,moody",
        "--seq-len",
        "33",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--batch",
        "1",
        "--dtype",
        "float32",
        "--mode",
        "fwd",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    rows = load(out).set_index("impl")
    assert rows.loc["scaled-sdpa", "status"].tolist() == ["ok", "ok"]  # dense and causal
    assert rows.loc["scaled-sdpa:scale=1.5", "status"].tolist() == [
        "mismatch",
        "mismatch",
    ]  # the reference check applies
    assert set(rows.loc["missing", "status"]) == {"unsupported"}
    assert "failed to load" in rows.loc["missing", "reason"].iloc[0]
    assert set(rows.loc["moody", "status"]) == {"error"} and "cannot tell" in rows.loc["moody", "reason"].iloc[0]


def test_list_shows_declared_and_ignored_entries(installed_package, capsys):
    assert main(["list", "--device", "cpu"]) == 0
    listing = capsys.readouterr().out
    assert "scaled-sdpa" in listing and "options (scaled-sdpa:KEY=VALUE): scale=1.0" in listing
    assert "missing          unavailable cannot run: entry point" in listing
    assert "declared by plugged_attention:ScaledSdpa (from plugged-attention)" in listing
    assert implementations.origin("sdpa") is None and implementations.origin("no-such-name") is None
    assert "ignored entry point sdpa:" in listing
    assert "moody            exact      cannot run: supports() raised RuntimeError: cannot tell" in listing
