"""Multi-task, multi-scenario head: MMoE over the final target tokens, gated by the scenario embedding."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

from kernels.attention import TokenGroup
from model.batch import Batch
from model.features import FeatureSpec
from streaming.cross import DIMS, lifetime_count_names, unsquash_count


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


def token_ids(batch: Batch, feature: str, missing: int = 0) -> torch.Tensor:
    """(N,) the id of each token's single-valued sparse ``feature`` (as collate wrote it: raw hashes under managed
    collision), sequence order; ``missing`` on tokens without one."""
    jt = batch.sparse[feature]  # one bag per token (stride N): at most one id each
    lens = jt.lengths()
    has = lens > 0
    out = torch.full((lens.numel(),), missing, dtype=torch.int64, device=lens.device)
    out[has] = jt.values()[jt.offsets()[:-1][has]]
    return out


def token_item_rows(batch: Batch, table_rows: int) -> torch.Tensor:
    """(N,) row of each token's item id in a ``table_rows``-sized table, sequence order (raw managed-collision
    hashes folded); 0 on tokens without an item (U tokens)."""
    return token_ids(batch, "item_id") % table_rows  # exactly one id on H/R/T tokens


def target_item_rows(batch: Batch, spec: FeatureSpec) -> torch.Tensor:
    """(T,) row of each target's item id in an ``item_id``-sized table (raw managed-collision hashes folded)."""
    return token_item_rows(batch, spec.tables["item_id"].num_embeddings)[batch.group_rows[TokenGroup.T]]


def item_bias_table(spec: FeatureSpec) -> EmbeddingBagCollection:
    """A zero-initialised per-item, per-task logit-bias table on the item id (an embedding table: row-wise Adagrad
    in the trainer). Width rounded up to a multiple of 4 (fbgemm's sharded tables); columns >= tasks are unused."""
    return EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        name="t_item_bias", embedding_dim=-(-len(spec.tasks) // 4) * 4,
        num_embeddings=spec.tables["item_id"].num_embeddings,
        feature_names=["item_id"], pooling=PoolingType.SUM, init_fn=nn.init.zeros_)])


