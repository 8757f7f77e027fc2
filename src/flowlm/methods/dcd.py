"""DCD: discrete consistency distillation of a DUO model (Sahoo et al. 2025, "The Diffusion Duality", §4.2; the
reference is github s-sahoo/duo, branch ch-1, class ``Distillation``). Loss only; no I/O, no training harness.

DUO's Gaussian relaxation (:mod:`flowlm.methods.duo`) gives deterministic discrete trajectories: one Gaussian noise
``ε`` and the latents ``w_t = α̃_t·x + σ̃_t·ε`` of the ideal (data-known) probability-flow path, mapped by arg-max,
``z_t = argmax(w_t)``, have the uniform-state marginals at every time. One round of DCD teaches the student, at
``(z_t, α_t)``, the teacher's prediction one step ``δ = 1/teacher_steps`` later on the same trajectory, at
``(z_s, α_s)``, ``s = t − δ``:

    loss = mean over positions of KL(x_θ(z_t, α_t) ‖ x_θ⁻(z_s, α_s))        (reverse KL, the reference's default)

with the student's times ``t`` uniform on ``[δ, 1]`` (stratified over the batch) and γ (the Gaussian log-SNR) linear
in t over the window where ``α`` runs from 0.999 to 0.006 (the reference's γ ∈ [−4, −1] for GPT-2's vocabulary, taken
by its ``α`` ends so that it holds for any V). Both networks see discrete ids. The teacher is frozen and in eval mode;
a round's student becomes the next round's teacher with δ doubled (``flowlm distill --rounds``).
"""

from __future__ import annotations

import torch

from flowlm.methods.common import categorical_divergence, check_divergence, check_rows, stratified_times
from flowlm.methods.duo import gamma_window, gaussian_argmax_latent

DCD_ALPHAS = (0.999, 0.006)  # α at the two ends of the distillation's γ window


def trajectory_pair(tokens: torch.Tensor, t: torch.Tensor, s: torch.Tensor, vocab_size: int, generator=None,
                    rows: tuple[int, int] | None = None):  # fmt: skip
    """``(z_t, α_t, z_s, α_s)``: arg-max of the Gaussian latents at DUO times ``t`` and ``s`` [B] with one shared
    noise ε [B, L, V] (drawn for ``total`` rows and sliced, ``rows``)."""
    first, total = check_rows(rows, tokens.shape[0])
    low, high = gamma_window(vocab_size, DCD_ALPHAS)
    noise = torch.randn((total, *tokens.shape[1:], vocab_size), generator=generator, device=tokens.device)
    noise = noise[first : first + tokens.shape[0]]
    onehot = torch.nn.functional.one_hot(tokens, vocab_size).float()
    out = []
    for time in (t, s):
        w, a = gaussian_argmax_latent(onehot, noise, low + time.double() * (high - low), vocab_size)
        out += [w.argmax(-1), a.float()]
    return tuple(out)


def dcd_loss(
    student,
    teacher,
    tokens: torch.Tensor,
    vocab_size: int,
    teacher_steps: int,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
    divergence: str = "kl-reverse",
) -> dict[str, torch.Tensor]:
    """One DCD loss of clean tokens [B, L] (module docstring): ``loss``, ``kl`` (detached) and ``t`` [B]."""
    batch = tokens.shape[0]
    first, total = check_rows(rows, batch)
    step = 1.0 / teacher_steps
    t = (step + (1 - step) * stratified_times(total, generator, tokens.device))[first : first + batch]
    z_t, a_t, z_s, a_s = trajectory_pair(tokens, t, t - step, vocab_size, generator, rows)
    with torch.no_grad():
        target = torch.log_softmax(teacher(z_s, a_s).float(), dim=-1)
    log_student = torch.log_softmax(student(z_t, a_t).float(), dim=-1)
    loss = categorical_divergence(log_student, target, check_divergence(divergence)).mean()
    return {"loss": loss, "kl": loss.detach(), "t": t}
