"""An idiomatic PyTorch training loop (CPU or CUDA) of the same VAE, for speed comparison only."""

from __future__ import annotations

import time


def torch_throughput(
    images_u8,
    *,
    hidden=(512, 256),
    latent=20,
    batch=128,
    steps=200,
    warmup=20,
    seed=0,
    device="cpu",
) -> float:
    """Steady-state training examples/s of a PyTorch MLP VAE (Bernoulli, Adam 1e-3)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    f = images_u8.shape[1]

    def mlp(widths):
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers)

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = mlp([f, *hidden])
            self.mean = nn.Linear(hidden[-1], latent)
            self.logvar = nn.Linear(hidden[-1], latent)
            self.dec = nn.Sequential(mlp([latent, *reversed(hidden)]), nn.Linear(hidden[0], f))

        def forward(self, x):
            h = self.enc(x)
            mean, logvar = self.mean(h), self.logvar(h)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            logits = self.dec(z)
            recon = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
            kl = 0.5 * (logvar.exp() + mean**2 - 1 - logvar).sum(-1)
            return (recon.sum(-1) + kl).mean()

    model = VAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = (torch.from_numpy(images_u8.copy()).float() / 255.0).to(device)
    n = data.shape[0]

    def run(k):
        for _ in range(k):
            idx = torch.randint(0, n, (batch,), device=device)
            x = torch.bernoulli(data[idx])
            loss = model(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return float(loss.detach())

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    run(warmup)
    sync()
    t = time.perf_counter()
    run(steps)
    sync()
    return steps * batch / (time.perf_counter() - t)
