"""Co-watch readout: a target-aware kNN over the user's history, keyed by a streaming item co-occurrence sketch.

Learned item embeddings pick up item-to-item similarity slowly in one streaming pass; counting co-occurrence does
not. Every item row ``i`` (the item-id table row, folded to ``rows`` sketch rows) has a fixed random vector
``r_i ~ N(0, I/k)`` and a context vector ``c_i`` that accumulates ``r_j`` for every item ``j`` seen in the same
user's stream (random indexing)::

    c_i = sum_{j co-occurring with i} r_j          (k-dim sketch of row i of the co-occurrence matrix)
    sim(i, j) = cos(c_i, c_j)                       (second-order similarity: items with similar co-watch sets)

For a target ``t`` with visible context tokens ``V(t)`` (the sample's H tokens and the R tokens strictly earlier
than ``t`` — the same causality as the attention mask), one softmax read per temperature ``tau``::

    w_tau(t, j) = softmax_{j in V(t)}(tau * sim(item_t, item_j))
    read_tau(t) = sum_j w_tau(t, j) * a_j           (a_j: token j's learned action embedding, e.g. click/like/skip)
    f(t)        = [read_tau1(t), ..., log(1 + |V(t)|)]
    logits(t)   = W f(t) + W_b(t) f(t)        b(t) = min(floor(log2(1 + |V(t)|)), size_buckets - 1)

``W`` and the per-bucket ``W_b`` (only with ``size_buckets > 0``) start at zero. A read over three visible items is
a noisier estimate than one over three hundred, most of all at high ``tau`` where one item takes nearly all the
weight; one shared ``W`` learns the weights that suit the users with long contexts (most of the stream) and
applies them to a user's first targets too. ``W_b`` lets the readout weigh its reads by how much context they
average over (log2 buckets of ``|V(t)|``: 0, 1-2, 3-6, 7-14, ...).

``tau = 0`` is the plain mean (the user's action mix); larger ``tau`` reads the actions on the most similar past
items — with skip behaviors in the history (``CoreConfig.skip_action``) this is "did the user like or skip items
like this one". :meth:`CoWatch.observe` adds a trained batch's co-occurrences after the optimizer step, so a
progressive score never sees its own batch. Each new target ``t`` of a sample counts once with every distinct item
of the sample's context and with the sample's other targets (both directions): a user's history is counted when
it is new, not again in each later sample that repeats it.

Example:
    >>> from streaming.sample import Behavior, Sample, Target
    >>> from model.batch import collate
    >>> spec = FeatureSpec()
    >>> cw = CoWatch(spec, action_dim=8, rows=64, dim=8)
    >>> s = Sample("s", "u", [Target("e", "r", "i2", "home", 2.0)], history=[Behavior("i1", "home", "click", 1.0)])
    >>> batch = collate([s], spec)
    >>> cw.observe(batch)
    >>> bool(cw.context.abs().sum() > 0)
    True
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from kernels.attention import TokenGroup
from model.batch import Batch
from model.features import FeatureSpec
from model.heads import token_ids, token_item_rows


def size_bucket(n: torch.Tensor, buckets: int) -> torch.Tensor:
    """Context sizes (any shape, integer counts >= 0) -> their log2 bucket ``min(floor(log2(1 + n)), buckets - 1)``.

    Example:
        >>> size_bucket(torch.tensor([0, 1, 2, 3, 6, 7, 1000]), 9).tolist()
        [0, 1, 1, 2, 2, 3, 8]
    """
    # exact floor(log2(x)) for x >= 1: x = mantissa * 2**exponent with mantissa in [0.5, 1)
    exponent = torch.frexp((n.to(torch.float64) + 1.0).clamp(min=1.0)).exponent
    return (exponent.to(torch.int64) - 1).clamp(max=buckets - 1)


def per_owner_grid(owner: torch.Tensor, n_owners: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) owner of each row (ids in [0, n_owners)) -> ``(grid, valid)``, both (n_owners, L) with L the largest
    owner's row count: ``grid[o, j]`` = index of owner ``o``'s ``j``-th row (original order kept; 0 where
    ``valid`` is False, past the owner's last row).

    Example:
        >>> grid, valid = per_owner_grid(torch.tensor([1, 0, 1, 1]), 3)
        >>> grid.tolist(), valid.tolist()
        ([[1, 0, 0], [0, 2, 3], [0, 0, 0]], [[True, False, False], [True, True, True], [False, False, False]])
    """
    counts = torch.bincount(owner, minlength=n_owners)
    width = int(counts.max()) if owner.numel() else 0
    order = torch.argsort(owner, stable=True)
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(owner.numel(), device=owner.device) - start[owner[order]]
    grid = torch.zeros(n_owners, width, dtype=torch.int64, device=owner.device)
    valid = torch.zeros(n_owners, width, dtype=torch.bool, device=owner.device)
    grid[owner[order], pos] = order
    valid[owner[order], pos] = True
    return grid, valid


