"""open_clip's ModifiedResNet in eval mode, written again in NumPy, as the reference for the
ResNet tower's interop test.

Usage: modified_resnet.py EXPORT_DIR IMAGES WIT_FEATURES N SIZE
  EXPORT_DIR    a `wit train` export (model.safetensors with visual.* tensors, config.json)
  IMAGES        N x 3 x SIZE x SIZE little-endian f32, raw
  WIT_FEATURES  N x embed_dim little-endian f32, raw: what wit computed for IMAGES

Prints JSON: the largest difference between wit's features and NumPy's, the largest feature
magnitude, and, when torch and open_clip import (not in the test venv; the benchmark's is one),
the largest difference between open_clip's own ModifiedResNet and NumPy on the same weights.
"""

import json
import struct
import sys

import numpy as np

BN_EPS = 1e-5


def load_safetensors(path):
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        kind = {"F32": "<f4", "I64": "<i8"}[meta["dtype"]]
        start, end = meta["data_offsets"]
        raw = np.frombuffer(data[start:end], dtype=kind).reshape(meta["shape"])
        tensors[name] = raw.astype(np.float64) if kind == "<f4" else raw.copy()
    return tensors


def conv(x, w, stride=1):
    """NCHW convolution, zero padding k // 2, no bias."""
    n, _, h, wd = x.shape
    k = w.shape[2]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ho, wo = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    for dy in range(k):
        for dx in range(k):
            tap = xp[:, :, dy : dy + stride * ho : stride, dx : dx + stride * wo : stride]
            out += np.einsum("nchw,oc->nohw", tap, w[:, :, dy, dx])
    return out


def batch_norm(x, t, name):
    shape = (1, -1, 1, 1)
    mean = t[f"{name}.running_mean"].reshape(shape)
    var = t[f"{name}.running_var"].reshape(shape)
    gain, bias = t[f"{name}.weight"].reshape(shape), t[f"{name}.bias"].reshape(shape)
    return (x - mean) / np.sqrt(var + BN_EPS) * gain + bias


def relu(x):
    return np.maximum(x, 0.0)


def avg_pool(x, s):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // s, s, w // s, s).mean(axis=(3, 5))


def bottleneck(x, t, name, stride):
    out = relu(batch_norm(conv(x, t[f"{name}.conv1.weight"]), t, f"{name}.bn1"))
    out = relu(batch_norm(conv(out, t[f"{name}.conv2.weight"]), t, f"{name}.bn2"))
    if stride > 1:
        out = avg_pool(out, stride)
    out = batch_norm(conv(out, t[f"{name}.conv3.weight"]), t, f"{name}.bn3")
    identity = x
    if f"{name}.downsample.0.weight" in t:
        if stride > 1:
            identity = avg_pool(identity, stride)
        identity = conv(identity, t[f"{name}.downsample.0.weight"])
        identity = batch_norm(identity, t, f"{name}.downsample.1")
    return relu(out + identity)


def attention_pool(x, t, heads):
    p = "visual.attnpool"
    n, c, h, w = x.shape
    tokens = x.reshape(n, c, h * w).transpose(0, 2, 1)
    tokens = np.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
    tokens = tokens + t[f"{p}.positional_embedding"]

    def proj(name, rows):
        return rows @ t[f"{p}.{name}.weight"].T + t[f"{p}.{name}.bias"]

    d = c // heads

    def split(rows):
        return rows.reshape(n, rows.shape[1], heads, d).transpose(0, 2, 1, 3)

    q, k, v = split(proj("q_proj", tokens)), split(proj("k_proj", tokens)), split(proj("v_proj", tokens))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = scores / scores.sum(axis=-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(n, -1, c)
    return proj("c_proj", out[:, 0])


def modified_resnet(images, t, cfg):
    v = cfg["vision_cfg"]
    x = images
    for i, stride in [(1, 2), (2, 1), (3, 1)]:
        x = relu(batch_norm(conv(x, t[f"visual.conv{i}.weight"], stride), t, f"visual.bn{i}"))
    x = avg_pool(x, 2)
    for stage, blocks in enumerate(v["layers"]):
        for j in range(blocks):
            stride = 2 if stage > 0 and j == 0 else 1
            x = bottleneck(x, t, f"visual.layer{stage + 1}.{j}", stride)
    return attention_pool(x, t, heads(cfg))


def heads(cfg):
    v = cfg["vision_cfg"]
    return v.get("heads") or v["width"] * 32 // v.get("head_width", 64)


def open_clip_features(images, t, cfg):
    try:
        import torch
        from open_clip.modified_resnet import ModifiedResNet
    except ImportError:
        return None
    v = cfg["vision_cfg"]
    model = ModifiedResNet(v["layers"], cfg["embed_dim"], heads(cfg), v["image_size"], v["width"])
    state = {k[len("visual.") :]: torch.from_numpy(a) for k, a in t.items() if k.startswith("visual.")}
    model.double().eval().load_state_dict(state, strict=True)
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def main():
    export, images_path, features_path, n, size = sys.argv[1:6]
    n, size = int(n), int(size)
    t = load_safetensors(f"{export}/model.safetensors")
    cfg = json.load(open(f"{export}/config.json"))["open_clip"]
    images = np.fromfile(images_path, dtype="<f4").reshape(n, 3, size, size).astype(np.float64)
    wit = np.fromfile(features_path, dtype="<f4").reshape(n, -1).astype(np.float64)
    reference = modified_resnet(images, t, cfg)
    report = {
        "max_diff": float(np.abs(wit - reference).max()),
        "max_abs": float(np.abs(reference).max()),
        "open_clip_max_diff": None,
    }
    theirs = open_clip_features(images, t, cfg)
    if theirs is not None:
        report["open_clip_max_diff"] = float(np.abs(theirs - reference).max())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
