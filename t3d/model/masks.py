"""Block-causal attention masks and the `[prompt | clean | noisy]` training layout.

Blocks are aligned to absolute positions (block = position // B), exactly as the decoder aligns them:
the prompt tail P mod B shares the first generated block. One rule serves training and decoding:

    clean query in block b  -> clean keys in blocks <= b                  (block-causal context)
    noisy query in block b  -> clean keys in blocks <  b  +  noisy keys in block b   (its own block, both ways)

Decoding is the special case "cache = clean, active block = noisy". Because the prompt tail belongs to
the first noisy block, the training layout carries a copy of it in front of the noisy response
(`tail slot`, B-1 columns), so a noisy block never sees its clean twin through the tail's keys.
"""
import torch


def block_attention_mask(q_pos, q_noisy, q_valid, k_pos, k_noisy, k_valid, block_size):
    """Bool mask [b, 1, Q, K], True = may attend. Inputs are [b, Q] / [b, K] tensors.

    Invalid (padding) queries attend only to themselves when Q == K (the same columns), so no row is
    empty (SDPA would return NaN for a row with no visible key); their outputs are never used.
    Built with two [b, Q, K] comparisons: each key gets a code, each query a limit, per rule above.
    """
    big = torch.iinfo(torch.int32).max
    qb, kb = (q_pos // block_size).int(), (k_pos // block_size).int()
    # clean keys: visible when their block < the query's limit (b for noisy queries, b + 1 for clean ones)
    k_clean = torch.where(k_valid & ~k_noisy, kb, big)
    q_limit = torch.where(q_valid, qb + (~q_noisy).int(), -big)
    # noisy keys: visible to noisy queries of the same block (codes never match otherwise)
    k_code = torch.where(k_valid & k_noisy, kb, -2)
    q_code = torch.where(q_valid & q_noisy, qb, -3)
    if q_pos.shape[1] == k_pos.shape[1]:  # a padding column matches only its own key
        ids = -10 - torch.arange(k_pos.shape[1], dtype=torch.int32, device=k_pos.device)
        k_code = torch.where(k_valid, k_code, ids)
        q_code = torch.where(q_valid, q_code, ids)
    return ((k_clean[:, None, :] < q_limit[:, :, None]) | (k_code[:, None, :] == q_code[:, :, None]))[:, None]


def _block_attention_mask_reference(q_pos, q_noisy, q_valid, k_pos, k_noisy, k_valid, block_size):
    """The rule written out directly (for tests): same result as block_attention_mask."""
    qb = (q_pos // block_size)[:, :, None]
    kb = (k_pos // block_size)[:, None, :]
    qn, kn = q_noisy[:, :, None], k_noisy[:, None, :]
    allowed = torch.where(qn, (~kn & (kb < qb)) | (kn & (kb == qb)), ~kn & (kb <= qb))
    mask = allowed & k_valid[:, None, :] & q_valid[:, :, None]
    if q_pos.shape[1] == k_pos.shape[1]:
        mask |= torch.diag_embed(~q_valid)
    return mask[:, None]


def pad_sequences(sequences, pad_id, left=False):
    """List of id lists -> (LongTensor [b, L], lengths [b]); left=True right-aligns (left padding)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    out = torch.full((len(sequences), max((len(s) for s in sequences), default=0)), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):  # one copy per row (collation), not a loop over tokens
        if len(s):
            row = torch.as_tensor(s, dtype=torch.long)
            if left:
                out[i, out.shape[1] - len(s):] = row
            else:
                out[i, : len(s)] = row
    return out, lengths


def training_layout(prompt_ids, prompt_len, response_ids, response_len, noisy_response, block_size):
    """Build one block-diffusion training batch.

    prompt_ids [b, Lp] left-padded, response_ids / noisy_response [b, Lr] right-padded.
    Columns: [prompt (Lp) | clean response (Lr) | tail slot (B-1) | noisy response (Lr)].
    Returns input_ids, position_ids, attention_mask [b,1,N,N] and `noisy_slice`, the columns whose
    logits predict the response (labels = response_ids there, unshifted).
    """
    b, lp = prompt_ids.shape
    lr = response_ids.shape[1]
    t = block_size - 1
    device = prompt_ids.device
    ar_p = torch.arange(lp, device=device)[None]
    ar_r = torch.arange(lr, device=device)[None]
    pl = prompt_len[:, None].to(device)
    # prompt: left-padded, so column c holds position c - (Lp - P)
    p_pos = ar_p - (lp - pl)
    p_valid = p_pos >= 0
    r_pos = pl + ar_r
    r_valid = ar_r < response_len[:, None].to(device)
    # tail slot: copies of the last B-1 prompt columns; only the P mod B tokens in the first block are real
    tail_ids = prompt_ids[:, lp - t:] if t else prompt_ids[:, :0]
    tail_pos = pl - t + torch.arange(t, device=device)[None]
    tail_valid = (tail_pos >= (pl // block_size) * block_size) & (tail_pos >= 0)
    if t > lp:  # prompts shorter than the slot: left-pad the copy
        pad = t - lp
        tail_ids = torch.cat([prompt_ids.new_zeros(b, pad), prompt_ids], 1)
    input_ids = torch.cat([prompt_ids, response_ids, tail_ids, noisy_response], 1)
    position_ids = torch.cat([p_pos, r_pos, tail_pos, r_pos], 1).clamp(min=0)
    valid = torch.cat([p_valid, r_valid, tail_valid, r_valid], 1)
    noisy = torch.zeros_like(valid)
    noisy[:, lp + lr:] = True
    mask = block_attention_mask(position_ids, noisy, valid, position_ids, noisy, valid, block_size)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask,
        "noisy_slice": slice(lp + lr + t, lp + lr + t + lr),
    }