class Visibility(NamedTuple):
    """What each target may read of its user's context, on per-user padded blocks (see :func:`visible_context`)."""

    c_grid: torch.Tensor  # (U, Lc) context row of each slot (per_owner_grid)
    t_grid: torch.Tensor  # (U, Lt) target row of each slot
    t_valid: torch.Tensor  # (U, Lt)
    vis: torch.Tensor  # (U, Lt, Lc) bool: the slot's target may read the slot's context token


def visible_context(c_ts: torch.Tensor, c_group: torch.Tensor, c_user: torch.Tensor, t_ts: torch.Tensor,
                    t_user: torch.Tensor) -> Visibility:
    """Context tokens (Nc,) ts, TokenGroup, owning user; targets (T,) ts (same origin), owning user -> which
    context tokens each target reads: its own user's H tokens and the R tokens strictly earlier than it (the
    attention mask's causality; U tokens are never read). Per user, in the rows' original order.

    Example:
        >>> H, R = int(TokenGroup.H), int(TokenGroup.R)
        >>> v = visible_context(torch.tensor([0.0, 5.0, 1.0]), torch.tensor([H, R, H]), torch.tensor([0, 0, 1]),
        ...                     torch.tensor([3.0, 9.0, 2.0]), torch.tensor([0, 0, 1]))
        >>> v.vis[0].tolist(), v.vis[1, :1].tolist()
        ([[True, False], [True, True]], [[True, False]])
    """
    users = torch.unique(torch.cat([c_user, t_user]), return_inverse=True)[1]
    n_users = int(users.max()) + 1 if users.numel() else 0
    c_grid, c_valid = per_owner_grid(users[:c_user.numel()], n_users)  # (U, Lc)
    t_grid, t_valid = per_owner_grid(users[c_user.numel():], n_users)  # (U, Lt)
    g = c_group[c_grid]
    is_r = (g == TokenGroup.R).unsqueeze(1)
    vis = (c_valid & (g == TokenGroup.H)).unsqueeze(1) | (is_r & (c_valid.unsqueeze(1) & (
        c_ts[c_grid].unsqueeze(1) < t_ts[t_grid].unsqueeze(2))))  # (U, Lt, Lc)
    return Visibility(c_grid, t_grid, t_valid, vis)


