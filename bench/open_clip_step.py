"""open_clip's training step on synthetic pairs: the peer `wit bench train` is compared with on a GPU.

Same work as `wit bench train`: Gaussian images, captions of `--caption-tokens` random ids between
the start and end tokens, zero-padded to the context length (77); symmetric CLIP loss; AdamW (betas 0.9/0.98, eps 1e-6,
weight decay 0.2 off gains, biases and logit_scale); gradient clipping at norm 1; logit_scale
clamped to ln(100). `--precision amp_bf16` is open_clip's bf16 autocast over f32 master weights,
wit's CUDA default. Prints `samples/s: N` and `peak_mem_mib: N` (torch's allocator peak).
"""

import argparse
import math
import time

import open_clip
import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument(
        "--model-config",
        help="an open_clip model JSON to register first (its file name without .json is --model)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--caption-tokens", type=int, default=16)
    p.add_argument("--precision", default="amp_bf16", choices=["amp_bf16", "fp32"])
    p.add_argument("--device", default="cuda")
    return p.parse_args()


def synthetic_batch(model_cfg, args, device):
    side = model_cfg["vision_cfg"]["image_size"]
    vocab = model_cfg["text_cfg"].get("vocab_size", 49408)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, side, side, generator=g)
    context = model_cfg["text_cfg"].get("context_length", 77)
    tokens = torch.zeros(args.batch_size, context, dtype=torch.long)
    tokens[:, 0] = vocab - 2
    n = args.caption_tokens
    tokens[:, 1 : n + 1] = torch.randint(1, vocab - 2, (args.batch_size, n), generator=g)
    tokens[:, n + 1] = vocab - 1
    return images.to(device), tokens.to(device)


def optimizer(model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.2}]
    return torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6)


def main():
    args = parse_args()
    device = torch.device(args.device)
    if args.model_config:
        open_clip.add_model_config(args.model_config)
    model = open_clip.create_model(args.model, device=device, precision="fp32")
    model.train()
    images, tokens = synthetic_batch(open_clip.get_model_config(args.model), args, device)
    loss_fn = open_clip.ClipLoss()
    opt = optimizer(model)
    autocast = args.precision == "amp_bf16" and device.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(images, tokens)  # (image_features, text_features, logit_scale)
            loss = loss_fn(*out[:3])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss

    for _ in range(args.warmup_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    print(f"model: {args.model} batch {args.batch_size} precision {args.precision}")
    print(f"steps/s: {args.steps / secs:.4f}")
    print(f"samples/s: {args.steps * args.batch_size / secs:.1f}")
    if device.type == "cuda":
        print(f"peak_mem_mib: {torch.cuda.max_memory_allocated() / 2**20:.0f}")


if __name__ == "__main__":
    main()
