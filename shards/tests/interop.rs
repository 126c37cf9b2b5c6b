//! Interop with the real Python ecosystem (webdataset, wids, pyarrow, duckdb, tarfile, PIL) from
//! the venv made by `scripts/setup-python.sh`: they must read what we write, and we must read
//! what webdataset writes.

use crate::common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use wit_shards::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Two shards of generated samples in `dir`; returns the (shard, row, record) of every success.
fn two_shards(dir: &Path) -> Vec<(u64, u64, SampleRecord)> {
    let rows = records(35);
    write_shard(dir, 0, &shuffled(&rows, 9));
    write_shard(dir, 1, &rows[..12]);
    let ok = |shard: u64, rs: &[(u64, SampleRecord)]| {
        rs.iter()
            .filter(|(_, r)| r.status == Some(Status::Success))
            .map(|(row, r)| (shard, *row, r.clone()))
            .collect::<Vec<_>>()
    };
    let mut all = ok(0, &rows);
    all.extend(ok(1, &rows[..12]));
    all
}

const WEBDATASET_READ: &str = r#"
import sys, json, io
import webdataset as wds
from PIL import Image
out = []
for s in wds.WebDataset(sys.argv[1:], shardshuffle=False):
    img = Image.open(io.BytesIO(s["png"]))
    img.load()
    out.append({
        "key": s["__key__"],
        "exts": sorted(k for k in s if not k.startswith("__")),
        "txt": s["txt"].hex() if "txt" in s else None,
        "png": s["png"].hex(),
        "size": list(img.size),
        "json": json.loads(s["json"]),
    })
print(json.dumps(out))
"#;

#[test]
fn webdataset_iterates_every_sample_with_equal_keys_and_captions() {
    let dir = tempfile::tempdir().unwrap();
    let expected = two_shards(dir.path());
    let tars = ["00000.tar", "00001.tar"].map(|t| dir.path().join(t));
    let args: Vec<&str> = tars.iter().map(|p| p.to_str().unwrap()).collect();
    let out: Vec<Value> = serde_json::from_str(&run_python(WEBDATASET_READ, &args, &[])).unwrap();
    assert_eq!(
        out.len(),
        expected.len(),
        "webdataset saw a different number of samples"
    );
    for (got, (shard, row, rec)) in out.iter().zip(&expected) {
        let key = expected_key(*shard, *row);
        let image = rec.image.as_ref().unwrap();
        assert_eq!(got["key"], key.as_str());
        let exts: &[&str] = if rec.caption.is_some() {
            &["json", "png", "txt"]
        } else {
            &["json", "png"]
        };
        assert_eq!(got["exts"], json!(exts));
        assert_eq!(
            got["txt"],
            json!(rec.caption.as_ref().map(|c| hex(c.as_bytes())))
        );
        assert_eq!(got["png"], hex(&image.bytes).as_str());
        assert_eq!(
            got["size"],
            json!([image.width, image.height]),
            "PIL decodes the stored image"
        );
        assert_eq!(got["json"]["key"], key.as_str());
        assert_eq!(got["json"]["url"], rec.url.as_str());
        assert_eq!(got["json"]["caption"], json!(rec.caption));
        assert_eq!(got["json"]["original_width"], json!(rec.original_width));
    }
}

const TARFILE_INSPECT: &str = r#"
import sys, json, tarfile
with tarfile.open(sys.argv[1], format=tarfile.USTAR_FORMAT) as tf:
    print(json.dumps([[m.name, m.mode, m.mtime, m.uid, m.gid, m.isreg(), m.size, m.pax_headers] for m in tf]))
"#;

#[test]
fn python_tarfile_sees_deterministic_ustar_members_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let expected = two_shards(dir.path());
    let tar = dir.path().join("00000.tar");
    let out: Vec<Value> =
        serde_json::from_str(&run_python(TARFILE_INSPECT, &[tar.to_str().unwrap()], &[])).unwrap();
    let mut names = Vec::new();
    for (_, row, rec) in expected.iter().filter(|(s, _, _)| *s == 0) {
        let key = expected_key(0, *row);
        names.push(format!("{key}.json"));
        names.push(format!("{key}.png"));
        if rec.caption.is_some() {
            names.push(format!("{key}.txt"));
        }
    }
    let got: Vec<&str> = out.iter().map(|m| m[0].as_str().unwrap()).collect();
    assert_eq!(got, names);
    for m in &out {
        assert_eq!(m[1], 0o444, "mode of {}", m[0]);
        assert_eq!(
            (&m[2], &m[3], &m[4], &m[5]),
            (&json!(0), &json!(0), &json!(0), &json!(true))
        );
        assert_eq!(m[7], json!({}), "no PAX headers: plain ustar");
    }
}