class CoWatch(nn.Module):
    """The co-watch sketch (buffers) and its readout head (one zero-initialised linear layer); see the module doc.

    ``context`` (rows, dim) is persistent state (it is in the snapshot); ``basis`` is regenerated from ``seed``.
    """

    def __init__(self, spec: FeatureSpec, action_dim: int, rows: int = 16384, dim: int = 64,
                 temperatures: tuple[float, ...] = (0.0, 10.0, 30.0, 100.0), seed: int = 0x5EED,
                 size_buckets: int = 0) -> None:
        super().__init__()
        if rows < 1 or dim < 1 or not temperatures:
            raise ValueError("CoWatch needs rows >= 1, dim >= 1 and at least one temperature")
        if size_buckets < 0:
            raise ValueError("CoWatch needs size_buckets >= 0")
        self.table_rows = spec.tables["item_id"].num_embeddings
        self.rows, self.temperatures = rows, tuple(float(t) for t in temperatures)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("basis", torch.randn(rows, dim, generator=gen) / math.sqrt(dim), persistent=False)
        self.register_buffer("context", torch.zeros(rows, dim))
        n_in, tasks = action_dim * len(self.temperatures) + 1, len(spec.tasks)
        self.proj = nn.Linear(n_in, tasks)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.size_buckets = size_buckets
        # (buckets, features, tasks) per-context-size read weights W_b; zeros draw no random numbers, so a model
        # with them starts bit-identical to one without
        self.size_proj = nn.Parameter(torch.zeros(size_buckets, n_in, tasks)) if size_buckets else None

    def sketch_rows(self, batch: Batch) -> torch.Tensor:
        """(N,) sketch row of each token (item-table row folded to ``rows``)."""
        return token_item_rows(batch, self.table_rows) % self.rows

    @torch.no_grad()
    def similarity(self, c_rows: torch.Tensor, t_rows: torch.Tensor, visible: Visibility) -> torch.Tensor:
        """Context (Nc,) and target (T,) sketch rows on ``visible``'s blocks -> (U, Lt, Lc) cosines of each target's
        sketch row with each context token's (padding slots hold junk: ``visible.vis`` masks them)."""
        ctx = self.context
        assert isinstance(ctx, torch.Tensor)
        ce = nn.functional.normalize(ctx[c_rows], dim=-1)[visible.c_grid]  # (U, Lc, k)
        te = nn.functional.normalize(ctx[t_rows], dim=-1)[visible.t_grid]  # (U, Lt, k)
        return te @ ce.transpose(1, 2)

    def forward(self, c_rows: torch.Tensor, c_act: torch.Tensor, c_ts: torch.Tensor, c_group: torch.Tensor,
                c_user: torch.Tensor, t_rows: torch.Tensor, t_ts: torch.Tensor, t_user: torch.Tensor,
                visible: Visibility | None = None, sim: torch.Tensor | None = None) -> torch.Tensor:
        """Context tokens (Nc,): sketch rows, action embeddings (Nc, a), ts, TokenGroup, owning user; targets (T,):
        sketch rows, ts (same origin as ``c_ts``), owning user -> (T, tasks) logits. Non-H/R context is ignored.
        ``visible``: :func:`visible_context` of these arguments, ``sim``: :meth:`similarity` on it, when the caller
        has them already (several readouts).

        Each user's targets read only that user's context, so the reads run per user on padded blocks
        (U, Lt, Lc) — not on one (T, Nc) matrix that is mostly other users' tokens."""
        if visible is None:
            visible = visible_context(c_ts, c_group, c_user, t_ts, t_user)
        if sim is None:
            sim = self.similarity(c_rows, t_rows, visible)  # (U, Lt, Lc)
        c_grid, t_grid, t_valid, vis = visible
        with torch.no_grad():
            n_vis = vis.sum(2, keepdim=True)  # (U, Lt, 1)
            any_vis = (n_vis > 0).to(sim.dtype)
            weights = []
            for tau in self.temperatures:
                w = torch.softmax((sim * tau).masked_fill(~vis, -math.inf), dim=2)
                weights.append(torch.nan_to_num(w, nan=0.0) * any_vis)  # rows without context: all -inf -> 0
        # (U, Lc, a); gradients reach the action embeddings (index_select: its backward is an index_add, plain
        # indexing's accumulating index_put sorts on the CPU)
        act = c_act.index_select(0, c_grid.reshape(-1)).reshape(*c_grid.shape, c_act.shape[1])
        reads = torch.cat([w @ act for w in weights], dim=2)  # (U, Lt, a * temperatures)
        t_src = t_grid[t_valid]  # (T,) the target in each valid grid slot, grid order
        f = torch.cat([reads, torch.log1p(n_vis.to(c_act.dtype))], dim=2)[t_valid]  # (T, features), grid order
        f = f.new_empty(f.shape).index_copy(0, t_src, f)  # back to the targets' order
        out: torch.Tensor = self.proj(f)
        if self.size_proj is not None:
            b = size_bucket(n_vis[t_valid].squeeze(1), self.size_buckets)
            b = b.new_empty(b.shape).index_copy(0, t_src, b)
            out = out + torch.einsum("tf,tfk->tk", f, self.size_proj[b])
        return out

    @torch.no_grad()
    def observe(self, batch: Batch) -> None:
        """Add ``batch``'s co-occurrences to the sketch (call after training on it)."""
        ctx = self.context
        assert isinstance(ctx, torch.Tensor)
        ones = torch.ones(batch.num_tokens, device=ctx.device)
        self._count(batch, ones, ones[:batch.num_targets])  # every item +1: plain counts (x 1.0 is exact)

    def _count(self, batch: Batch, token_sign: torch.Tensor, target_sign: torch.Tensor) -> None:
        """Add each new target's co-occurrences, each pair counted with the product of its two items' signs
        (token_sign: (N,) +1/-1 per token, 0 = not counted; target_sign: (T,) +1/-1)."""
        basis, ctx = self.basis, self.context
        assert isinstance(basis, torch.Tensor) and isinstance(ctx, torch.Tensor)
        rows = self.sketch_rows(batch).to(ctx.device)
        group = batch.token_group.to(ctx.device)
        offsets = batch.seq_offsets.to(ctx.device)
        B = offsets.numel() - 1
        user = torch.repeat_interleave(torch.arange(B, device=ctx.device), offsets.diff(), output_size=rows.numel())
        is_t = group == TokenGroup.T
        is_c = (group == TokenGroup.H) | (group == TokenGroup.R)
        tu, tr = user[is_t], rows[is_t]
        sign = token_sign.to(ctx.device)
        is_c = is_c & (sign != 0)
        pos = (sign[is_c] > 0).to(torch.int64)
        key = torch.unique((user[is_c] * self.rows + rows[is_c]) * 2 + pos)  # distinct (user, item, sign)
        cu, cr = key // 2 // self.rows, key // 2 % self.rows
        c_s = (key % 2).to(ctx.dtype) * 2 - 1  # (n_c,) sign of each distinct (user, item, sign)
        t_s = target_sign.to(device=ctx.device, dtype=ctx.dtype)
        c_vec, t_vec = basis[cr] * c_s[:, None], basis[tr] * t_s[:, None]
        s_ctx = ctx.new_zeros(B, ctx.shape[1]).index_add_(0, cu, c_vec)  # (B, k) sum over the context items
        s_tgt = ctx.new_zeros(B, ctx.shape[1]).index_add_(0, tu, t_vec)  # (B, k) sum over the targets
        ctx.index_add_(0, tr, (s_ctx[tu] + s_tgt[tu] - t_vec) * t_s[:, None])  # target <- context, other targets
        ctx.index_add_(0, cr, s_tgt[cu] * c_s[:, None])  # context item <- the new targets


