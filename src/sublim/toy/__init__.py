"""Subliminal learning you can watch in minutes on a CPU: the auxiliary-logit MLP experiment.

Teachers (MLPs with 10 class logits + a few auxiliary logits) learn digits through the class
logits only. Students that share a teacher's random init and imitate only its auxiliary logits,
on uniform noise, learn to classify digits too; students from another init do not. See
Cloud et al. 2025, "Subliminal Learning" (arXiv 2507.14805), the MNIST section.

    sublim toy                                   # embedded 8×8 digits, about a minute
    sublim toy toy-mnist --set data.path=mnist-10k.npz
"""

from sublim.toy.config import ToyConfig, load_toy_config
from sublim.toy.experiment import run_toy

__all__ = ["ToyConfig", "load_toy_config", "run_toy"]