def item_bias_logits(table: EmbeddingBagCollection, rows: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """(T,) item rows (:func:`target_item_rows`) -> (T, tasks) bias logits from :func:`item_bias_table`."""
    kjt = KeyedJaggedTensor(keys=["item_id"], values=rows, lengths=torch.ones_like(rows))
    return table(kjt).to_dict()["item_id"][:, :num_tasks]  # type: ignore[no-any-return]


class CrossRates(nn.Module):
    """The user's smoothed label rates from the target's own cross counters, as direct first-order logits.

    The streaming core's cross features (``streaming.cross``: per user, counts strictly before the target) arrive
    squashed in the weighted ``cross`` bag, where a deep model learns the rate × count interaction slowly. This
    reads the lifetime counts ``{dim}_imp_life`` and ``{dim}_{task}_life`` (dim = scenario, category, all:
    :func:`streaming.cross.lifetime_count_names`) back out of the bag (:func:`streaming.cross.unsquash_count` of the
    squashed value), smooths them towards a prior,
    ``z = logit((pos + m p0) / (imp + m)) − logit(p0)`` (targets without counters get 0), and returns
    ``(T, tasks)`` logits ``z @ W`` with ``W`` (dims × tasks, tasks) initialised to ``init`` on the same task's
    ``all`` rate (a naive-Bayes start: user rate and item rate add in logit space) and 0 elsewhere.

    Example:
        >>> from model.features import FeatureSpec
        >>> CrossRates(FeatureSpec(tasks=("click",)), (("click", 0.5),)).rate_names[:2]
        ('scn_imp_life', 'scn_click_life')
    """

    def __init__(self, spec: FeatureSpec, priors: tuple[tuple[str, float], ...] = (), smoothing: float = 5.0,
                 init: float = 1.0) -> None:
        super().__init__()
        self.tasks, self.smoothing = spec.tasks, smoothing
        names = lifetime_count_names(spec.tasks)  # dims outer: imp, then one count per task
        self.rate_names = names
        n = spec.tables["cross"].num_embeddings
        ids = [spec.bucket("cross", name) % n for name in names]
        if len(set(ids)) != len(ids):
            raise ValueError("CrossRates: two cross counters hash to the same bucket; enlarge the cross table")
        column = torch.full((n,), -1, dtype=torch.int64)
        column[torch.tensor(ids)] = torch.arange(len(ids))
        self.register_buffer("column", column, persistent=False)  # cross bucket -> counter column (-1: other)
        p = dict(priors)
        self.register_buffer("prior", torch.tensor([p.get(t, 0.5) for t in spec.tasks]), persistent=False)
        k = len(spec.tasks)
        self.proj = nn.Linear(len(DIMS) * k, k, bias=False)
        nn.init.zeros_(self.proj.weight)
        with torch.no_grad():
            a = DIMS.index("all")
            for i in range(k):
                self.proj.weight[i, a * k + i] = init

    def forward(self, batch: Batch) -> torch.Tensor:
        jt = batch.float_features["cross"]  # weighted, one bag per target
        T, k = batch.num_targets, len(self.tasks)
        column, prior = self.column, self.prior
        assert isinstance(column, torch.Tensor) and isinstance(prior, torch.Tensor)
        col = column[jt.values()]
        owner = torch.repeat_interleave(torch.arange(T, device=col.device), jt.lengths(), output_size=col.numel())
        keep = col >= 0
        counts = torch.zeros(T, len(self.rate_names), device=col.device)
        counts[owner[keep], col[keep]] = unsquash_count(jt.weights()[keep].float())
        c = counts.view(T, len(DIMS), 1 + k)  # per dim: imp, then one count per task
        m = self.smoothing
        rate = (c[..., 1:] + m * prior) / (c[..., :1] + m)  # (T, dims, tasks)
        z = torch.logit(rate.clamp(1e-4, 1 - 1e-4)) - torch.logit(prior)
        return self.proj(z.reshape(T, -1))  # type: ignore[no-any-return]


class UserItemFactors(nn.Module):
    """Per-task user × item factorization logits (SVD++'s form) on the model's own embeddings.

    The user factor reads the user's profile (the summed raw U-token features: the user-id and profile embeddings)
    and the mean of the raw H-token features (the items and actions of the history: SVD++'s implicit feedback);
    the item factor reads the target's item-id and item-feature embeddings::

        p_u = A u_sum + B h_mean      (tasks, k)   A, B zero-initialised: the term starts at 0
        q_i = C [item_id ‖ item_feat]  (k,)
        logit_task(u, i) = <p_u[task], q_i>

    Attention reads the history as a weighted mix of its tokens; nothing in it is a direct user-id × item-id
    product, which is what a factorization model (and DLRM's user · target dot) learns from a user's later
    targets. The user factor depends on the context only, so :meth:`Ranker.encode_user` caches it.

    Example:
        >>> f = UserItemFactors(user_dim=4, hist_dim=6, item_dim=5, tasks=2, dim=3)
        >>> p = f.user(torch.ones(7, 4), torch.ones(7, 6))
        >>> p.shape, f(p, torch.ones(7, 5)).abs().sum().item()
        (torch.Size([7, 6]), 0.0)
    """

    def __init__(self, user_dim: int, hist_dim: int, item_dim: int, tasks: int, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError("UserItemFactors needs dim >= 1")
        self.tasks, self.dim, self.item_dim = tasks, dim, item_dim
        self.user_proj = nn.Linear(user_dim, tasks * dim, bias=False)
        self.hist_proj = nn.Linear(hist_dim, tasks * dim, bias=False)
        nn.init.zeros_(self.user_proj.weight)
        nn.init.zeros_(self.hist_proj.weight)
        self.item_proj = nn.Linear(item_dim, dim, bias=False)

    def user(self, u_sum: torch.Tensor, h_mean: torch.Tensor) -> torch.Tensor:
        """(B, user_dim) summed U features, (B, hist_dim) mean H features -> (B, tasks * dim) user factors."""
        return self.user_proj(u_sum) + self.hist_proj(h_mean)  # type: ignore[no-any-return]

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(T, tasks * dim) each target's user factors, (T, item_dim) its item features -> (T, tasks) logits."""
        q = self.item_proj(item)  # (T, dim)
        return torch.einsum("tkd,td->tk", user.view(-1, self.tasks, self.dim), q)
