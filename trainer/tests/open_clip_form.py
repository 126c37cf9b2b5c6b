"""The open_clip form of a wit model (`wit export`: open_clip_model.safetensors under open_clip's
state-dict names + open_clip_config.json) read back two ways, as the reference for its interop test.

NumPy: open_clip's layout undone by open_clip's documented rules (packed `in_proj_*` split into
q, k, v; `proj` matrices used as `x @ proj`), then the NumPy CLIPModel of hf_clip.py, with the
image tower of modified_resnet.py for a ResNet. open_clip itself, when torch and open_clip import
(not in the test venv): `create_model_and_transforms("local-dir:DIR")`, which loads strictly.

Usage: open_clip_form.py DIR IMAGES TOKENS WIT_IMAGE WIT_TEXT N SIZE LENGTH
(the files as hf_clip.py takes them). Prints JSON: the largest difference between wit's embeddings
and NumPy's per tower, and between open_clip's and NumPy's (null without open_clip).
"""

import json
import sys

import numpy as np
from hf_clip import image_embeds, normalised, print_report, read_inputs, text_embeds
from modified_resnet import load_safetensors, modified_resnet

BLOCK_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}

PLAIN = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}


def block_to_hf(name, a, out):
    """`[visual.]transformer.resblocks.I.PART` into the HF block names (q, k, v unpacked)."""
    tower = "vision_model" if name.startswith("visual.") else "text_model"
    rest = name.split("transformer.resblocks.", 1)[1]
    layer, part = rest.split(".", 1)
    prefix = f"{tower}.encoder.layers.{layer}"
    if part.startswith("attn.in_proj_"):
        kind = part.rsplit("_", 1)[1]
        for proj, chunk in zip(["q_proj", "k_proj", "v_proj"], np.split(a, 3, axis=0)):
            out[f"{prefix}.self_attn.{proj}.{kind}"] = chunk
        return
    module, kind = part.rsplit(".", 1)
    out[f"{prefix}.{BLOCK_PARTS[module]}.{kind}"] = a


def to_hf(t, vit):
    """open_clip's state dict under HF CLIP names; a ResNet's `visual.*` tensors stay as they are."""
    out = {}
    for name, a in t.items():
        if name == "visual.proj":
            out["visual_projection.weight"] = a.T
        elif name == "text_projection":
            out["text_projection.weight"] = a.T
        elif "transformer.resblocks." in name:
            block_to_hf(name, a, out)
        elif name in PLAIN and (vit or not name.startswith("visual.")):
            out[PLAIN[name]] = a
        elif name.startswith("visual."):
            out[name] = a
        else:
            raise KeyError(f"unexpected open_clip tensor {name}")
    return out


def hf_configs(model_cfg):
    """The fields hf_clip.py reads, from open_clip's model_cfg."""
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    vision = {
        "patch_size": v.get("patch_size"),
        "layer_norm_eps": 1e-5,
        "hidden_act": act,
        "num_hidden_layers": v["layers"],
        "num_attention_heads": v["width"] // v.get("head_width", 64),
    }
    # pool_type "argmax" is the rule transformers keeps for eos_token_id 2.
    eos = t["eos_id"] if t.get("pool_type") == "eos" else 2
    text = {
        "layer_norm_eps": 1e-5,
        "hidden_act": act,
        "num_hidden_layers": t["layers"],
        "num_attention_heads": t["heads"],
        "eos_token_id": eos,
    }
    return vision, text


def open_clip_embeds(folder, images, tokens):
    try:
        import open_clip
        import torch
    except ImportError:
        return None
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model = model.double().eval()
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(images), normalize=True)
        text = model.encode_text(torch.from_numpy(tokens), normalize=True)
    return image.numpy(), text.numpy()


def main():
    folder, images, tokens, wit = read_inputs(sys.argv)
    model_cfg = json.load(open(f"{folder}/open_clip_config.json"))["model_cfg"]
    vit = isinstance(model_cfg["vision_cfg"]["layers"], int)
    t = to_hf(load_safetensors(f"{folder}/open_clip_model.safetensors"), vit)
    vision_cfg, text_cfg = hf_configs(model_cfg)
    if vit:
        image = image_embeds(images, t, vision_cfg)
    else:
        image = modified_resnet(images, t, model_cfg)
    ours = normalised(image), normalised(text_embeds(tokens, t, text_cfg))
    theirs = open_clip_embeds(folder, images, tokens)
    print_report(wit, ours, theirs, "open_clip_max_diff")


if __name__ == "__main__":
    main()
