"""DDP on CPU with the gloo backend and two processes, as torchrun would run it."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from consistency import (
    ConsistencyTrainer,
    ImprovedConsistencyTraining,
    Method,
    MethodOutput,
    UNet,
    build_method,
    make_loader,
)
from tests.conftest import ReconstructionLoss, randomize_, synthetic_images, tiny_model


class LearnedScale(nn.Module, Method):
    name = "learned-scale"

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))

    def __call__(self, model, target, x, class_labels=None, *, step, total_steps):
        noisy = x + torch.randn_like(x)  # rank-dependent noise: the ranks' gradients differ
        err = (model(noisy, torch.ones(len(x))) - x).square().flatten(1).mean(1)
        return MethodOutput(err * self.log_scale.exp() - self.log_scale)


def _trainer(rank, world, loss, out_dir=None, total_steps=4):
    data = TensorDataset(synthetic_images(32, seed=1))
    loader = make_loader(data, batch_size=8 // world, seed=0, rank=rank, world_size=world)
    # Random weights everywhere: with the zero-initialised output layers many gradients start at ~0, where Adam turns
    # float rounding (summation order differs across ranks) into full-size steps of either sign.
    model = randomize_(tiny_model(seed=rank), seed=rank)
    return ConsistencyTrainer(model, loader, method=loss, lr=1e-3, total_steps=total_steps, device="cpu",
                              progress=False, sample_every=0, out_dir=out_dir, seed=0)


def _worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = _trainer(rank, world, ReconstructionLoss())
        trainer.train()
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        ema = torch.cat([p.detach().flatten() for p in trainer.ema.module.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        ict = _trainer(rank, world, ImprovedConsistencyTraining(), out_dir=os.path.join(out, "ict"))
        ict.train()
        ict_flat = torch.cat([p.detach().flatten() for p in ict.ema.module.parameters()])
        ict_all = [torch.zeros_like(ict_flat) for _ in range(world)]
        dist.all_gather(ict_all, ict_flat)
        # Resume under torchrun: 2 steps, save, a fresh trainer loads and does 2 more = the 4-step run, bit for bit.
        first = _trainer(rank, world, ImprovedConsistencyTraining(), out_dir=os.path.join(out, "resume"))
        first.train(2)
        resumed = _trainer(rank, world, ImprovedConsistencyTraining())
        resumed.load(os.path.join(out, "resume", "checkpoint.pt"))
        resumed.train(2)
        same = all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), ict.model.parameters()))
        same_ema = all(torch.equal(a, b) for a, b in zip(resumed.ema.module.parameters(), ict.ema.module.parameters()))
        # A method with parameters of its own: DDP averages the model's gradients only; the trainer averages the
        # method's, so every rank's copy moves identically (rank-dependent noise makes the local gradients differ).
        scale = LearnedScale()
        _trainer(rank, world, scale).train()
        method_params = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(method_params, scale.log_scale.detach().clone())
        # The continuous-time methods take JVPs on the plain module (no gradient) and their gradient pass through DDP:
        # both ranks must end with the same weights. (A gradient through the unwrapped module would skip the
        # all-reduce and, with rank-dependent noise, the replicas would drift apart.)
        continuous = {}
        for name in ("scm", "meanflow"):
            method = build_method(name, **({"warmup": 2} if name == "scm" else {}))
            net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, **method.net_options)
            model = method.wrap(randomize_(net, seed=rank))  # different on each rank: DDP broadcasts rank 0's
            loader = make_loader(TensorDataset(synthetic_images(32, seed=1)), batch_size=4, seed=0, rank=rank,
                                 world_size=world)
            trainer = ConsistencyTrainer(model, loader, method=method, lr=1e-3, total_steps=3, device="cpu",
                                         progress=False, sample_every=0, seed=0)
            start = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
            trainer.train()
            flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
            both = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(both, flat)
            continuous[name] = (bool(torch.equal(both[0], both[1])), float((flat - start).norm()))
        exact = torch.tensor(int(same and same_ema))
        dist.all_reduce(exact, op=dist.ReduceOp.MIN)  # every rank must have continued its own run
        if rank == 0:
            torch.save({"ranks": gathered, "ema": ema, "ict": ict_all, "resume_exact": bool(exact),
                        "method_params": [float(p) for p in method_params], "continuous": continuous},
                       os.path.join(out, "result.pt"))
        dist.barrier()  # no rank tears gloo down while its peer is still in a collective
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's worker threads can abort the process while Python tears down
    # (SIGABRT "terminate called without an active exception", seen once on a loaded 2-core CI machine; see
    # pytorch/pytorch#179291). The result is already on disk and every check above ran.
    os._exit(0)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "result.pt")
    rank0, rank1 = result["ranks"]
    assert torch.equal(rank0, rank1)  # DDP keeps the replicas identical
    assert torch.equal(result["ict"][0], result["ict"][1])  # the sampling EMA too, with per-rank noise

    single = _trainer(0, 1, ReconstructionLoss())
    single.train()
    flat = torch.cat([p.detach().flatten() for p in single.model.parameters()])
    start = torch.cat([p.detach().flatten() for p in randomize_(tiny_model(seed=0), seed=0).parameters()])
    assert (flat - start).abs().max() > 1e-3  # training moved the weights
    # Two ranks of 4 = one process of 8, up to float summation order (which Adam amplifies where a gradient is ~0):
    # a wrong shard or a missing average would differ by as much as the training moved the weights.
    assert (rank0 - flat).norm() < 0.01 * (flat - start).norm()

    assert result["resume_exact"]  # a resumed two-process run continues the same run
    ckpt = torch.load(tmp_path / "ict" / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng"]["cpu"]) == 2 and not torch.equal(ckpt["rng"]["cpu"][0], ckpt["rng"]["cpu"][1])
    assert result["method_params"][0] != 0 and result["method_params"][0] == result["method_params"][1]
    for name, (identical, moved) in result["continuous"].items():
        assert identical and moved > 0, name


def _budget_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if rank == 1:  # a clock running 10x fast: were it asked, it would stop this rank after 0.6 s
            real = time.monotonic
            t0 = real()
            time.monotonic = lambda: t0 + 10 * (real() - t0)
        trainer = _trainer(rank, world, ImprovedConsistencyTraining(), total_steps=None)
        began = time.perf_counter()
        trainer.train(minutes=0.1)  # 6 s
        seconds = time.perf_counter() - began
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        both = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(both, flat)
        torch.save({"step": trainer.step_count, "total_steps": trainer.total_steps, "seconds": seconds,
                    "same_weights": bool(torch.equal(both[0], both[1]))}, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)


def test_a_time_budget_stops_every_rank_at_the_same_step(tmp_path):
    """Under DDP a rank that stopped on its own clock would leave the others waiting in a collective for ever: rank
    0's clock decides for all (the fitted step count too), even when the ranks' clocks disagree."""
    context = mp.spawn(_budget_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish: one stopped while the other waited in a collective")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert rank0["step"] == rank1["step"] and rank0["total_steps"] == rank1["total_steps"]
    assert rank0["same_weights"] and rank1["same_weights"]
    assert rank0["seconds"] > 2.0  # rank 0's budget (6 s; gloo on two loaded cores can stall a step for seconds)


def test_one_process_under_torchrun_trains_with_ddp(tmp_path):
    # torchrun --nproc_per_node=1: the process group exists, so the model is wrapped (gloo here, NCCL on a GPU).
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        trainer = _trainer(0, 1, ImprovedConsistencyTraining(), out_dir=str(tmp_path / "run"))
        assert isinstance(trainer.train_model, DistributedDataParallel)
        trainer.train()
        assert trainer.step_count == 4 and (tmp_path / "run" / "checkpoint.pt").is_file()
    finally:
        dist.destroy_process_group()
