"""CUDA paths (skipped without a GPU; benchmarks/gpu_check.sh runs them on one): trainer steps in fp32 and bf16,
channels-last, the device-side skip of non-finite steps, torch.compile, samplers across devices, DDP over NCCL."""

import os

import pytest
import torch
from torch.utils.data import TensorDataset

from consistency import (
    ConsistencyTrainer,
    ConsistencyTraining,
    EDMLoss,
    ImprovedConsistencyTraining,
    generate,
    make_loader,
)
from tests.conftest import randomize_, synthetic_images, tiny_model, tiny_unet
from tests.test_trainer import recording

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def cuda_trainer(method=None, dropout=0.1, **kw):
    loader = make_loader(TensorDataset(synthetic_images(32), torch.arange(32) % 3), batch_size=8)
    model = kw.pop("model", None) or randomize_(tiny_model(num_classes=3, dropout=dropout))
    options = dict(total_steps=8, device="cuda", progress=False, sample_every=0, ema_decay=0.9, lr=1e-3)
    return ConsistencyTrainer(model, loader, method=method or ImprovedConsistencyTraining(), **{**options, **kw})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_steps_on_the_gpu(precision, channels_last, tmp_path):
    full = cuda_trainer(precision=precision, channels_last=channels_last)
    full.train(8)
    trainer = cuda_trainer(precision=precision, channels_last=channels_last, out_dir=tmp_path)
    trainer.train(4)
    assert all(torch.isfinite(torch.tensor(trainer.history["loss"])))
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert next(trainer.model.parameters()).dtype == torch.float32  # autocast: the weights stay fp32
    # (a trainer seeds the global RNGs when it is built: build the resumed one last, right before it trains)
    resumed = cuda_trainer(precision=precision, channels_last=channels_last)
    resumed.load(tmp_path / "checkpoint.pt")
    resumed.train(4)
    # The resumed run draws the same noise (CUDA RNG state restored); cuDNN's convolution backward may sum in another
    # order, so the losses agree to rounding rather than bit for bit. Other noise would differ by far more.
    torch.testing.assert_close(torch.tensor(resumed.history["loss"]), torch.tensor(full.history["loss"]), rtol=1e-3,
                               atol=1e-5)


def test_nonfinite_steps_are_skipped_on_the_device():
    trainer = cuda_trainer(dropout=0.0)
    assert trainer._fused  # fused Adam: the skip needs no host sync
    x = synthetic_images(8)
    labels = torch.zeros(8, dtype=torch.long)
    trainer.step((x, labels))
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    ema = [p.detach().clone() for p in trainer.ema.module.parameters()]
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite at step 2"):
        trainer.step((x, labels))
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(ema, trainer.ema.module.parameters()))


def test_a_seed_gives_the_same_images_on_cpu_and_gpu():
    model = randomize_(tiny_model(num_classes=3)).eval()
    model.image_shape = (1, 8, 8)
    cpu = generate(model, 6, steps=2, seed=3)
    gpu = generate(model.cuda(), 6, steps=2, seed=3)
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)  # noise drawn on the CPU generator, then moved
    teacher = EDMLoss().wrap(randomize_(tiny_unet())).eval()
    teacher.image_shape = (1, 8, 8)
    a = generate(teacher, 4, steps=4, sampler="edm", seed=1)
    b = generate(teacher.cuda(), 4, steps=4, sampler="edm", seed=1)
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


def test_compiled_online_and_target_passes_share_dropout_masks():
    method = recording(ConsistencyTraining)()
    trainer = cuda_trainer(method=method, dropout=0.5, compile=True)
    trainer.step(next(iter(trainer.loader)))
    online, target_out = method.seen[0]
    assert (online - target_out).abs().max() < 1e-4  # different masks would differ by order 1


@pytest.mark.parametrize("name", ["ict", "cd", "scm", "meanflow"])
def test_no_host_synchronisation_between_log_lines(name):
    """The steps between two log lines queue work on the GPU and never wait for it: data on the device (a
    DeviceLoader), fused EMAs, the device-side skip, a curriculum's new levels computed on the device."""
    from consistency import EDMDenoiser, build_method
    from consistency.data import ImageTensors, resumable_batches

    teacher = EDMDenoiser(randomize_(tiny_unet(time_scale=1.0, num_classes=3))).eval().cuda() if name == "cd" else None
    method = build_method(name, teacher)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    loader = make_loader(ImageTensors(images, torch.arange(64) % 3), batch_size=8, device="cuda")
    model = method.wrap(randomize_(tiny_unet(num_classes=3, dropout=0.1, **method.net_options)))
    trainer = ConsistencyTrainer(model, loader, method=method, total_steps=40, device="cuda", progress=False,
                                 precision="bf16", log_every=20)
    batches = resumable_batches(loader, 0)
    trainer._train_step(next(batches))
    trainer._flush()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(12):  # across an epoch's end and a change of iCT's N (at step 10 of 40)
            trainer._train_step(next(batches))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(trainer._flush()) == 12


def test_ddp_over_nccl_with_one_process(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        trainer = cuda_trainer(out_dir=tmp_path / "run")
        assert isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel)
        trainer.train(3)
        assert trainer.step_count == 3 and (tmp_path / "run" / "checkpoint.pt").is_file()
    finally:
        dist.destroy_process_group()
    os.environ.pop("RANK", None)