class CoLike(CoWatch):
    """The co-watch readout over a *signed* co-occurrence sketch: items liked (or not) by the same users.

    Counting is :class:`CoWatch`'s with each item carrying a sign ``s = +1`` (liked) or ``-1`` (not liked): a pair
    counts ``s_i s_j``, so ``c_i = sum_j s_i s_j r_j`` sketches row ``i`` of the agreement matrix (pairs liked or
    disliked together minus pairs split) and ``cos(c_i, c_j)`` is high for items the same people rate alike —
    item-based collaborative filtering's similarity, where co-watch's is "watched by the same people". A context
    token's sign comes from its action (``signs``: ``((action, sign), ...)``, other actions are not counted); a new
    target's from its label of the first task (positive -> +1, else -1; ``collate`` gives a missing label 0, so it
    counts as not liked). An item a user's context holds both liked and not liked counts both ways, which cancel.
    The readout (reads, size buckets, zero-initialised weights) is :class:`CoWatch`'s.

    Example:
        >>> from streaming.sample import Behavior, Sample, Target
        >>> from model.batch import collate
        >>> spec = FeatureSpec()
        >>> cl = CoLike(spec, action_dim=8, rows=64, dim=8, signs=(("click", 1.0), ("skip", -1.0)))
        >>> s = Sample("s", "u", [Target("e", "r", "i2", "home", 2.0, labels={"click": 0})],
        ...            history=[Behavior("i1", "home", "click", 1.0)])
        >>> cl.observe(collate([s], spec))
        >>> bool(cl.context.abs().sum() > 0)
        True
    """

    def __init__(self, spec: FeatureSpec, action_dim: int, rows: int = 16384, dim: int = 64,
                 temperatures: tuple[float, ...] = (0.0, 10.0, 30.0, 100.0), seed: int = 0x11CE,
                 size_buckets: int = 0,
                 signs: tuple[tuple[str, float], ...] = (("click", 1.0), ("skip", -1.0))) -> None:
        super().__init__(spec, action_dim, rows, dim, temperatures, seed, size_buckets)
        if not signs or any(v not in (1.0, -1.0) for _, v in signs):
            raise ValueError("CoLike needs signs: ((action, +1.0 or -1.0), ...)")
        if len({spec.bucket("action", a) for a, _ in signs}) != len(signs):
            raise ValueError("CoLike: two signed actions share an action bucket; enlarge the action table")
        self.task = spec.tasks[0]
        self.register_buffer("action_ids", torch.tensor([spec.bucket("action", a) for a, _ in signs]),
                             persistent=False)
        self.register_buffer("action_signs", torch.tensor([float(v) for _, v in signs]), persistent=False)

    @torch.no_grad()
    def observe(self, batch: Batch) -> None:
        """Add ``batch``'s signed co-occurrences (call after training on it: it reads the targets' labels)."""
        ids, signs = self.action_ids, self.action_signs
        assert isinstance(ids, torch.Tensor) and isinstance(signs, torch.Tensor)
        act = token_ids(batch, "action", missing=-1)  # exactly one action on H/R tokens, none on U/T
        match = act.unsqueeze(1) == ids.to(act.device).unsqueeze(0)  # (N, n_signs)
        token_sign = (match.to(signs.dtype) * signs.to(act.device)).sum(1)
        labels = batch.labels[self.task]  # (T,) in group_rows[T] order, as the T tokens
        target_sign = torch.where(labels > 0.5, 1.0, -1.0)
        self._count(batch, token_sign, target_sign)


