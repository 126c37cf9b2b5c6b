//! `wit train` and `wit eval` end to end on real WebDataset shards of test-web scenes: the
//! checkpoint folder is a Hugging Face CLIP export (names read back by Python from the raw
//! safetensors header), the log has a line per step, and eval writes the documented JSON.

use crate::common::{python, scratch, wit, wit_ok};
use rand::SeedableRng;
use std::path::Path;
use webimagetext::testweb::scene::{caption, render, Scene};

/// Renders `n` random scenes as PNG + caption files, then packs them with Python's tarfile into a
/// WebDataset shard (members sorted by key, as webdataset writes them). With `restyled`, every
/// third sample is the scene before it again, rendered anew, its caption capitalised and ended
/// with a period (as the test web's pages write some alts). Returns the captions written.
fn write_shard(dir: &Path, name: &str, n: usize, seed: u64, restyled: bool) -> Vec<String> {
    let staging = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&staging).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut captions: Vec<String> = Vec::new();
    let mut previous = None;
    for i in 0..n {
        let (scene, text) = match previous {
            Some(scene) if restyled && i % 3 == 2 => {
                let text = caption(&scene);
                (
                    scene,
                    format!("{}{}.", text[..1].to_uppercase(), &text[1..]),
                )
            }
            _ => {
                let scene = Scene::random(&mut rng, i % 2 == 0);
                (scene, caption(&scene))
            }
        };
        previous = Some(scene);
        let key = format!("{:09}", seed * 10_000 + i as u64);
        render(&scene, 96, 96, seed + i as u64)
            .save(staging.join(format!("{key}.png")))
            .unwrap();
        std::fs::write(staging.join(format!("{key}.txt")), &text).unwrap();
        captions.push(text);
    }
    let script = "import os, sys, tarfile\nsrc, out = sys.argv[1], sys.argv[2]\nwith tarfile.open(out, 'w') as t:\n    for f in sorted(os.listdir(src)):\n        t.add(os.path.join(src, f), arcname=f)\n";
    python(
        script,
        &[
            staging.to_str().unwrap(),
            dir.join(format!("{name}.tar")).to_str().unwrap(),
        ],
    );
    captions
}

/// Each tensor's shape in a safetensors file, as Python reads its header.
fn safetensors_shapes(path: &Path) -> serde_json::Value {
    let header = python(
        "import json, struct, sys\nb = open(sys.argv[1], 'rb').read()\nn = struct.unpack('<Q', b[:8])[0]\nh = json.loads(b[8:8 + n])\nprint(json.dumps({k: v['shape'] for k, v in h.items() if k != '__metadata__'}))",
        &[path.to_str().unwrap()],
    );
    serde_json::from_str(&header).unwrap()
}

/// The `wit train` flags every test here runs with (batch 8, one warmup step, a 300-id tokenizer,
/// one loader thread, no progress bar) on `shard` into `out`, then `extra`.
fn train_args<'a>(shard: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        shard.to_str().unwrap(),
        "--batch-size",
        "8",
        "--warmup",
        "1",
        "--vocab-size",
        "300",
        "--threads",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs `wit eval` on the run folder `run` against `shard` with `extra` flags; returns the JSON