const WIDS_READ: &str = r#"
import sys, json, os
try:
    import torch  # noqa: F401
except ImportError:
    sys.path.insert(0, sys.argv[3])
import wids
ds = wids.ShardListDataset(sys.argv[1], cache_dir=sys.argv[2], transformations=[])
raw = lambda v: v.getvalue() if hasattr(v, "getvalue") else v
out = []
for i in range(len(ds)):
    s = ds[i]
    out.append({"key": s["__key__"], "txt": raw(s[".txt"]).hex() if ".txt" in s else None,
                "png": len(raw(s[".png"])), "exts": sorted(k for k in s if not k.startswith("__"))})
print(json.dumps({"len": len(ds), "samples": out}))
"#;

/// wids imports torch only for its `Dataset`/`Sampler` base classes and distributed rank; when
/// the venv has no torch (a 3 GB install), these stand-ins provide exactly those names.
fn torch_stand_in(dir: &Path) {
    fs::create_dir_all(dir.join("torch/utils")).unwrap();
    fs::write(dir.join("torch/__init__.py"), "").unwrap();
    fs::write(
        dir.join("torch/distributed.py"),
        "def is_initialized():\n    return False\n",
    )
    .unwrap();
    fs::write(dir.join("torch/utils/__init__.py"), "").unwrap();
    fs::write(
        dir.join("torch/utils/data.py"),
        "from typing import Generic, TypeVar\nT_co = TypeVar('T_co', covariant=True)\n\
         class Dataset(Generic[T_co]):\n    pass\nclass Sampler(Generic[T_co]):\n    pass\n",
    )
    .unwrap();
}

