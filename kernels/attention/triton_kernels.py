r"""The three ``@triton.jit`` kernels of HTA attention: forward, dq, and dk/dv (launched from ``triton.py``).

Layout: one program per (user b, query head h, block of BLOCK_M queries of b) in the forward and dq kernels, one per
(user b, kv head hk, block of BLOCK_N keys of b) in the dk/dv kernel. Programs read their user's slice through the
offsets, so jagged inputs are never padded; a program whose block starts past its user's length returns at once.
Every mask below is the package docstring's rule, evaluated per (query, key) tile from q_pos / kv_ts / kv_group::

    vis = (q_pos == j) | (grp_j == U) | (grp_j == H) | ((grp_j == R) & (ts_j < ts_i))

Tiles that cannot contain a visible pair skip their dots. The test is conservative and costs vectors, not a
(BM, BN) reduction (which cost registers and spills on sm_90): a key block is needed iff it holds a U/H key, an R
key earlier than the block's latest query, or the own position of one of the block's queries. With targets
stored together, this skips the T-key blocks for every query block that holds none of those targets.
Offsets inside one user are int32 (pointers move to the user's rows once, in int64), again for registers.
Softmax uses base-2 exponentials: p = exp2(s * scale * log2(e) - lse2) with lse2 = m + log2(l) saved per (row, head).
Every query sees itself, so no real row ends with an empty softmax; the running max starts at -inf and is replaced by
0 while a row has seen nothing yet, which keeps exp2(-inf - (-inf)) out of the arithmetic.
"""

from __future__ import annotations

from kernels.dispatch import tl, triton


@triton.jit
def _hta_fwd_kernel(
    Q,  # (Nq, Hq, D) queries; row i, head h at Q + i * stride_qn + h * stride_qh (+ d, last dim contiguous)
    K,  # (Nk, Hkv, D) keys
    V,  # (Nk, Hkv, D) values
    OUT,  # (Nq, Hq, D) output, written here
    STAT,  # (Nq, Hq) float32, written here: lse2 (softmax, base-2 log-sum-exp) or n_i (silu, visible-key count)
    Q_OFF,  # (B+1,) int64 query offsets per user
    KV_OFF,  # (B+1,) int64 key offsets per user
    Q_POS,  # (Nq,) int64 each query's position inside its user's keys
    KV_TS,  # (Nk,) float key timestamps
    KV_GRP,  # (Nk,) int key TokenGroup
    stride_qn,  # Q row stride
    stride_qh,  # Q head stride
    stride_kn,  # K row stride
    stride_kh,  # K head stride
    stride_vn,  # V row stride
    stride_vh,  # V head stride
    stride_on,  # OUT row stride
    stride_oh,  # OUT head stride
    scale,  # float, softmax/silu scale
    D,  # head dim (<= BLOCK_D)
    tune_q_len,  # unused in the body: the autotuner's key (longest user's queries, power of two, <= 1024)
    HQ: tl.constexpr,  # query heads
    GQA: tl.constexpr,  # query heads per kv head (Hq // Hkv)
    SILU: tl.constexpr,  # pointwise SiLU attention instead of softmax
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for float32 inputs (ignored for 16-bit)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    hk = h // GQA  # grouped-query: this head's kv head
    q_start = tl.load(Q_OFF + b)  # int64
    q_len = (tl.load(Q_OFF + b + 1) - q_start).to(tl.int32)
    if pid_m * BLOCK_M >= q_len:
        return
    kv_start = tl.load(KV_OFF + b)
    kv_len = (tl.load(KV_OFF + b + 1) - kv_start).to(tl.int32)
    # move every pointer to this (user, head) once in int64; offsets inside a user stay int32 (fewer registers)
    Q += q_start * stride_qn + h * stride_qh
    OUT += q_start * stride_on + h * stride_oh
    K += kv_start * stride_kn + hk * stride_kh
    V += kv_start * stride_vn + hk * stride_vh
    STAT += q_start * HQ + h
    Q_POS += q_start
    KV_TS += kv_start
    KV_GRP += kv_start

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,) query index inside the user
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < D
    q = tl.load(
        Q + offs_m[:, None] * stride_qn + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0
    )
    pos = tl.load(Q_POS + offs_m, mask=m_ok, other=-1).to(tl.int32)  # (BM,) key position of the query's token
    pos_ok = m_ok & (pos >= 0) & (pos < kv_len)
    q_ts = tl.load(KV_TS + pos, mask=pos_ok, other=0.0)  # (BM,) the query token's own timestamp
    # block-skip summaries of this query block: latest query time, range of the queries' own key positions
    q_ts_max = tl.max(tl.where(pos_ok, q_ts, float("-inf")))
    pos_lo = tl.min(tl.where(pos_ok, pos, 2147483647))
    pos_hi = tl.max(tl.where(pos_ok, pos, -1))

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max (softmax, base-2 units)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum (softmax) or visible count (silu)
    qk_scale = scale * 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2 e)
    for start_n in range(0, kv_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # (BN,) key index inside the user
        n_ok = offs_n < kv_len
        grp = tl.load(KV_GRP + offs_n, mask=n_ok, other=3).to(tl.int32)
        ts = tl.load(KV_TS + offs_n, mask=n_ok, other=0.0)
        vis = (pos[:, None] == offs_n[None, :]) | (grp[None, :] == 0) | (grp[None, :] == 1)
        vis = vis | ((grp[None, :] == 2) & (ts[None, :] < q_ts[:, None]))
        vis = vis & n_ok[None, :] & m_ok[:, None]  # (BM, BN)
        # skip the dots when no key of this block can be visible to any query of this block (a (BN,) test)
        maybe = (((grp == 0) | (grp == 1) | ((grp == 2) & (ts < q_ts_max))) & n_ok).to(tl.int32)
        if (tl.max(maybe) > 0) | ((pos_hi >= start_n) & (pos_lo < start_n + BLOCK_N)):
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BM, BN) raw scores, fp32
            if SILU:
                x = s * scale
                a = tl.where(vis, x * tl.sigmoid(x), 0.0)
                l_i += tl.sum(vis.to(tl.float32), 1)
                acc += tl.dot(a.to(v.dtype), v, input_precision=DOT_PRECISION)
            else:
                s = tl.where(vis, s * qk_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
                m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # padded rows (never stored) and malformed rows stay finite
    out = acc / l_safe[:, None]
    if SILU:  # noqa: SIM108 (constexpr branch)
        stat = l_safe
    else:
        stat = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), 0.0)
    out_ptrs = OUT + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(STAT + offs_m * HQ, stat, mask=m_ok)


