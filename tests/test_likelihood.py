"""Likelihood bounds: the IWAE bound and the ELBO from log importance weights, checked on a linear-Gaussian model
whose marginal likelihood is exact, and the VAE family's log weights and decoder densities against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, MultivariateNormal, Normal

from vaegen.config import LossConfig, ModelConfig, TestConfig
from vaegen.errors import ConfigError
from vaegen.evaluation.likelihood import bits_per_dim, importance_weighted_bounds
from vaegen.models.losses import MSE_SIGMA, DecoderLikelihood
from vaegen.models.vae import VAE, ConvVAE


def test_the_bounds_of_known_weights():
    log_weights = torch.tensor([[math.log(1.0), 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    iwae, elbo = importance_weighted_bounds(log_weights)
    assert iwae.tolist() == pytest.approx([math.log(2.0), 0.0]) and elbo.tolist() == pytest.approx([math.log(3.0) / 2, 0.0])
    # logsumexp: weights of e^-2000 do not underflow to log 0
    iwae, elbo = importance_weighted_bounds(torch.tensor([[-2000.0], [-2001.0]], dtype=torch.float64))
    assert iwae.item() == pytest.approx(-2000.0 + math.log((1 + math.exp(-1)) / 2)) and elbo.item() == -2000.5
    assert bits_per_dim(math.log(2.0) * 3 * 16 * 16, 3 * 16 * 16) == pytest.approx(1.0)


class LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(Wz + b, σ² I_D): x ~ N(b, WWᵀ + σ² I) and the posterior is Gaussian, both exact."""

    def __init__(self, dims: int = 3, latent: int = 2, sigma: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(dims, latent, generator=g, dtype=torch.float64)
        self.b = torch.randn(dims, generator=g, dtype=torch.float64)
        self.sigma = sigma

    def log_marginal(self, x):
        covariance = self.W @ self.W.T + self.sigma**2 * torch.eye(len(self.b), dtype=torch.float64)
        return MultivariateNormal(self.b, covariance).log_prob(x)

    def posterior(self, x):
        precision = torch.eye(self.W.shape[1], dtype=torch.float64) + self.W.T @ self.W / self.sigma**2
        covariance = torch.linalg.inv(precision)
        return MultivariateNormal((covariance @ self.W.T @ (x - self.b).T).T / self.sigma**2, covariance)

    def log_weights(self, x, q, k, generator):
        """[k, N] log p(x | z) + log p(z) - log q(z | x), z ~ q (drawn as q's mean + its Cholesky factor · ε)."""
        noise = torch.randn(k, *q.mean.shape, generator=generator, dtype=torch.float64)
        z = q.mean + (q.scale_tril @ noise.unsqueeze(-1)).squeeze(-1)
        log_px = Normal(z @ self.W.T + self.b, self.sigma).log_prob(x).sum(-1)
        return log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z)


def test_with_the_exact_posterior_every_bound_is_the_marginal_likelihood():
    model = LinearGaussian()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + model.b
    for k in (1, 7):
        iwae, elbo = importance_weighted_bounds(model.log_weights(x, model.posterior(x), k, torch.Generator().manual_seed(k)))
        assert torch.allclose(iwae, model.log_marginal(x), atol=1e-10) and torch.allclose(elbo, model.log_marginal(x), atol=1e-10)


def test_with_a_poorer_posterior_the_bound_rises_toward_the_marginal_likelihood_with_k():
    model = LinearGaussian()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + model.b
    exact = model.posterior(x)
    # mean-field, shifted and too wide: a poorer q
    poor = MultivariateNormal(exact.mean + 0.3, torch.diag_embed(1.5 * exact.covariance_matrix.diagonal(dim1=-2, dim2=-1)))
    log_p = model.log_marginal(x)
    generator = torch.Generator().manual_seed(0)
    means = []
    for k in (1, 4, 16, 64, 256):
        repeats = [importance_weighted_bounds(model.log_weights(x, poor, k, generator)) for _ in range(400)]
        iwae = torch.stack([bound for bound, _ in repeats]).mean(0)
        elbo = torch.stack([estimate for _, estimate in repeats]).mean(0)
        assert (elbo <= iwae + 1e-12).all() and (iwae <= log_p + 0.01).all()  # ELBO ≤ IWAE ≤ log p(x), in expectation
        means.append(iwae)
    gaps = [float((log_p - iwae).mean()) for iwae in means]
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps  # monotone in K
    assert gaps[0] > 0.1 and gaps[-1] < 0.02, gaps


