"""Tiny random-weight diffusers models shared by the tests (seconds on a CPU)."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Teacher samples cached by the tests go to a temporary folder, never the user's cache."""
    previous = os.environ.get("DISTILL_CACHE")
    os.environ["DISTILL_CACHE"] = str(tmp_path_factory.mktemp("distill-cache"))
    yield
    if previous is None:
        os.environ.pop("DISTILL_CACHE")
    else:
        os.environ["DISTILL_CACHE"] = previous


def tiny_unet(num_class_embeds: int | None = None, channels: int = 3):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8, num_class_embeds=num_class_embeds,
    )


def tiny_unet_condition():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, norm_num_groups=4, attention_head_dim=4,
    )


def tiny_dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
                                 num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=4)


def tiny_sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                                 pooled_projection_dim=6, out_channels=4, pos_embed_max_size=16)


def tiny_flux(guidance_embeds: bool = False):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=6,
                                  guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4))


@pytest.fixture(scope="session")
def unet():
    return tiny_unet()
