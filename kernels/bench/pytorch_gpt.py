#!/usr/bin/env python3
"""The PyTorch reference for `upcycle bench --device cuda`: the same GPT (and its MoE form), the
same batch, the same FLOP formula, timed in PyTorch eager and torch.compile, bf16 autocast,
fused AdamW. Run it in the same device call as `upcycle bench`, so the ratio between the two is
measured under the same conditions. It also measures the bf16 matmul peak (a large square GEMM)
that both MFU figures are set against.

    python3 kernels/bench/pytorch_gpt.py --model gpt-124m --batch 64 --micro-batch 16
    python3 kernels/bench/pytorch_gpt.py --experts 8 --k 2 --capacity-factor 1.25 --json

The model is upcycle's (DESIGN.md, "Models"): learned positions, pre-LayerNorm blocks, causal
multi-head attention (scaled_dot_product_attention), MLP 4C with tanh-GELU, tied embedding.
MoE (--experts E): every other block's MLP (blocks 1, 3, 5, ... zero-based) becomes E experts
with a bias-free router, softmax then top-k, capacity ceil(k*tokens*cf/E) per micro-batch,
tokens past capacity dropped in token order (they ride the residual), like upcycle's topk
router; the Switch aux and z losses are added as upcycle does (coefficients 0.01, 0.001).

FLOPs (core/flops.h, the one formula): forward per token = 2 * matmul weights + attention,
matmul weights = dense blocks * 12C^2 + MoE blocks * (4C^2 + k*8C^2 + E*C) + V*C, attention =
L * 4 * T * C; training = 3 * forward. MFU = training FLOPs per step / median step seconds /
the measured bf16 matmul peak.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # name: (V, T, C, L, H, batch), as core/config.cpp's model presets
    "gpt-tiny": (256, 128, 128, 4, 4, 16),
    "gpt-small": (256, 256, 512, 8, 8, 8),
    "gpt-124m": (50304, 1024, 768, 12, 12, 8),
}


class Attention(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)

    def forward(self, x):  # x [B, T, C]
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Mlp(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.fc = nn.Linear(C, 4 * C)
        self.proj = nn.Linear(4 * C, C)

    def forward(self, x):  # returns (output, auxiliary loss): a dense MLP has none
        return self.proj(F.gelu(self.fc(x), approximate="tanh")), x.new_zeros(())


class Moe(nn.Module):
    """Top-k token choice with a static capacity (shapes fixed, so torch.compile traces it)."""

    def __init__(self, C, E, k, capacity_factor):
        super().__init__()
        self.E, self.k, self.cf = E, k, capacity_factor
        self.router = nn.Linear(C, E, bias=False)
        self.fc_w = nn.Parameter(torch.empty(E, C, 4 * C))  # experts' weights, [E, in, out]
        self.fc_b = nn.Parameter(torch.zeros(E, 1, 4 * C))
        self.proj_w = nn.Parameter(torch.empty(E, 4 * C, C))
        self.proj_b = nn.Parameter(torch.zeros(E, 1, C))
        for w in (self.fc_w, self.proj_w):
            nn.init.normal_(w, std=0.02)

    def forward(self, x):  # x [B, T, C]; returns (output, auxiliary losses)
        B, T, C = x.shape
        N, E, K = B * T, self.E, self.k
        tokens = x.reshape(N, C)
        logits = self.router(tokens).float()  # [N, E]
        probs = logits.softmax(dim=-1)
        weight, expert = probs.topk(K, dim=-1)  # [N, K] softmax then top-k (the paper's)
        capacity = math.ceil(K * N * self.cf / E)
        # each (token, slot)'s position in its expert's queue, in token order, slot 0 first
        onehot = F.one_hot(expert.t().reshape(-1), E)  # [K*N, E], slot-major
        position = (onehot.cumsum(0) - 1).gather(1, expert.t().reshape(-1, 1)).view(K, N).t()
        kept = position < capacity  # [N, K]
        slot = torch.where(kept, expert * capacity + position, torch.full_like(position, E * capacity))
        rows = tokens.new_zeros(E * capacity + 1, C)  # the last row takes the dropped slots
        rows = rows.index_copy(0, slot.reshape(-1), tokens.repeat_interleave(K, dim=0))
        h = rows[:-1].view(E, capacity, C)
        h = F.gelu(torch.baddbmm(self.fc_b, h, self.fc_w), approximate="tanh")
        out = torch.baddbmm(self.proj_b, h, self.proj_w).view(E * capacity, C)
        out = torch.cat([out, out.new_zeros(1, C)])
        combined = (out[slot.reshape(-1)].view(N, K, C) * (weight * kept).unsqueeze(-1).to(out.dtype)).sum(1)
        # Switch load balancing E * sum_e f_e * P_e, and the router z-loss
        fraction = onehot.view(K, N, E)[0].float().mean(0)
        aux = 0.01 * E * (fraction * probs.mean(0)).sum() + 0.001 * logits.logsumexp(-1).pow(2).mean()
        return combined.view(B, T, C), aux


class Block(nn.Module):
    def __init__(self, C, H, moe):
        super().__init__()
        self.ln1 = nn.LayerNorm(C)
        self.attn = Attention(C, H)
        self.ln2 = nn.LayerNorm(C)
        self.mlp = moe if moe is not None else Mlp(C)

    def forward(self, x):  # returns (x, auxiliary loss)
        x = x + self.attn(self.ln1(x))
        y, aux = self.mlp(self.ln2(x))
        return x + y, aux


class Gpt(nn.Module):
    def __init__(self, V, T, C, L, H, experts, k, capacity_factor):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(
            Block(C, H, Moe(C, experts, k, capacity_factor) if experts and i % 2 == 1 else None)
            for i in range(L)
        )
        self.lnf = nn.LayerNorm(C)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):  # idx, targets [B, T]
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        aux_total = 0
        for block in self.blocks:
            x, aux = block(x)
            aux_total = aux_total + aux
        logits = F.linear(self.lnf(x), self.wte.weight)  # tied head
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        return loss + aux_total


def training_flops_per_token(V, T, C, L, experts, k):
    moe_blocks = L // 2 if experts else 0
    dense_blocks = L - moe_blocks
    moe_weights = 4 * C * C + k * 8 * C * C + experts * C
    weights = dense_blocks * 12 * C * C + moe_blocks * moe_weights + V * C
    return 3 * (2 * weights + L * 4 * T * C)


def measured_bf16_peak(n=8192, repeats=20):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def time_steps(model, optimizer, batch, micro, T, V, steps, warmup):
    parts = batch // micro
    idx = torch.randint(0, V, (micro, T), device="cuda")
    targets = torch.randint(0, V, (micro, T), device="cuda")
    times = []
    for step in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(parts):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(idx, targets) / parts
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt-124m", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--experts", type=int, default=0)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", default="eager,compile", help="eager, compile, or both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", help="also write what is printed to this file")
    args = parser.parse_args()
    V, T, C, L, H, _ = PRESETS[args.model]
    if args.batch % args.micro_batch:
        parser.error("--micro-batch must divide --batch")
    torch.manual_seed(1)
    torch.backends.cuda.matmul.allow_tf32 = False  # bf16 autocast carries the GEMMs
    peak = measured_bf16_peak()
    flops_step = training_flops_per_token(V, T, C, L, args.experts, args.k) * args.batch * T
    results = {"model": args.model, "batch": args.batch, "micro_batch": args.micro_batch,
               "experts": args.experts, "k": args.k, "capacity_factor": args.capacity_factor,
               "torch": torch.__version__, "device": torch.cuda.get_device_name(),
               "measured_bf16_peak_tflops": peak / 1e12, "training_flops_per_step": flops_step}
    for mode in args.modes.split(","):
        model = Gpt(V, T, C, L, H, args.experts, args.k, args.capacity_factor).cuda()
        # weight decay on matrices only, as upcycle (the experts' stacked biases are not)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.endswith("_b")]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n.endswith("_b")]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
        runner = torch.compile(model) if mode == "compile" else model
        step = time_steps(runner, optimizer, args.batch, args.micro_batch, T, V, args.steps,
                          args.warmup)
        results[mode] = {"median_step_seconds": step,
                         "tokens_per_second": args.batch * T / step,
                         "achieved_tflops": flops_step / step / 1e12,
                         "mfu": flops_step / step / peak}
        del model, optimizer, runner
        torch.cuda.empty_cache()
    lines = []
    if args.json:
        lines.append(json.dumps(results, indent=2))
    else:
        lines = report_lines(args, results, peak)
    print("\n".join(lines))
    if args.log:
        with open(args.log, "w") as log:
            log.write("\n".join(lines) + "\n")


def report_lines(args, results, peak):
    lines = []
    kind = f"MoE E{args.experts} top-{args.k} cf {args.capacity_factor}" if args.experts else "dense"
    lines.append(f"pytorch {results['torch']} on {results['device']}: {args.model} {kind}, "
                 f"batch {args.batch} in micro-batches of {args.micro_batch}, bf16 autocast, "
                 f"fused AdamW")
    lines.append(f"measured bf16 matmul peak (8192^3): {peak / 1e12:.1f} TFLOP/s")
    for mode in args.modes.split(","):
        r = results[mode]
        lines.append(f"pytorch {mode:7s}: median step {r['median_step_seconds'] * 1e3:.2f} ms, "
                     f"{r['tokens_per_second']:.0f} tokens/s, {r['achieved_tflops']:.1f} "
                     f"TFLOP/s, MFU {100 * r['mfu']:.1f}%")
    lines.append("MFU = training FLOPs per step (3 x forward, core/flops.h) / median step / "
                 "measured peak")
    return lines


if __name__ == "__main__":
    main()
