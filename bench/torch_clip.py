"""The PyTorch side of the trainer benchmark: open_clip's model code, reduced to what `wit bench
train --config tiny` builds (ViT image tower with ln_pre, pre-LN blocks, class-token pooling;
causal text transformer pooled at the end-of-text token; linear projections; learnable
logit_scale), trained with the same step (symmetric cross-entropy, AdamW 0.9/0.98/1e-6 with decay
0.2 on matrices only, clipping at norm 1) on the same synthetic batch shape. Prints `steps/s: N`
and `samples/s: N` like wit. Run with the bench's torch venv: bench/run.sh --with-torch.
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """open_clip's ResidualAttentionBlock: pre-LN attention and GELU MLP."""

    def __init__(self, width, heads, mlp_ratio=4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x, mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Clip(nn.Module):
    """The `tiny` config: 64 px images in 8 px patches, width 128, 4 layers and 4 heads per tower."""

    def __init__(self, vocab, image=64, patch=8, width=128, layers=4, heads=4, context=32, embed=128):
        super().__init__()
        grid = image // patch
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.vis_pos = nn.Parameter(torch.randn(grid * grid + 1, width) * 0.01)
        self.ln_pre = nn.LayerNorm(width)
        self.vis_blocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.vis_proj = nn.Linear(width, embed, bias=False)
        self.token_embedding = nn.Embedding(vocab, width)
        self.txt_pos = nn.Parameter(torch.randn(context, width) * 0.01)
        self.txt_blocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        self.txt_proj = nn.Linear(width, embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.context = context
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def encode_image(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], 1) + self.vis_pos)
        for b in self.vis_blocks:
            x = b(x)
        return F.normalize(self.vis_proj(self.ln_post(x[:, 0])), dim=-1)

    def encode_text(self, tokens):
        tokens = tokens[:, : self.context]
        x = self.token_embedding(tokens) + self.txt_pos[: tokens.shape[1]]
        for b in self.txt_blocks:
            x = b(x, self.mask[: tokens.shape[1], : tokens.shape[1]])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        return F.normalize(self.txt_proj(x), dim=-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--caption-tokens", type=int, default=16)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Clip(args.vocab_size)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
    )
    b, v = args.batch_size, args.vocab_size
    images = torch.randn(b, 3, 64, 64)
    tokens = torch.zeros(b, 77, dtype=torch.long)
    tokens[:, 0] = v - 2
    tokens[:, 1 : 1 + args.caption_tokens] = torch.randint(1, v - 2, (b, args.caption_tokens))
    tokens[:, 1 + args.caption_tokens] = v - 1
    labels = torch.arange(b)

    def step():
        img = model.encode_image(images)
        txt = model.encode_text(tokens)
        logits = model.logit_scale.exp() * img @ txt.t()
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    for _ in range(args.warmup_steps):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    secs = time.perf_counter() - start
    print(f"torch: {torch.__version__} threads {torch.get_num_threads()}")
    print(f"steps/s: {args.steps / secs:.4f}")
    print(f"samples/s: {args.steps * b / secs:.1f}")


if __name__ == "__main__":
    main()
