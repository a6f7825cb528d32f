"""The vLLM plugin that lets spawned CPU workers use AMX (without it: SIGILL at the first bf16 forward)."""

from __future__ import annotations

from importlib.metadata import entry_points

from xtallm.llm.vllm_plugin import enable_cpu_amx


def test_registered_as_a_general_plugin_that_vllm_loads():
    found = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    assert "xtallm_cpu_amx" in found, "pip install -e . registers the entry point (pyproject.toml)"
    assert found["xtallm_cpu_amx"].load() is enable_cpu_amx


def test_the_plugin_runs_twice_without_error():
    # vLLM loads general plugins once per process but says they must survive being loaded again
    enable_cpu_amx()
    enable_cpu_amx()
