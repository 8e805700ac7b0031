"""The CPU levers decided by measurement (mnistlab.cnn.cpu_probe)."""

import os
import subprocess
import sys

import torch

from mnistlab.cnn import cpu_probe
from mnistlab.cnn.model import build_net


def _bf16_allowed_with(env_extra: dict) -> bool:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    env.update(env_extra)
    code = "from mnistlab.cnn.cpu_probe import bf16_allowed; print(bf16_allowed())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_bf16_is_not_chosen_when_the_cpu_is_held_to_avx2(monkeypatch):
    # Held to AVX2 (or oneDNN alone held), bf16 would be emulated: never allowed, whatever the CPU has.
    assert not _bf16_allowed_with({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    caps = torch._C._cpu._get_cpu_capability()
    has_bf16 = bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    native = torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert cpu_probe.bf16_allowed() == (has_bf16 and native)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # AVX-512 without its bf16 instructions
    assert not cpu_probe.bf16_allowed()


def test_probe_times_every_candidate_and_leaves_the_network_and_process_alone():
    net = build_net("conv:4:3,pool:2,flatten,output:10", init="glorot", seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    candidates = [
        cpu_probe.Candidate(True, 2, 2),
        cpu_probe.Candidate(False, 1, 1),
        cpu_probe.Candidate(True, 1, 1),
    ]
    result = cpu_probe.probe(net, (1, 28, 28), 32, candidates, rounds=1, steps=2)
    assert set(result.ms_per_step) == set(candidates) and all(ms > 0 for ms in result.ms_per_step.values())
    fastest = min(result.ms_per_step.values())
    assert result.chosen in candidates and result.ms_per_step[result.chosen] <= 1.03 * fastest
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert net.conv1.conv.weight.is_contiguous()  # the run's network keeps its layout
    assert cpu_probe.probe(net, (1, 28, 28), 32, candidates) is result  # measured once per process
    single = cpu_probe.probe(net, (1, 28, 28), 32, candidates[:1])
    assert single.chosen == candidates[0] and not single.ms_per_step


def test_trainer_levers_record_what_was_measured(tmp_path):
    """float32 on the CPU with --channels-last auto and --threads auto: both layouts and (with
    several cores) one thread against all are timed on the run's network, and the run records it."""
    from conftest import synthetic_arrays
    from mnistlab.cnn import Trainer, resolve_config
    from mnistlab.data import Dataset

    ds = Dataset("synthetic", class_names=tuple("0123456789"), **synthetic_arrays(64, 16))
    cfg = resolve_config(spec="conv:4:3,pool:2,flatten,output:10", epochs=1, batch_size=32, amp="off")
    trainer = Trainer(cfg, ds, tmp_path / "run", progress=False)
    levers = trainer.levers
    assert "channels-last" in levers.measured and "NCHW" in levers.measured
    if torch.get_num_threads() > 1:
        assert "1 thread(s)" in levers.measured
    chosen = cpu_probe.Candidate(levers.channels_last, levers.threads, levers.data_parallel)
    assert chosen.describe() in levers.measured
    assert trainer.net.conv1.conv.weight.is_contiguous(
        memory_format=torch.channels_last if levers.channels_last else torch.contiguous_format
    )