/// report it writes (`--json`).
fn eval_report(run: &Path, shard: &Path, extra: &[&str]) -> serde_json::Value {
    let json = run.with_extension("eval.json");
    let mut args = vec![
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        shard.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    wit_ok(&args);
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

#[test]
fn train_writes_a_hugging_face_checkpoint_and_eval_reports_the_documented_json() {
    let tmp = scratch();
    let data = tmp.path();
    write_shard(data, "train-0", 48, 1, false);
    let eval_captions = write_shard(data, "eval-0", 24, 2, true);
    // A restyled caption is the same caption: pairs are counted by lowercased text, final
    // period dropped.
    let distinct: std::collections::HashSet<String> = eval_captions
        .iter()
        .map(|c| c.trim_end_matches('.').to_lowercase())
        .collect();
    assert!(distinct.len() < eval_captions.len());
    let out = data.join("run");
    let shard = data.join("train-0.tar");
    let flags = [
        "--config",
        "tiny",
        "--steps",
        "3",
        "--accum",
        "2",
        "--lr",
        "1e-3",
        "--save-every",
        "2",
    ];
    wit_ok(&train_args(&shard, &out, &flags));
    for f in [
        "model.safetensors",
        "config.json",
        "resume-00000003.safetensors",
        "trainer_state.json",
        "tokenizer.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing from the checkpoint");
    }
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    let shapes = safetensors_shapes(&out.join("model.safetensors"));
    assert_eq!(
        shapes["vision_model.embeddings.patch_embedding.weight"],
        serde_json::json!([128, 3, 8, 8])
    );
    assert_eq!(
        shapes["text_model.encoder.layers.3.mlp.fc2.weight"],
        serde_json::json!([128, 512])
    );
    assert_eq!(shapes["logit_scale"], serde_json::json!([]));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "clip");
    // transformers' CLIPModel pools the text at the first `eos_token_id`, or at the highest id
    // when that is 2: the trained tokenizer's end token must be the export's and the highest id.
    let text = &config["text_config"];
    let eos = text["eos_token_id"].as_u64().unwrap();
    assert_eq!(eos + 1, text["vocab_size"].as_u64().unwrap(), "{text}");
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer.json")).unwrap()).unwrap();
    let end = tokenizer["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["content"] == "<|endoftext|>")
        .expect("an end token");
    assert_eq!(end["id"].as_u64(), Some(eos));

    let report = eval_report(
        &out,
        &data.join("eval-0.tar"),
        &[
            "--labels",
            "circle,square,triangle,star,cross",
            "--misses",
            "1000",
        ],
    );
    assert_eq!(
        report["n"].as_u64(),
        Some(distinct.len() as u64),
        "{report}"
    );
    // Three training steps leave most captions missing their image: each listed once, with
    // another pair's caption.
    let misses = report["text_to_image_misses"].as_array().unwrap();
    let r1 = report["text_to_image"]["r1"].as_f64().unwrap();
    let n = distinct.len() as f64;
    assert_eq!(misses.len() as f64, (n - r1 * n).round(), "{report}");
    for m in misses {
        assert_ne!(m["caption"], m["retrieved"], "{m}");
        assert!(eval_captions
            .iter()
            .any(|c| Some(c.as_str()) == m["retrieved"].as_str()));
    }
    for dir in ["image_to_text", "text_to_image"] {
        for k in ["r1", "r5", "r10"] {
            let r = report[dir][k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&r), "{dir}.{k} = {r}");
        }
        assert!(report[dir]["r10"].as_f64() >= report[dir]["r1"].as_f64());
    }
    for attr in ["colour", "shape", "count", "background"] {
        let a = report["minimal_edit"][attr]
            .as_f64()
            .unwrap_or_else(|| panic!("no minimal_edit.{attr}: {report}"));
        assert!((0.0..=1.0).contains(&a));
    }
    assert!(report["zero_shot"]["n"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn a_resnet_image_tower_trains_and_evaluates_through_the_cli() {
    let tmp = scratch();
    let data = tmp.path();
    write_shard(data, "train-0", 24, 3, false);
    write_shard(data, "eval-0", 12, 4, false);
    let out = data.join("run");
    let shard = data.join("train-0.tar");
    // Also with open_clip's data flags: shards drawn with replacement, epochs of 16 samples.
    let flags = [
        "--config",
        "tiny-rn",
        "--steps",
        "2",
        "--dataset-resampled",
        "--train-num-samples",
        "16",
    ];
    wit_ok(&train_args(&shard, &out, &flags));
    let shapes = safetensors_shapes(&out.join("model.safetensors"));
    // open_clip's ModifiedResNet names, running statistics included; the text tower keeps HF's.
    assert_eq!(
        shapes["visual.conv1.weight"],
        serde_json::json!([8, 3, 3, 3])
    );
    assert_eq!(
        shapes["visual.layer4.0.bn3.running_var"],
        serde_json::json!([512])
    );
    assert_eq!(
        shapes["visual.attnpool.c_proj.weight"],
        serde_json::json!([128, 512])
    );
    assert!(shapes.get("text_model.final_layer_norm.weight").is_some());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["open_clip"]["vision_cfg"]["layers"],
        serde_json::json!([1, 1, 1, 1])
    );
    assert!(
        config.get("model_type").is_none(),
        "transformers has no ResNet CLIP: {config}"
    );
    // open_clip is where a ResNet CLIP goes: `wit export` writes its local-dir layout.
    let oc = data.join("open_clip");
    wit_ok(&[
        "export",
        "--checkpoint",
        out.to_str().unwrap(),
        "--out",
        oc.to_str().unwrap(),
    ]);
    let oc_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oc.join("open_clip_config.json")).unwrap()).unwrap();
    let model_cfg = &oc_config["model_cfg"];
    assert_eq!(
        model_cfg["vision_cfg"]["layers"],
        serde_json::json!([1, 1, 1, 1])
    );
    assert_eq!(model_cfg["text_cfg"]["pool_type"], "eos");
    assert_eq!(
        model_cfg["text_cfg"]["eos_id"],
        config["text_config"]["eos_token_id"]
    );
    let oc_shapes = safetensors_shapes(&oc.join("open_clip_model.safetensors"));
    assert_eq!(
        oc_shapes["visual.attnpool.c_proj.weight"],
        serde_json::json!([128, 512])
    );
    assert_eq!(oc_shapes["text_projection"], serde_json::json!([128, 128]));
    assert_eq!(
        oc_shapes["transformer.resblocks.3.attn.in_proj_weight"],
        serde_json::json!([384, 128])
    );
    assert_eq!(
        std::fs::read(oc.join("tokenizer.json")).unwrap(),
        std::fs::read(out.join("tokenizer.json")).unwrap()
    );

    let report = eval_report(&out, &data.join("eval-0.tar"), &[]);
    assert!(report["n"].as_u64().unwrap() >= 10, "{report}");
    let r10 = report["text_to_image"]["r10"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r10), "{report}");
}

