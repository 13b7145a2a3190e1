"""DDP on CPU with the gloo backend and two processes, as torchrun would run it."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from consistency import ConsistencyTrainer, ImprovedConsistencyTraining, make_loader
from tests.conftest import ReconstructionLoss, randomize_, synthetic_images, tiny_model


def _trainer(rank, world, loss, out_dir=None):
    data = TensorDataset(synthetic_images(32, seed=1))
    loader = make_loader(data, batch_size=8 // world, seed=0, rank=rank, world_size=world)
    # Random weights everywhere: with the zero-initialised output layers many gradients start at ~0, where Adam turns
    # float rounding (summation order differs across ranks) into full-size steps of either sign.
    model = randomize_(tiny_model(seed=rank), seed=rank)
    return ConsistencyTrainer(model, loader, loss=loss, lr=1e-3, total_steps=4, device="cpu",
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
        exact = torch.tensor(int(same and same_ema))
        dist.all_reduce(exact, op=dist.ReduceOp.MIN)  # every rank must have continued its own run
        if rank == 0:
            torch.save({"ranks": gathered, "ema": ema, "ict": ict_all, "resume_exact": bool(exact)},
                       os.path.join(out, "result.pt"))
    finally:
        dist.destroy_process_group()


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
    assert len(ckpt["rng_cpu"]) == 2 and not torch.equal(ckpt["rng_cpu"][0], ckpt["rng_cpu"][1])
