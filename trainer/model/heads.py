"""Multi-task, multi-scenario head: MMoE over the final target tokens, gated by the scenario embedding."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def mlp(sizes: list[int], last_act: bool = False) -> nn.Sequential:
    """``Linear -> SiLU`` stack over ``sizes`` (no activation after the last layer unless ``last_act``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class MMoE(nn.Module):
    """Multi-gate mixture of experts: shared experts, one softmax gate and one tower per task.

    ``forward(x (T, d), gate_in (T, g)) -> {task: (T,) logits}``; the gate sees ``concat(gate_in, x)`` so the
    scenario decides how experts mix while the target token can still steer it.

    Example:
        >>> head = MMoE(8, 4, ("click",), num_experts=2, expert_dim=6)
        >>> head(torch.zeros(3, 8), torch.zeros(3, 4))["click"].shape
        torch.Size([3])
    """

    def __init__(
        self, d_in: int, gate_dim: int, tasks: tuple[str, ...], num_experts: int = 4, expert_dim: int = 64
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.experts = nn.ModuleList([mlp([d_in, expert_dim, expert_dim], last_act=True) for _ in range(num_experts)])
        self.gates = nn.ModuleDict({t: nn.Linear(gate_dim + d_in, num_experts) for t in tasks})
        self.towers = nn.ModuleDict({t: mlp([expert_dim, expert_dim // 2, 1]) for t in tasks})

    def set_output_bias(self, task: str, value: float) -> None:
        """Initialise ``task``'s output logit bias (e.g. to the log-odds of its label prior)."""
        tower = self.towers[task]
        assert isinstance(tower, nn.Sequential)
        last = tower[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.bias.fill_(value)

    def forward(self, x: torch.Tensor, gate_in: torch.Tensor) -> dict[str, torch.Tensor]:
        e = torch.stack([ex(x) for ex in self.experts], dim=1)  # (T, E, De)
        g_in = torch.cat([gate_in, x], dim=-1)
        out: dict[str, torch.Tensor] = {}
        for t in self.tasks:
            w = torch.softmax(self.gates[t](g_in), dim=-1)  # (T, E)
            out[t] = self.towers[t]((w.unsqueeze(-1) * e).sum(1)).squeeze(-1)  # (T,)
        return out
