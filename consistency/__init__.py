"""consistency: consistency models (Song et al. 2023) in PyTorch: CT, iCT, distillation, sampling and editing."""

from .checkpoint import build_model, load_model, model_config, read_checkpoint
from .data import EpochSampler, load_mnist_arrays, make_loader, mnist, mnist_dataset
from .ema import EMA
from .images import save_grid
from .losses import (
    ConsistencyTraining,
    EasyConsistencyTraining,
    ImprovedConsistencyTraining,
    l1_distance,
    l2_distance,
    pseudo_huber_distance,
)
from .model import ConsistencyModel, EDMDenoiser
from .sampling import default_sigmas, sample, sample_multistep, sample_onestep
from .schedule import ct_ema_decay, ct_num_scales, ict_num_scales, karras_sigmas, lognormal_index_probs
from .trainer import ConsistencyTrainer
from .unet import UNet

__version__ = "0.1.0"

__all__ = [
    "ConsistencyModel",
    "ConsistencyTrainer",
    "ConsistencyTraining",
    "EDMDenoiser",
    "EMA",
    "EasyConsistencyTraining",
    "EpochSampler",
    "ImprovedConsistencyTraining",
    "UNet",
    "build_model",
    "ct_ema_decay",
    "ct_num_scales",
    "default_sigmas",
    "ict_num_scales",
    "karras_sigmas",
    "l1_distance",
    "l2_distance",
    "load_mnist_arrays",
    "load_model",
    "lognormal_index_probs",
    "make_loader",
    "mnist",
    "mnist_dataset",
    "model_config",
    "pseudo_huber_distance",
    "read_checkpoint",
    "sample",
    "sample_multistep",
    "sample_onestep",
    "save_grid",
]
