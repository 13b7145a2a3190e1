"""consistency: consistency models (Song et al. 2023) in PyTorch: CT, iCT, distillation, sampling and editing."""

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
from .checkpoint import build_model, load_model, model_config, read_checkpoint
from .trainer import ConsistencyTrainer
from .unet import UNet

__version__ = "0.1.0"
