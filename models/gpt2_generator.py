"""Class-conditional GPT-2 generator of EEG epochs.

Tokens are time patches: a trial of n_times samples is `n_times / patch_size` tokens, each token
emitting `patch_size` samples of every channel. Each token's input is Gaussian noise (variance
`noise_variance`) concatenated with a learned class embedding (`condition_size` dims), projected
to `n_embd` and fed through `GPT2Model(inputs_embeds=...)`; GPT-2 adds its learned position
embeddings, so `n_positions` bounds the number of patches. A linear head maps each hidden state
to a (n_chans x patch_size) block, and a short depthwise temporal convolution smooths the seams
between neighbouring patches. Output is in the standardized units of the training data
(data.dataset.Standardizer); the trainer maps it back to volts.

Why time patches and not channels-as-tokens (the original): with 21 channels the sequence would
be 21 tokens carrying 640-sample embeddings, so n_embd would be fixed by the data (not a free
width) and attention would mix electrodes instead of time. Time patches keep n_embd a real model
width, make n_positions mean "how long a trial can be", and let the causal attention carry
rhythm phase from patch to patch.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

from utils.errors import UserError

# GPT-2 keys of the project config passed straight into GPT2Config.
GPT2_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
             "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range")


@dataclass
class GPT2GeneratorConfig:
    n_chans: int
    n_times: int
    patch_size: int = 16
    condition_size: int = 16
    class_count: int = 2
    noise_variance: float = 1.0
    vocab_size: int = 1
    n_positions: int = 64
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02

    @classmethod
    def from_config(cls, cfg: dict, n_chans: int, n_times: int) -> "GPT2GeneratorConfig":
        kw = {k: cfg[k] for k in GPT2_KEYS}
        return cls(n_chans=n_chans, n_times=n_times, patch_size=cfg["gan"]["patch_size"],
                   condition_size=cfg["condition_size"], class_count=cfg["class_count"],
                   noise_variance=cfg["noise_variance"], **kw)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def n_tokens(self) -> int:
        return self.n_times // self.patch_size

    def check(self) -> None:
        if self.n_times % self.patch_size:
            raise UserError(f"config key 'gan.patch_size': {self.patch_size} does not divide the trial length "
                            f"n_times={self.n_times} (data.tmax - data.tmin times sfreq)")
        if self.n_tokens > self.n_positions:
            raise UserError(f"config keys 'n_positions'/'gan.patch_size': a trial is {self.n_tokens} tokens "
                            f"(n_times {self.n_times} / patch_size {self.patch_size}) but n_positions is "
                            f"{self.n_positions}; raise n_positions (and n_ctx) or gan.patch_size")
        if self.n_embd % self.n_head:
            raise UserError(f"config key 'n_head': {self.n_head} does not divide n_embd ({self.n_embd})")


class GPT2Generator(nn.Module):
    def __init__(self, config: GPT2GeneratorConfig):
        super().__init__()
        config.check()
        self.config = config
        # Token ids are never used (inputs_embeds); 0 keeps them inside the 1-token vocabulary.
        gcfg = GPT2Config(**{k: getattr(config, k) for k in GPT2_KEYS}, use_cache=False, bos_token_id=0,
                          eos_token_id=0)
        gcfg._attn_implementation = "sdpa"
        self.transformer = GPT2Model(gcfg)  # random init; nothing is downloaded
        self.class_embedding = nn.Embedding(config.class_count, config.condition_size)
        self.input_proj = nn.Linear(config.n_embd + config.condition_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.n_chans * config.patch_size)
        # Depthwise, so each channel keeps its own spectrum; initialised to identity.
        self.smooth = nn.Conv1d(config.n_chans, config.n_chans, 9, padding=4, groups=config.n_chans)
        with torch.no_grad():
            self.smooth.weight.zero_()
            self.smooth.weight[:, 0, 4] = 1.0
            self.smooth.bias.zero_()

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Noise per trial: one n_embd vector per token."""
        return (self.config.n_tokens, self.config.n_embd)

    def sample_noise(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        z = torch.randn((n,) + self.noise_shape, generator=generator)
        return (z * self.config.noise_variance ** 0.5).to(device)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z (B, n_tokens, n_embd) noise, y (B,) class -> (B, n_chans, n_times) standardized units."""
        c = self.config
        cond = self.class_embedding(y)[:, None, :].expand(-1, z.shape[1], -1)
        h = self.transformer(inputs_embeds=self.input_proj(torch.cat([z, cond], dim=-1))).last_hidden_state
        x = self.head(h).view(z.shape[0], c.n_tokens, c.n_chans, c.patch_size)
        x = x.permute(0, 2, 1, 3).reshape(z.shape[0], c.n_chans, c.n_times)
        return self.smooth(x)
