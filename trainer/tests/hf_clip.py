"""Hugging Face's CLIPModel (transformers' modeling_clip.py) written again in NumPy, as the
reference for the ViT export's interop test: it reads only the export's files, by their HF names
and `config.json` fields, so a wrong name, shape, activation or pooling rule shows as a difference.

Usage: hf_clip.py EXPORT_DIR IMAGES TOKENS WIT_IMAGE WIT_TEXT N SIZE LENGTH
  EXPORT_DIR  a `wit train` export of a ViT CLIP (model.safetensors, config.json)
  IMAGES      N x 3 x SIZE x SIZE little-endian f32, raw
  TOKENS      N x LENGTH little-endian u32 token ids, raw
  WIT_IMAGE   N x projection_dim f32: wit's L2-normalised image embeddings for IMAGES
  WIT_TEXT    N x projection_dim f32: wit's L2-normalised text embeddings for TOKENS

Prints JSON: the largest difference between wit's embeddings and NumPy's, and, when torch and
transformers import (not in the test venv), the largest difference between
`CLIPModel.from_pretrained(EXPORT_DIR)`'s embeddings and NumPy's.
"""

import json
import math
import sys

import numpy as np
from modified_resnet import load_safetensors


def layer_norm(x, t, name, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * t[f"{name}.weight"] + t[f"{name}.bias"]


def linear(x, t, name):
    y = x @ t[f"{name}.weight"].T
    bias = t.get(f"{name}.bias")
    return y if bias is None else y + bias


def activation(x, kind):
    if kind == "quick_gelu":
        return x / (1.0 + np.exp(-1.702 * x))
    assert kind == "gelu", kind
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def attention(x, t, name, heads, causal):
    b, n, width = x.shape
    d = width // heads

    def split(rows):
        return rows.reshape(b, n, heads, d).transpose(0, 2, 1, 3)

    q = split(linear(x, t, f"{name}.q_proj") * d**-0.5)
    k, v = split(linear(x, t, f"{name}.k_proj")), split(linear(x, t, f"{name}.v_proj"))
    scores = q @ k.transpose(0, 1, 3, 2)
    if causal:
        scores = scores + np.triu(np.full((n, n), -np.inf), 1)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    p = scores / scores.sum(-1, keepdims=True)
    out = (p @ v).transpose(0, 2, 1, 3).reshape(b, n, width)
    return linear(out, t, f"{name}.out_proj")


def encoder(x, t, prefix, cfg, causal):
    eps = cfg["layer_norm_eps"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}.encoder.layers.{i}"
        h = layer_norm(x, t, f"{p}.layer_norm1", eps)
        x = x + attention(h, t, f"{p}.self_attn", cfg["num_attention_heads"], causal)
        h = layer_norm(x, t, f"{p}.layer_norm2", eps)
        h = activation(linear(h, t, f"{p}.mlp.fc1"), cfg["hidden_act"])
        x = x + linear(h, t, f"{p}.mlp.fc2")
    return x


def image_embeds(images, t, cfg):
    b, _, size, _ = images.shape
    p = cfg["patch_size"]
    g = size // p
    w = t["vision_model.embeddings.patch_embedding.weight"]
    patches = images.reshape(b, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)
    x = patches @ w.reshape(w.shape[0], -1).T
    cls = np.broadcast_to(t["vision_model.embeddings.class_embedding"], (b, 1, w.shape[0]))
    x = np.concatenate([cls, x], 1) + t["vision_model.embeddings.position_embedding.weight"]
    x = layer_norm(x, t, "vision_model.pre_layrnorm", cfg["layer_norm_eps"])
    x = encoder(x, t, "vision_model", cfg, causal=False)
    pooled = layer_norm(x[:, 0], t, "vision_model.post_layernorm", cfg["layer_norm_eps"])
    return linear(pooled, t, "visual_projection")


def text_embeds(tokens, t, cfg):
    n = tokens.shape[1]
    x = t["text_model.embeddings.token_embedding.weight"][tokens]
    x = x + t["text_model.embeddings.position_embedding.weight"][:n]
    x = encoder(x, t, "text_model", cfg, causal=True)
    x = layer_norm(x, t, "text_model.final_layer_norm", cfg["layer_norm_eps"])
    eos = cfg["eos_token_id"]
    # transformers' rule: the legacy id 2 means "the largest id"; otherwise the first eos.
    ends = tokens.argmax(-1) if eos == 2 else (tokens == eos).argmax(-1)
    return linear(x[np.arange(len(tokens)), ends], t, "text_projection")


def normalised(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def transformers_embeds(export, images, tokens):
    try:
        import torch
        from transformers import CLIPModel
    except ImportError:
        return None
    model = CLIPModel.from_pretrained(export, torch_dtype=torch.float64).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(images))
    return out.image_embeds.numpy(), out.text_embeds.numpy()


def read_inputs(argv):
    """The folder and the arrays the command line names (the usage above): images, token ids, and
    wit's image and text embeddings."""
    folder, images_path, tokens_path, wit_image_path, wit_text_path = argv[1:6]
    n, size, length = (int(a) for a in argv[6:9])
    images = np.fromfile(images_path, dtype="<f4").reshape(n, 3, size, size).astype(np.float64)
    tokens = np.fromfile(tokens_path, dtype="<u4").reshape(n, length).astype(np.int64)
    wit_image = np.fromfile(wit_image_path, dtype="<f4").reshape(n, -1).astype(np.float64)
    wit_text = np.fromfile(wit_text_path, dtype="<f4").reshape(n, -1).astype(np.float64)
    return folder, images, tokens, (wit_image, wit_text)


def print_report(wit, ours, theirs, peer):
    """Prints the JSON report: wit against NumPy per tower, and NumPy against the peer library
    under `peer` (null when it did not run)."""
    report = {
        "image_max_diff": float(np.abs(wit[0] - ours[0]).max()),
        "text_max_diff": float(np.abs(wit[1] - ours[1]).max()),
        peer: None,
    }
    if theirs is not None:
        report[peer] = float(max(np.abs(a - b).max() for a, b in zip(theirs, ours)))
    print(json.dumps(report))


def main():
    export, images, tokens, wit = read_inputs(sys.argv)
    t = load_safetensors(f"{export}/model.safetensors")
    cfg = json.load(open(f"{export}/config.json"))
    image = normalised(image_embeds(images, t, cfg["vision_config"]))
    text = normalised(text_embeds(tokens, t, cfg["text_config"]))
    theirs = transformers_embeds(export, images, tokens)
    print_report(wit, (image, text), theirs, "transformers_max_diff")


if __name__ == "__main__":
    main()