class RecentReads(nn.Module):
    """Means of the actions on each target's last ``k`` visible context tokens, one per ``k``, as logits.

    The co-watch reads weigh the context by similarity to the target, the ``tau = 0`` read by nothing at all (the
    user's action mix over the whole visible context, up to L tokens). This reads by recency: for each ``k`` in
    ``ks`` the mean action over the last ``k`` tokens the target may read (H then R, in sequence order: the
    latest behaviors), so a user whose recent ratings run above or below their long-run mix is scored by both::

        recent_k(t) = mean_{j in last_k(V(t))} a_j       logits(t) = W [recent_k1(t), recent_k2(t), ...]

    With ``similar_window > 0`` it also reads by similarity among the latest tokens only: one softmax read per
    temperature in ``temperatures`` over the last ``similar_window`` visible tokens, weighted by similarities passed
    in (the Ranker passes the co-like readout's, :meth:`CoWatch.similarity`), into a second term ``W_s`` — what the user did
    lately on items like the target, next to the readouts' reads over the whole context.

    ``W`` and ``W_s`` start at zero. The reads use the same visibility as :class:`CoWatch` and the same actions
    (with ``RankerConfig.cowatch_item_baseline``, each minus its item's baseline); a target without visible context
    reads zeros.

    Example:
        >>> rr = RecentReads(action_dim=2, tasks=1, ks=(1, 2))
        >>> H = int(TokenGroup.H)
        >>> f = rr.reads(torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]), torch.zeros(3),
        ...              torch.full((3,), H), torch.zeros(3, dtype=torch.int64), torch.ones(1),
        ...              torch.zeros(1, dtype=torch.int64))
        >>> f.tolist()  # last 1: the third token; last 2: mean of the second and third
        [[3.0, 3.0, 1.5, 2.0]]
    """

    def __init__(self, action_dim: int, tasks: int, ks: tuple[int, ...], similar_window: int = 0,
                 temperatures: tuple[float, ...] = (10.0, 30.0)) -> None:
        super().__init__()
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"RecentReads needs ks >= 1, got {ks!r}")
        if similar_window < 0 or (similar_window and not temperatures):
            raise ValueError("RecentReads needs similar_window >= 0 and, with it, temperatures")
        self.ks, self.similar_window = tuple(ks), similar_window
        self.temperatures = tuple(float(t) for t in temperatures)
        self.proj = nn.Linear(action_dim * len(self.ks), tasks)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.sim_proj: nn.Linear | None = None
        if similar_window:
            self.sim_proj = nn.Linear(action_dim * len(self.temperatures), tasks)
            nn.init.zeros_(self.sim_proj.weight)
            nn.init.zeros_(self.sim_proj.bias)

    @staticmethod
    def _from_end(vis: torch.Tensor) -> torch.Tensor:
        """(U, Lt, Lc) visibility -> each slot's rank from the target's last visible token (0 there)."""
        v = vis.to(torch.float32)
        return v.sum(2, keepdim=True) - v.cumsum(2)

    @staticmethod
    def _read(c_act: torch.Tensor, v: Visibility, weights: list[torch.Tensor]) -> torch.Tensor:
        """(Nc, a) actions, the visibility blocks and (U, Lt, Lc) read weights -> (T, a * len(weights)), targets'
        order."""
        act = c_act.index_select(0, v.c_grid.reshape(-1)).reshape(*v.c_grid.shape, c_act.shape[1])  # (U, Lc, a)
        f = torch.cat([w.to(act.dtype) @ act for w in weights], dim=2)[v.t_valid]  # grid order
        return f.new_empty(f.shape).index_copy(0, v.t_grid[v.t_valid], f)

    def _recent(self, v: Visibility) -> list[torch.Tensor]:
        with torch.no_grad():
            vis = v.vis.to(torch.float32)
            from_end = self._from_end(v.vis)
            weights = []
            for k in self.ks:
                w = vis * (from_end < k).to(vis.dtype)
                weights.append(w / w.sum(2, keepdim=True).clamp(min=1.0))
        return weights

    def _similar(self, v: Visibility, sim: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            near = v.vis & (self._from_end(v.vis) < self.similar_window)  # (U, Lt, Lc)
            any_near = (near.sum(2, keepdim=True) > 0).to(sim.dtype)
            return [torch.nan_to_num(torch.softmax((sim * tau).masked_fill(~near, -math.inf), dim=2), nan=0.0)
                    * any_near for tau in self.temperatures]

    def reads(self, c_act: torch.Tensor, c_ts: torch.Tensor, c_group: torch.Tensor, c_user: torch.Tensor,
              t_ts: torch.Tensor, t_user: torch.Tensor) -> torch.Tensor:
        """Context tokens (Nc,): action embeddings (Nc, a), ts, TokenGroup, owning user; targets (T,): ts, owning
        user -> (T, a * len(ks)) the recent reads, targets' order."""
        v = visible_context(c_ts, c_group, c_user, t_ts, t_user)
        return self._read(c_act, v, self._recent(v))

    def forward(self, c_act: torch.Tensor, c_ts: torch.Tensor, c_group: torch.Tensor, c_user: torch.Tensor,
                t_ts: torch.Tensor, t_user: torch.Tensor, sim: torch.Tensor | None = None,
                visible: Visibility | None = None) -> torch.Tensor:
        """The :meth:`reads`' arguments (and, with ``similar_window``, ``sim``: (U, Lt, Lc) target-to-context
        similarities on ``visible``'s blocks, e.g. :meth:`CoWatch.similarity`; ``visible`` as in
        :meth:`CoWatch.forward`) -> (T, tasks) logits."""
        v = visible_context(c_ts, c_group, c_user, t_ts, t_user) if visible is None else visible
        out: torch.Tensor = self.proj(self._read(c_act, v, self._recent(v)))
        if self.sim_proj is not None:
            if sim is None:
                raise ValueError("RecentReads with similar_window needs the similarities (sim)")
            out = out + self.sim_proj(self._read(c_act, v, self._similar(v, sim)))
        return out