#[test]
fn wids_opens_the_shard_index_and_returns_samples() {
    let dir = tempfile::tempdir().unwrap();
    let expected = two_shards(dir.path());
    let index = write_shard_index(dir.path()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let shim = tempfile::tempdir().unwrap();
    torch_stand_in(shim.path());
    let args = [
        index.to_str().unwrap(),
        cache.path().to_str().unwrap(),
        shim.path().to_str().unwrap(),
    ];
    let out: Value = serde_json::from_str(&run_python(WIDS_READ, &args, &[])).unwrap();
    assert_eq!(out["len"], expected.len());
    let samples = out["samples"].as_array().unwrap();
    for (got, (shard, row, rec)) in samples.iter().zip(&expected) {
        assert_eq!(got["key"], expected_key(*shard, *row).as_str());
        assert_eq!(
            got["txt"],
            json!(rec.caption.as_ref().map(|c| hex(c.as_bytes())))
        );
        assert_eq!(got["png"], rec.image.as_ref().unwrap().bytes.len());
        assert!(got["exts"].as_array().unwrap().contains(&json!(".json")));
    }
}

const PARQUET_READ: &str = r#"
import sys, json
import pyarrow.parquet as pq
import duckdb
path = sys.argv[1]
f = pq.ParquetFile(path)
t = f.read()
con = duckdb.connect()
desc = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()
rows = con.execute("SELECT key, status, width, height, caption, source, bytes FROM read_parquet(?) ORDER BY key", [path]).fetchall()
print(json.dumps({
    "schema": [[fl.name, str(fl.type)] for fl in t.schema],
    "compression": f.metadata.row_group(0).column(0).compression,
    "keys": t.column("key").to_pylist(),
    "widths": t.column("width").to_pylist(),
    "duck_types": [[d[0], d[1]] for d in desc],
    "duck_rows": rows,
}))
"#;

#[test]
fn pyarrow_and_duckdb_read_the_parquet_with_img2dataset_columns() {
    let dir = tempfile::tempdir().unwrap();
    let rows = records(30);
    write_shard(dir.path(), 4, &shuffled(&rows, 13));
    let path = dir.path().join("00004.parquet");
    let out: Value =
        serde_json::from_str(&run_python(PARQUET_READ, &[path.to_str().unwrap()], &[])).unwrap();

    let s = "string";
    let expected_schema = [
        ("source", s),
        ("caption", s),
        ("url", s),
        ("key", s),
        ("status", s),
        ("error_message", s),
        ("width", "int32"),
        ("height", "int32"),
        ("original_width", "int32"),
        ("original_height", "int32"),
        ("exif", s),
        ("sha256", s),
        ("blake3", s),
        ("mime", s),
        ("bytes", "int64"),
        ("encoded_bytes", "int64"),
        ("format", s),
        ("original_format", s),
        ("page_url", s),
        ("language", s),
        ("phash", s),
        ("dup_of", s),
    ];
    assert_eq!(out["schema"], json!(expected_schema.map(|(n, t)| [n, t])));
    assert_eq!(out["compression"], "SNAPPY");
    let duck = |t: &str| match t {
        "int32" => "INTEGER",
        "int64" => "BIGINT",
        _ => "VARCHAR",
    };
    assert_eq!(
        out["duck_types"],
        json!(expected_schema.map(|(n, t)| [n, duck(t)]))
    );

    let keys: Vec<String> = rows.iter().map(|(r, _)| expected_key(4, *r)).collect();
    assert_eq!(
        out["keys"],
        json!(keys),
        "one row per input row, sorted by key"
    );
    let widths: Vec<Option<u32>> = rows
        .iter()
        .map(|(_, r)| r.image.as_ref().map(|i| i.width))
        .collect();
    assert_eq!(out["widths"], json!(widths));
    let duck_rows = out["duck_rows"].as_array().unwrap();
    assert_eq!(duck_rows.len(), rows.len());
    for (got, (row, rec)) in duck_rows.iter().zip(&rows) {
        let status = rec.status.unwrap().as_str();
        let image = rec.image.as_ref();
        assert_eq!(
            got,
            &json!([
                expected_key(4, *row),
                status,
                image.map(|i| i.width),
                image.map(|i| i.height),
                rec.caption,
                rec.extra[0],
                rec.original_bytes
            ])
        );
    }
}

const WEBDATASET_WRITE: &str = r#"
import sys, json, tarfile, io
import webdataset as wds
spec = json.loads(sys.argv[2])
with wds.ShardWriter(sys.argv[1] + "/py-%04d.tar", maxcount=3, verbose=0) as sink:
    for s in spec:
        sample = {"__key__": s["key"]}
        for ext, h in s["members"]:
            sample[ext] = bytes.fromhex(h)
        sink.write(sample)

# A GNU-format tar with what webdataset skips: directories, symlinks, __meta__ files, and a
# member name longer than ustar's 100 bytes.
with tarfile.open(sys.argv[1] + "/gnu.tar", "w", format=tarfile.GNU_FORMAT) as tf:
    def add(name, data=None, kind=tarfile.REGTYPE):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        if kind == tarfile.SYMTYPE:
            ti.linkname = "elsewhere"
        ti.size = len(data) if data is not None else 0
        tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    add("__index__", b"meta")
    add("d", kind=tarfile.DIRTYPE)
    add("d/one.txt", b"first")
    add("d/one.cls", b"7")
    add("d/link.txt", kind=tarfile.SYMTYPE)
    add("d/" + "x" * 120 + ".txt", b"long")
"#;

/// A sample for Python to write: key and (extension, bytes) members.
type SpecSample = (String, Vec<(&'static str, Vec<u8>)>);

#[test]
fn reads_shards_written_by_python_webdataset_and_tarfile() {
    let dir = tempfile::tempdir().unwrap();
    let long_key = format!("deep/{}/k", "dir".repeat(40));
    let spec: Vec<SpecSample> = vec![
        (
            "s0000".into(),
            vec![
                ("jpg", b"\xff\xd8\xffjpeg".to_vec()),
                ("txt", b"a cat".to_vec()),
            ],
        ),
        (
            "dir/sub/s0001".into(),
            vec![
                ("png", png(3, 2, 1)),
                ("txt", Vec::new()),
                ("seg.png", png(3, 2, 2)),
            ],
        ),
        (
            "s0002".into(),
            vec![("JSON", b"{}".to_vec()), ("cls", b"3".to_vec())],
        ),
        (
            "日本/写真".into(),
            vec![("txt", "猫 🐈".as_bytes().to_vec())],
        ),
        (
            long_key.clone(),
            vec![("txt", b"long name".to_vec()), ("webp", vec![0u8; 700])],
        ),
    ];
    let spec_json = json!(spec
        .iter()
        .map(|(k, ms)| json!({"key": k, "members": ms.iter().map(|(e, b)| json!([e, hex(b)])).collect::<Vec<_>>()}))
        .collect::<Vec<_>>());
    run_python(
        WEBDATASET_WRITE,
        &[dir.path().to_str().unwrap(), &spec_json.to_string()],
        &[],
    );

    let mut got = Vec::new();
    for name in ["py-0000.tar", "py-0001.tar"] {
        let file = fs::File::open(dir.path().join(name)).unwrap();
        for sample in ShardReader::new(file) {
            got.push(sample.unwrap());
        }
    }
    assert_eq!(got.len(), spec.len());
    for (sample, (key, members)) in got.iter().zip(&spec) {
        assert_eq!(&sample.key, key);
        let mut want: Vec<(String, Vec<u8>)> = members
            .iter()
            .map(|(e, b)| (e.to_lowercase(), b.clone()))
            .collect();
        want.sort();
        let mut have = sample.members.clone();
        have.sort();
        assert_eq!(have, want, "sample {key}");
    }
    assert_eq!(got[0].caption(), Some("a cat"));
    assert_eq!(got[1].image().unwrap().0, "png");
    assert_eq!(got[1].caption(), Some(""));

    let gnu: Vec<Sample> = ShardReader::new(fs::File::open(dir.path().join("gnu.tar")).unwrap())
        .collect::<Result<_, _>>()
        .unwrap();
    let long = format!("d/{}", "x".repeat(120));
    assert_eq!(
        gnu.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
        vec!["d/one", long.as_str()]
    );
    assert_eq!(
        gnu[0].members,
        vec![
            ("txt".to_string(), b"first".to_vec()),
            ("cls".to_string(), b"7".to_vec())
        ]
    );
    assert_eq!(gnu[1].caption(), Some("long"));
}

const IMG2DATASET_PARQUET: &str = r#"
import sys
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({
    "caption": ["a dog", None],
    "url": ["http://127.0.0.1/1.jpg", "http://127.0.0.1/2.jpg"],
    "key": ["000000000", "000000001"],
    "status": ["success", "failed_to_download"],
    "error_message": [None, "HTTP 404"],
    "width": pa.array([256, None], pa.int32()),
    "height": pa.array([192, None], pa.int64()),
    "original_width": pa.array([512, None], pa.int32()),
    "original_height": pa.array([384, None], pa.int32()),
    "exif": [None, None],
    "sha256": ["ab" * 32, None],
    "similarity": [0.31, 0.12],
    "source": ["laion", "laion"],
}), sys.argv[1])
"#;

#[test]
fn read_metadata_reads_img2dataset_parquet_written_by_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000.parquet");
    run_python(IMG2DATASET_PARQUET, &[path.to_str().unwrap()], &[]);
    let rows = read_metadata(&path).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].key, "000000000");
    assert_eq!(rows[0].status, Status::Success);
    assert_eq!(rows[0].caption.as_deref(), Some("a dog"));
    assert_eq!((rows[0].width, rows[0].height), (Some(256), Some(192)));
    assert_eq!(rows[0].original_height, Some(384));
    assert_eq!(rows[0].sha256.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(
        rows[0].extra,
        vec![("source".to_string(), Some("laion".to_string()))]
    );
    assert_eq!(rows[1].status, Status::FailedToDownload);
    assert_eq!(rows[1].error_message.as_deref(), Some("HTTP 404"));
    assert_eq!((rows[1].width, rows[1].blake3.as_ref()), (None, None));
}
