"""consistency: consistency models (Song et al. 2023) in PyTorch: CT, iCT, ECT, distillation, sampling and editing."""

from . import editing, methods, presets, recipe
from .checkpoint import Checkpoint, build_model, load_model, load_weights, model_spec, read_checkpoint
from .data import (
    EpochSampler,
    image_folder_dataset,
    imagenet9_dataset,
    load_mnist_arrays,
    make_loader,
    mnist,
    mnist_dataset,
)
from .ema import EMA
from .images import save_grid, to_pil
from .methods import (
    METHODS,
    ConsistencyDistillation,
    ConsistencyTraining,
    ContinuousConsistencyDistillation,
    EasyConsistencyTraining,
    EDMLoss,
    ImprovedConsistencyTraining,
    MeanFlow,
    Method,
    MethodOutput,
    SimplifiedConsistencyTraining,
    build_method,
    l1_distance,
    l2_distance,
    pseudo_huber_distance,
)
from .model import ConsistencyModel, EDMDenoiser, MeanFlowModel
from .options import TrainerOptions
from .presets import PRESETS, Preset
from .recipe import RunConfig, build_trainer
from .runtime import TrainingInterrupted
from .sampling import SAMPLERS, consistency_sampler, default_sigmas, generate, sample
from .schedule import ct_ema_decay, ct_num_scales, ict_num_scales, karras_sigmas, lognormal_index_probs
from .solvers import edm_heun
from .trainer import ConsistencyTrainer
from .unet import UNet

__version__ = "0.3.1"

__all__ = [
    "METHODS",
    "PRESETS",
    "SAMPLERS",
    "Checkpoint",
    "ContinuousConsistencyDistillation",
    "MeanFlow",
    "MeanFlowModel",
    "SimplifiedConsistencyTraining",
    "ConsistencyDistillation",
    "ConsistencyModel",
    "ConsistencyTrainer",
    "ConsistencyTraining",
    "EDMDenoiser",
    "EDMLoss",
    "EMA",
    "EasyConsistencyTraining",
    "EpochSampler",
    "ImprovedConsistencyTraining",
    "Method",
    "MethodOutput",
    "Preset",
    "RunConfig",
    "TrainerOptions",
    "UNet",
    "build_method",
    "build_model",
    "build_trainer",
    "consistency_sampler",
    "ct_ema_decay",
    "ct_num_scales",
    "default_sigmas",
    "edm_heun",
    "editing",
    "generate",
    "ict_num_scales",
    "image_folder_dataset",
    "imagenet9_dataset",
    "karras_sigmas",
    "l1_distance",
    "l2_distance",
    "load_mnist_arrays",
    "load_model",
    "load_weights",
    "lognormal_index_probs",
    "make_loader",
    "methods",
    "mnist",
    "mnist_dataset",
    "model_spec",
    "presets",
    "recipe",
    "pseudo_huber_distance",
    "read_checkpoint",
    "sample",
    "save_grid",
    "to_pil",
    "TrainingInterrupted",
]
