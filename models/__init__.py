"""Networks. `build_classifier` picks a CNN classifier by name; the GAN's networks live beside it."""
from __future__ import annotations

from torch import nn

from utils.errors import UserError

ARCHITECTURES = ("eegnet", "shallow", "stft")


def build_classifier(architecture: str, n_chans: int, n_times: int, sfreq: float, ch_names: list[str],
                     n_outputs: int = 2, dropout: float = 0.5) -> nn.Module:
    """A classifier taking standardized trials (B, n_chans, n_times) to logits (B, n_outputs).

    Every architecture also has `features(x) -> (B, F)`, the penultimate representation.
    """
    if len(ch_names) != n_chans:
        raise UserError(f"classifier: {len(ch_names)} channel names for {n_chans} channels")
    if architecture == "eegnet":
        from models.eegnet import EEGNet

        return EEGNet(n_chans, n_times, sfreq, n_outputs, dropout)
    if architecture == "shallow":
        from models.shallow_convnet import ShallowConvNet

        return ShallowConvNet(n_chans, n_times, sfreq, n_outputs, dropout)
    if architecture == "stft":
        from models.stft_cnn import STFTCNN

        return STFTCNN(n_chans, n_times, sfreq, ch_names, n_outputs, dropout)
    raise UserError(f"config key 'classifier.architecture': {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