@triton.jit
def _hta_bwd_dq_kernel(
    Q,  # (Nq, Hq, D) queries
    K,  # (Nk, Hkv, D) keys
    V,  # (Nk, Hkv, D) values
    DO,  # (Nq, Hq, D) gradient of the output
    DQ,  # (Nq, Hq, D) written here (allocated like DO: same strides)
    STAT,  # (Nq, Hq) float32 from the forward (lse2 or n_i)
    DELTA,  # (Nq, Hq) float32 rowsum(dO * O) (softmax only; unused for silu)
    Q_OFF,  # (B+1,) int64 query offsets per user
    KV_OFF,  # (B+1,) int64 key offsets per user
    Q_POS,  # (Nq,) int64 query positions inside the user's keys
    KV_TS,  # (Nk,) float key timestamps
    KV_GRP,  # (Nk,) int key TokenGroup
    stride_qn,  # Q row stride
    stride_qh,  # Q head stride
    stride_kn,  # K row stride
    stride_kh,  # K head stride
    stride_vn,  # V row stride
    stride_vh,  # V head stride
    stride_don,  # DO (and DQ) row stride
    stride_doh,  # DO (and DQ) head stride
    scale,
    D,
    tune_q_len,  # autotuner key only
    HQ: tl.constexpr,
    GQA: tl.constexpr,
    SILU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    hk = h // GQA
    q_start = tl.load(Q_OFF + b)
    q_len = (tl.load(Q_OFF + b + 1) - q_start).to(tl.int32)
    if pid_m * BLOCK_M >= q_len:
        return
    kv_start = tl.load(KV_OFF + b)
    kv_len = (tl.load(KV_OFF + b + 1) - kv_start).to(tl.int32)
    Q += q_start * stride_qn + h * stride_qh
    DO += q_start * stride_don + h * stride_doh
    DQ += q_start * stride_don + h * stride_doh
    K += kv_start * stride_kn + hk * stride_kh
    V += kv_start * stride_vn + hk * stride_vh
    STAT += q_start * HQ + h
    DELTA += q_start * HQ + h
    Q_POS += q_start
    KV_TS += kv_start
    KV_GRP += kv_start

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < D
    md_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :], mask=md_mask, other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :], mask=md_mask, other=0.0)
    stat = tl.load(STAT + offs_m * HQ, mask=m_ok, other=1.0)  # (BM,)
    delta = tl.load(DELTA + offs_m * HQ, mask=m_ok, other=0.0)  # (BM,)
    pos = tl.load(Q_POS + offs_m, mask=m_ok, other=-1).to(tl.int32)
    pos_ok = m_ok & (pos >= 0) & (pos < kv_len)
    q_ts = tl.load(KV_TS + pos, mask=pos_ok, other=0.0)
    q_ts_max = tl.max(tl.where(pos_ok, q_ts, float("-inf")))
    pos_lo = tl.min(tl.where(pos_ok, pos, 2147483647))
    pos_hi = tl.max(tl.where(pos_ok, pos, -1))

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    for start_n in range(0, kv_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < kv_len
        grp = tl.load(KV_GRP + offs_n, mask=n_ok, other=3).to(tl.int32)
        ts = tl.load(KV_TS + offs_n, mask=n_ok, other=0.0)
        vis = (pos[:, None] == offs_n[None, :]) | (grp[None, :] == 0) | (grp[None, :] == 1)
        vis = vis | ((grp[None, :] == 2) & (ts[None, :] < q_ts[:, None]))
        vis = vis & n_ok[None, :] & m_ok[:, None]  # (BM, BN)
        # skip the dots when no key of this block can be visible to any query of this block (a (BN,) test)
        maybe = (((grp == 0) | (grp == 1) | ((grp == 2) & (ts < q_ts_max))) & n_ok).to(tl.int32)
        if (tl.max(maybe) > 0) | ((pos_hi >= start_n) & (pos_lo < start_n + BLOCK_N)):
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BM, BN)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BM, BN) dL/dP
            if SILU:
                x = s * scale
                sig = tl.sigmoid(x)
                ds = tl.where(vis, dp * sig * (1.0 + x * (1.0 - sig)), 0.0) / stat[:, None]
            else:
                p = tl.exp2(tl.where(vis, s * qk_scale, float("-inf")) - stat[:, None])
                ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    dq = dq * scale
    tl.store(DQ + offs_m[:, None] * stride_don + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=md_mask)


