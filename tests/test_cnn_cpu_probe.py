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
    by_work = cpu_probe.probe(net, (1, 28, 28), 32, candidates[1:], rounds=1, steps=1, work=True)
    assert by_work.work and "ms CPU" in by_work.describe()
    assert all(ms > 0 for ms in by_work.ms_per_step.values())
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
    chosen = cpu_probe.Candidate(
        levers.channels_last, levers.threads, levers.data_parallel, tuple(sorted(levers.winograd.items()))
    )
    assert chosen.describe() in levers.measured
    assert trainer.net.conv1.conv.weight.is_contiguous(
        memory_format=torch.channels_last if levers.channels_last else torch.contiguous_format
    )


SPEC = "conv:8:3,pool:2,conv:8:3,pool:2,conv:8:3,flatten,output:10"  # conv2, conv3: Winograd candidates


def _dataset():
    from conftest import synthetic_arrays
    from mnistlab.data import Dataset

    return Dataset("synthetic", class_names=tuple("0123456789"), **synthetic_arrays(96, 16))


def _config(**how):
    from mnistlab.cnn import resolve_config

    # the layout and Winograd are left to the probe (nothing pinned); RMSprop, whose update
    # magnifies rounding differences in near-zero gradients into whole steps
    return resolve_config(spec=SPEC, epochs=2, batch_size=32, threads=1, seed=2, **{"amp": "off", **how})


def _weights(run):
    from mnistlab.runs import load_npz

    return load_npz(run / "weights.npz")


def test_same_command_same_seed_same_weights_through_the_machine_record(tmp_path, isolated_home):
    """The layout and Winograd choice is timed once per machine and recorded under the mnistlab
    home; later runs (here: the in-process cache emptied, as in a new process) reuse it, so two
    runs of one command give identical weights however the timings of the second would have come out."""
    import json

    import numpy as np

    from mnistlab.cnn import Trainer

    first = Trainer(_config(), _dataset(), tmp_path / "a", progress=False)
    first.run()
    record = isolated_home / cpu_probe.RECORD
    entries = json.loads(record.read_text())
    (key, choice), = entries.items()
    assert json.loads(key)["cpu"] == cpu_probe.machine()["cpu"] and SPEC in key
    assert choice["channels_last"] == first.levers.channels_last
    assert dict(map(tuple, choice["winograd"])) == first.levers.winograd
    assert "channels-last" in first.levers.measured and "NCHW" in first.levers.measured
    cpu_probe._cache.clear()
    second = Trainer(_config(), _dataset(), tmp_path / "b", progress=False)
    assert "recorded on this machine" in second.levers.measured
    second.run()
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # the record decides, not a new measurement: flip it and a new run follows it
    choice["channels_last"] = not choice["channels_last"]
    choice["winograd"] = []
    record.write_text(json.dumps({key: choice}))
    cpu_probe._cache.clear()
    third = Trainer(_config(), _dataset(), tmp_path / "c", progress=False)
    assert third.levers.channels_last == choice["channels_last"] and not third.levers.winograd
    record.write_text("not json")  # an unreadable record is measured afresh and rewritten
    cpu_probe._cache.clear()
    Trainer(_config(), _dataset(), tmp_path / "d", progress=False)
    assert json.loads(record.read_text())


def test_resume_keeps_the_levers_the_run_recorded(tmp_path, isolated_home):
    """A resumed run takes its arithmetic from its own manifest, not from the machine's record
    (which may have changed since), and ends at the weights of the undisturbed run."""
    import json

    import numpy as np

    from mnistlab.callbacks import StopTraining
    from mnistlab.cnn import Trainer, resume
    from mnistlab.runs import read_manifest

    whole = Trainer(_config(), _dataset(), tmp_path / "whole", progress=False)
    whole.run()

    def stop(_row):
        raise StopTraining

    Trainer(_config(), _dataset(), tmp_path / "cut", progress=False, epoch_callback=stop).run()
    record = isolated_home / cpu_probe.RECORD
    entries = json.loads(record.read_text())
    for choice in entries.values():
        choice["channels_last"] = not choice["channels_last"]
        choice["winograd"] = []
    record.write_text(json.dumps(entries))
    cpu_probe._cache.clear()
    result = resume(tmp_path / "cut", _dataset(), progress=False)
    assert result.state == "complete" and len(result.history) == 2
    manifest = read_manifest(tmp_path / "cut")
    assert manifest["levers"]["channels_last"] == whole.levers.channels_last
    assert manifest["levers"]["winograd"] == whole.levers.winograd
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_split_parts_give_the_same_gradients_on_one_thread_or_several():
    """The batch's partition fixes the arithmetic; whether its parts run on threads of their own
    or one after another (the probe's choice under load) changes nothing, bit for bit."""
    import torch.nn.functional as F

    from mnistlab.cnn.levers import SplitBatch

    net = build_net(SPEC, init="glorot", seed=0)
    params = list(net.parameters())
    x = torch.rand(32, 1, 28, 28)
    y = torch.arange(32) % 10

    def part(xp, yp, batch):
        logits = net(xp)
        loss = F.cross_entropy(logits, yp) * (len(yp) / batch)
        return list(torch.autograd.grad(loss, params)), loss.detach(), (logits.argmax(1) == yp).sum()

    splits = [SplitBatch(2, threads=2), SplitBatch(2, threads=1)]
    assert [split.concurrent for split in splits] == [True, False]
    results = []
    for split in splits:
        results.append(split.run(part, x, y))
        split.close()
    (grads_a, parts_a), (grads_b, parts_b) = results
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)
    assert all(torch.equal(p, q) for pa, pb in zip(parts_a, parts_b) for p, q in zip(pa, pb))


def test_under_bf16_autocast_the_one_pass_kernels_are_timed_and_winograd_is_not(tmp_path, isolated_home):
    """The one-pass first block computes in float32 under autocast too, and the one-pass pooling and
    ReLU takes bf16 maps, so a bf16 run times both on its network and records the choice; Winograd
    (float32 transforms around float32 products) is not a bf16 candidate."""
    import json

    import pytest

    from mnistlab.cnn import Trainer, native

    if native.library() is None:
        pytest.skip("no C compiler to build the kernel")
    trainer = Trainer(_config(amp="on"), _dataset(), tmp_path / "run", progress=False)
    levers = trainer.levers
    assert levers.amp_dtype == "bfloat16" and not levers.winograd
    assert "conv1 one-pass conv+pool" in levers.measured and "Winograd" not in levers.measured
    assert "conv2 one-pass pool+ReLU" in levers.measured
    (key, choice), = json.loads((isolated_home / cpu_probe.RECORD).read_text()).items()
    key = json.loads(key)
    assert key["autocast"] == "torch.bfloat16" and key["pool_relu"] == ["conv1", "conv2"]
    assert choice["pooled_conv"] == levers.pooled_conv and trainer.net.pooled_conv == set(levers.pooled_conv)
    assert choice["pool_relu"] == levers.pool_relu and trainer.net.pool_relu == set(levers.pool_relu)
    assert not set(levers.pool_relu) & set(levers.pooled_conv)  # the one-pass first block pools itself
    result = trainer.run()
    assert result.state == "complete" and all(h["loss"] == h["loss"] for h in result.history)
