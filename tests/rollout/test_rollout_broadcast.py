"""Broadcast weight sync (the NCCL transport's tensor path) with real torch.distributed
process groups: gloo on CPU here, NCCL where two CUDA devices exist."""

import pytest
import torch
import torch.multiprocessing as mp


def _worker(rank, backend, init_file, model_dir, out_file):
    """Rank 0 (learner) broadcasts two versions: v5 intact, v6 with a tensor that differs
    from its manifest; rank 1 (generator) receives, verifies, loads, probes."""
    import json

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from raydprm.rollout.sync import (
        WeightSyncError,
        build_manifest,
        check_probe,
        probe_logprobs,
        probe_sequence,
        receive_by_broadcast,
        send_by_broadcast,
    )

    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        learner = AutoModelForCausalLM.from_pretrained(model_dir)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        sd = learner.state_dict()
        # both ranks know the manifests (they travel by RPC in the real transport)
        manifests = {5: build_manifest(sd, 5), 6: build_manifest(sd, 6)}
        probe = probe_sequence(learner.config.vocab_size, 16)
        if rank == 0:
            send_by_broadcast(sd, lambda t: dist.broadcast(t, src=0), device)
            bad = dict(sd)
            bad["transformer.wpe.weight"] = bad["transformer.wpe.weight"] + 1e-3
            send_by_broadcast(bad, lambda t: dist.broadcast(t, src=0), device)
            return
        gen = AutoModelForCausalLM.from_pretrained(model_dir).to(device)  # old weights
        result = {}
        for v, m in manifests.items():
            try:
                stager = receive_by_broadcast(m, lambda b: dist.broadcast(b, src=0), device)
                gen.load_state_dict(dict(stager.complete()))
                result[v] = {"digest_ok": stager.report().digest == m.digest,
                             "probe_diff": check_probe(probe_logprobs(learner, probe),
                                                       probe_logprobs(gen.cpu(), probe), 1e-4, v)}
            except WeightSyncError as e:
                result[v] = {"error": str(e)}
        with open(out_file, "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _run(backend, tiny_policy, tmp_path):
    import json

    out = tmp_path / f"out-{backend}.json"
    mp.spawn(_worker, args=(backend, str(tmp_path / f"init-{backend}"), tiny_policy, str(out)), nprocs=2, join=True)
    return json.loads(out.read_text())


def test_rollout_broadcast_sync_over_gloo(tiny_policy, tmp_path):
    res = _run("gloo", tiny_policy, tmp_path)
    assert res["5"]["digest_ok"] and res["5"]["probe_diff"] < 1e-5
    assert "checksum mismatch on tensor 'transformer.wpe.weight'" in res["6"]["error"]


@pytest.mark.gpu
def test_rollout_broadcast_sync_over_nccl(tiny_policy, tmp_path):
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip(f"NCCL broadcast between two ranks needs 2 CUDA devices; this machine has "
                    f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    res = _run("nccl", tiny_policy, tmp_path)
    assert res["5"]["digest_ok"] and res["5"]["probe_diff"] < 1e-4
    assert "checksum mismatch" in res["6"]["error"]