@triton.jit
def _hta_bwd_dkdv_kernel(
    Q,  # (Nq, Hq, D) queries
    K,  # (Nk, Hkv, D) keys
    V,  # (Nk, Hkv, D) values
    DO,  # (Nq, Hq, D) gradient of the output
    DK,  # (Nk, Hkv, D) written here, contiguous
    DV,  # (Nk, Hkv, D) written here, contiguous
    STAT,  # (Nq, Hq) float32 from the forward (lse2 or n_i)
    DELTA,  # (Nq, Hq) float32 rowsum(dO * O) (softmax only)
    Q_OFF,  # (B+1,) int64 query offsets per user
    KV_OFF,  # (B+1,) int64 key offsets per user
    Q_POS,  # (Nq,) int64 query positions inside the user's keys
    KV_TS,  # (Nk,) float key timestamps
    KV_GRP,  # (Nk,) int key TokenGroup
    stride_qn,  # Q row stride
    stride_qh,  # Q head stride
    stride_kn,  # K row stride
    stride_kh,  # K head stride
    stride_vn,  # V row stride
    stride_vh,  # V head stride
    stride_don,  # DO row stride
    stride_doh,  # DO head stride
    stride_dkn,  # DK and DV row stride
    stride_dkh,  # DK and DV head stride
    scale,
    D,
    tune_q_len,  # autotuner key only
    HKV: tl.constexpr,  # kv heads
    GQA: tl.constexpr,  # query heads per kv head: this program sums their contributions (no atomics)
    SILU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    kv_start = tl.load(KV_OFF + b)
    kv_len = (tl.load(KV_OFF + b + 1) - kv_start).to(tl.int32)
    if pid_n * BLOCK_N >= kv_len:
        return
    q_start = tl.load(Q_OFF + b)
    q_len = (tl.load(Q_OFF + b + 1) - q_start).to(tl.int32)
    K += kv_start * stride_kn + hk * stride_kh
    V += kv_start * stride_vn + hk * stride_vh
    DK += kv_start * stride_dkn + hk * stride_dkh
    DV += kv_start * stride_dkn + hk * stride_dkh
    KV_TS += kv_start
    KV_GRP += kv_start
    Q += q_start * stride_qn  # the head offset is added per query head below
    DO += q_start * stride_don
    STAT += q_start * (HKV * GQA)
    DELTA += q_start * (HKV * GQA)
    Q_POS += q_start

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,) key index inside the user
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < kv_len
    d_ok = offs_d < D
    nd_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=nd_mask, other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=nd_mask, other=0.0)
    grp = tl.load(KV_GRP + offs_n, mask=n_ok, other=3).to(tl.int32)
    ts = tl.load(KV_TS + offs_n, mask=n_ok, other=0.0)
    uh = (grp == 0) | (grp == 1)  # (BN,) visible to every query
    r = grp == 2  # (BN,) visible to later queries
    any_uh = tl.max((uh & n_ok).to(tl.int32)) > 0  # then every query block sees this key block
    r_ts_min = tl.min(tl.where(r & n_ok, ts, float("inf")))  # earliest R key: later queries see it
    n_lo = pid_n * BLOCK_N

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    for g in range(GQA):
        h = hk * GQA + g  # query heads sharing this kv head
        for start_m in range(0, q_len, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_ok = offs_m < q_len
            pos = tl.load(Q_POS + offs_m, mask=m_ok, other=-1).to(tl.int32)
            pos_ok = m_ok & (pos >= 0) & (pos < kv_len)
            q_ts = tl.load(KV_TS + pos, mask=pos_ok, other=0.0)
            # transposed tile (BN, BM): keys along rows
            vis_t = (
                (offs_n[:, None] == pos[None, :]) | uh[:, None] | (r[:, None] & (ts[:, None] < q_ts[None, :]))
            )
            vis_t = vis_t & n_ok[:, None] & m_ok[None, :]
            q_ts_max = tl.max(tl.where(pos_ok, q_ts, float("-inf")))
            pos_lo = tl.min(tl.where(pos_ok, pos, 2147483647))
            pos_hi = tl.max(tl.where(pos_ok, pos, -1))
            if any_uh | (r_ts_min < q_ts_max) | ((pos_hi >= n_lo) & (pos_lo < n_lo + BLOCK_N)):
                md_mask = m_ok[:, None] & d_ok[None, :]
                q = tl.load(
                    Q + offs_m[:, None] * stride_qn + h * stride_qh + offs_d[None, :], mask=md_mask, other=0.0
                )
                do = tl.load(
                    DO + offs_m[:, None] * stride_don + h * stride_doh + offs_d[None, :],
                    mask=md_mask,
                    other=0.0,
                )
                stat = tl.load(STAT + offs_m * (HKV * GQA) + h, mask=m_ok, other=1.0)  # (BM,)
                s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BN, BM)
                dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BN, BM)
                if SILU:
                    x = s_t * scale
                    sig = tl.sigmoid(x)
                    inv_n = 1.0 / stat
                    a_t = tl.where(vis_t, x * sig, 0.0) * inv_n[None, :]
                    ds_t = tl.where(vis_t, dp_t * sig * (1.0 + x * (1.0 - sig)), 0.0) * inv_n[None, :]
                else:
                    delta = tl.load(DELTA + offs_m * (HKV * GQA) + h, mask=m_ok, other=0.0)
                    a_t = tl.exp2(tl.where(vis_t, s_t * qk_scale, float("-inf")) - stat[None, :])
                    ds_t = a_t * (dp_t - delta[None, :])
                dv += tl.dot(a_t.to(do.dtype), do, input_precision=DOT_PRECISION)
                dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    dk = dk * scale
    out_offs = offs_n[:, None] * stride_dkn + offs_d[None, :]
    tl.store(DK + out_offs, dk.to(DK.dtype.element_ty), mask=nd_mask)
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=nd_mask)