def _tiny_vae(conditional: str) -> ConvVAE:
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=4, widths=[8, 16], conditional=conditional), (16, 16), 3, num_classes=3)
    return model.eval()


@pytest.mark.parametrize("conditional", ["none", "onehot"])
@pytest.mark.parametrize("decoder", [DecoderLikelihood("bernoulli"), DecoderLikelihood("gaussian", 0.2)])
def test_the_vae_log_weights_are_the_hand_computed_ones(conditional, decoder):
    model = _tiny_vae(conditional)
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 2, 1, 1, 0]) if conditional == "onehot" else None
    k = 6
    got = VAE().log_weights(model, x, y, k, torch.Generator().manual_seed(3), decoder, batch_size=1000)
    # by hand: the same draws, torch.distributions' densities, one decode per draw
    with torch.no_grad():
        mu, logvar = model.encode(x, y)
        noise = torch.randn(k, *mu.shape, generator=torch.Generator().manual_seed(3))
        expected = []
        for eps in noise:
            z = mu + eps * (0.5 * logvar).exp()
            logits = model.decode_logits(z, y)
            if decoder.distribution == "bernoulli":
                log_px = Bernoulli(logits=logits, validate_args=False).log_prob(x).flatten(1).sum(1)
            else:
                log_px = Normal(torch.sigmoid(logits), decoder.sigma).log_prob(x).flatten(1).sum(1)
            log_q = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
            expected.append(log_px + Normal(0.0, 1.0).log_prob(z).sum(1) - log_q)
    assert got.shape == (k, 5) and torch.allclose(got, torch.stack(expected), rtol=1e-5, atol=1e-3)
    # decoding one draw at a time gives the same weights (the draws are made first), and the seed fixes them
    again = VAE().log_weights(model, x, y, k, torch.Generator().manual_seed(3), decoder, batch_size=1)
    assert torch.allclose(got, again, rtol=1e-5, atol=1e-3)
    other = VAE().log_weights(model, x, y, k, torch.Generator().manual_seed(4), decoder, batch_size=1000)
    assert not torch.allclose(got, other)


def test_conditional_weights_depend_on_the_label():
    model = _tiny_vae("onehot")
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    a, b = (VAE().log_weights(model, x, torch.tensor(labels), 3, torch.Generator().manual_seed(0), DecoderLikelihood("bernoulli"), 64)
            for labels in ([0, 0], [1, 1]))
    assert not torch.allclose(a, b)


def test_each_reconstruction_loss_names_its_decoder_density():
    model = _tiny_vae("none")
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    logits = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    data = [(x, None)]
    bce = VAE().decoder_likelihood(model, data, LossConfig(recon="bce"), torch.Generator().manual_seed(0))
    assert bce.distribution == "bernoulli" and "not a normalised density" in bce.describe()["note"]
    assert -bce.log_prob(logits, x).sum() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum").item(), rel=1e-5)
    mse = VAE().decoder_likelihood(model, data, LossConfig(recon="mse"), torch.Generator().manual_seed(0))
    assert mse.sigma == MSE_SIGMA and mse.describe()["discretised"] is False
    # the sum of squared errors is the Gaussian NLL at σ = 1/√2 less D/2·log π
    sse = (torch.sigmoid(logits) - x).pow(2).sum().item()
    assert (-mse.log_prob(logits, x).sum()).item() - 4 * 3 * 16 * 16 * 0.5 * math.log(math.pi) == pytest.approx(sse, rel=1e-5)
    # gaussian: σ² the mean squared error of reconstructions from codes drawn as training draws them
    gaussian = VAE().decoder_likelihood(model, data, LossConfig(recon="gaussian"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        drawn, _, _ = model(x, None, generator=torch.Generator().manual_seed(0))
    assert gaussian.distribution == "gaussian"
    assert gaussian.sigma == pytest.approx((torch.sigmoid(drawn) - x).pow(2).mean().sqrt().item(), rel=1e-5)


def test_the_sample_count_is_a_test_setting():
    assert TestConfig().likelihood.samples == 64 and TestConfig(likelihood={"samples": 0}).likelihood.samples == 0
    with pytest.raises((ConfigError, ValueError)):
        TestConfig(likelihood={"samples": -1})
