"""Optional: timm's own VisionTransformer as the reference for loading its checkpoints.

Runs only where timm, torch and safetensors are installed (none is a tinyvit
dependency; `pip install torch==2.13.0 timm safetensors`), and is skipped,
visibly, elsewhere. The suite's required checks do not need it: they compare
with an independent NumPy implementation (tests/test_pretrained.py).
"""

import numpy as np
import pytest

from tinyvit import load_pretrained

try:
    import safetensors.torch as safetensors_torch
    import timm.models.vision_transformer as timm_vit
    import torch
except (ImportError, RuntimeError) as e:  # not installed, or an install that cannot import (a torchvision built for another torch)
    pytest.skip(f"optional reference timm/torch/safetensors not importable ({type(e).__name__}: {e}); "
                "pip install torch==2.13.0 timm safetensors", allow_module_level=True)


def test_a_timm_model_with_random_weights_gives_its_logits(tmp_path):
    """float32 on both sides, a few thousand multiply-adds deep: within 1e-5 of the largest logit."""
    torch.manual_seed(0)
    model = timm_vit.VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=1.5,
                                       num_classes=7).eval()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = model(x).numpy()
    got = load_pretrained(tmp_path / "model.safetensors", backend="numpy", heads=4).forward(x.permute(0, 2, 3, 1).numpy())
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
