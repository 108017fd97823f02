"""tinyvit: a Vision Transformer from scratch, down to the last gradient.

    from tinyvit import ViTConfig, ViT
    model = ViT(ViTConfig(), seed=0, dtype=np.float32, backend="numpy")
    model = load_pretrained("ViT-B_16.npz")      # official, timm or tinyvit checkpoints
"""

from .memory import keep_freed_memory
from .threads import quiet_pools

quiet_pools()  # before NumPy loads OpenBLAS (see tinyvit/threads.py)
keep_freed_memory()  # each step reuses the memory of the one before (see tinyvit/memory.py)

from .backend import Backend, default_backend, get_backend, register_backend
from .config import PRESETS, ViTConfig, get_preset
from .model import Normalization, ViT, count_params, init_params, param_shapes
from .pretrained import load_pretrained, save_official

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Backend",
    "Normalization",
    "ViT",
    "ViTConfig",
    "count_params",
    "default_backend",
    "get_backend",
    "get_preset",
    "init_params",
    "load_pretrained",
    "param_shapes",
    "register_backend",
    "save_official",
]