#[test]
fn init_starts_from_another_runs_weights_and_tokenizer() {
    let tmp = scratch();
    let data = tmp.path();
    write_shard(data, "train-0", 16, 5, false);
    let shard = data.join("train-0.tar");
    let train = |extra: &[&str], out: &Path| wit(&train_args(&shard, out, extra));
    let (first, second) = (data.join("first"), data.join("second"));
    assert!(train(&["--steps", "2"], &first).status.success());
    // At learning rate 0 AdamW moves nothing, so the second run ends where --init started it.
    let out = train(
        &[
            "--steps",
            "1",
            "--lr",
            "0",
            "--init",
            first.to_str().unwrap(),
        ],
        &second,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let load = |dir: &Path| {
        wit_trainer::candle::safetensors::load(
            dir.join("model.safetensors"),
            &wit_trainer::candle::Device::Cpu,
        )
        .unwrap()
    };
    let same_weights = |a: &Path, b: &Path| {
        let (a, b) = (load(a), load(b));
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            let diff = (t - &b[name]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} moved");
        }
    };
    same_weights(&first, &second);
    // open_clip's layout (what `wit export` writes, and LAION's models on the Hub) starts a run too.
    let oc = data.join("open_clip");
    let (first_s, oc_s) = (first.to_str().unwrap(), oc.to_str().unwrap());
    wit_ok(&["export", "--checkpoint", first_s, "--out", oc_s]);
    let from_oc = data.join("from-open-clip");
    let out = train(&["--steps", "1", "--lr", "0", "--init", oc_s], &from_oc);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same_weights(&first, &from_oc);
    // LiT: from the first run with the image tower locked, one step moves only the rest; with
    // one group unlocked, the image projection moves too.
    for unlocked in ["0", "1"] {
        let lit = data.join(format!("lit-{unlocked}"));
        let out = train(
            &[
                "--steps",
                "1",
                "--lr",
                "1e-3",
                "--init",
                first_s,
                "--lock-image",
                "--lock-image-unlocked-groups",
                unlocked,
            ],
            &lit,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (a, b) = (load(&first), load(&lit));
        for (name, t) in &a {
            let diff = (t - &b[name]).unwrap().abs().unwrap().max_all().unwrap();
            let moved = diff.to_scalar::<f32>().unwrap() > 0.0;
            let image = name.starts_with("vision_model") || name.starts_with("visual_projection");
            let unlocked_here = unlocked == "1" && name == "visual_projection.weight";
            assert_eq!(
                moved,
                !image || unlocked_here,
                "{name} ({unlocked} unlocked)"
            );
        }
    }
    assert_eq!(
        std::fs::read(first.join("tokenizer.json")).unwrap(),
        std::fs::read(second.join("tokenizer.json")).unwrap()
    );
    // A folder that holds no model says so, and --init cannot be mixed with --config.
    let empty = data.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = train(
        &[
            "--steps",
            "1",
            "--tokenizer",
            first.join("tokenizer.json").to_str().unwrap(),
            "--init",
            empty.to_str().unwrap(),
        ],
        &data.join("third"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a model folder"),
        "{err}"
    );
    let out = train(
        &["--config", "tiny", "--init", first.to_str().unwrap()],
        &data.join("fourth"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--config"), "{err}");
}

/// The JSON lines of `name` in a run folder.
fn json_lines(out: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The step `trainer_state.json` names, if a save has finished.
fn saved_step(out: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(out.join("trainer_state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_runs_weights_log_and_validations() {
    let tmp = scratch();
    let data = tmp.path();
    write_shard(data, "train-0", 40, 6, false);
    let held_out = write_shard(data, "eval-0", 16, 7, false);
    let (shard, val) = (data.join("train-0.tar"), data.join("eval-0.tar"));
    // 16 steps of 8 pairs are three epochs and more of the 40 pairs: resumes cross epochs.
    let flags = [
        "--steps",
        "16",
        "--lr",
        "1e-3",
        "--save-every",
        "2",
        "--val-data",
        val.to_str().unwrap(),
        "--val-every",
        "3",
        "--seed",
        "3",
        "--beta2",
        "0.999",
    ];
    let whole = data.join("whole");
    wit_ok(&train_args(&shard, &whole, &flags));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["train_config"]["adamw"]["beta2"], 0.999, "{state}");
    // Validation before the first step, after every third and after the last, each on every
    // held-out pair.
    let vals = json_lines(&whole, "val.jsonl");
    let val_steps: Vec<u64> = vals.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(val_steps, [0, 3, 6, 9, 12, 15, 16]);
    let last = vals.last().unwrap();
    assert_eq!(last["n"].as_u64(), Some(held_out.len() as u64), "{last}");
    assert!(last["loss"].as_f64().unwrap() > 0.0, "{last}");
    // The last validation is what `wit eval` reports on the final checkpoint.
    let report = eval_report(&whole, &val, &["--batch-size", "8"]);
    for dir in ["image_to_text", "text_to_image"] {
        assert_eq!(last[dir], report[dir], "{dir}: {last} vs {report}");
    }

    // The same run, killed once a save has finished and a step after it is logged (so the logs
    // hold lines the checkpoint has not), then resumed.
    let killed = data.join("killed");
    let mut child = std::process::Command::new(crate::common::wit_bin())
        .args(train_args(&shard, &killed, &flags))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let logged = |out: &Path| {
        std::fs::read_to_string(out.join("log.jsonl")).map_or(0, |t| t.lines().count() as u64)
    };
    while saved_step(&killed).is_none_or(|s| s < 2 || logged(&killed) <= s) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "wit train exited before its first save"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stopped = saved_step(&killed).unwrap();
    assert!(stopped < 16, "the run finished before it was killed");
    let mut resume = flags.to_vec();
    resume.push("--resume");
    wit_ok(&train_args(&shard, &killed, &resume));
    assert_eq!(
        std::fs::read(killed.join("model.safetensors")).unwrap(),
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        "killed after step {stopped} and resumed: other weights"
    );
    let losses = |out: &Path| -> Vec<(u64, f64)> {
        json_lines(out, "log.jsonl")
            .iter()
            .map(|l| (l["step"].as_u64().unwrap(), l["loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(losses(&killed), losses(&whole));
    assert_eq!(json_lines(&killed, "val.jsonl"), vals);
    // Drawing shards with replacement is another order: a resume that asks for it is refused.
    resume.push("--dataset-resampled");
    let out = wit(&train_args(&shard, &killed, &resume));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("resampling"), "{err}");
}
