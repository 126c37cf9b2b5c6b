#!/usr/bin/env python3
"""Side-by-side benchmarks: wit against img2dataset (download), webdataset + PIL (loader) and
selectolax (HTML extraction).

Every comparison runs both tools on the same input, on this machine, in this run, alternating
A/B, and reports ratios. Only servers started here on 127.0.0.1 are contacted.

Run through bench/run.sh, which builds wit and creates the peers' venv.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} did not come up within {seconds}s")


# The peers must not phone home (albumentations checks PyPI for updates at import; wandb is off).
PEER_ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled", WANDB_SILENT="true")


def measured(cmd, env=None, cwd=None):
    """Runs cmd; returns wall seconds, CPU seconds (user+sys of the whole waited-for process
    tree, from wait4) and peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(out.decode(errors="replace")[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024, "out": out.decode(errors="replace")}


def start_server(wit, args):
    port = free_port()
    proc = subprocess.Popen([wit, "testweb", "--port", str(port)] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/robots.txt")
    except BaseException:
        proc.kill()
        raise
    return proc, f"http://127.0.0.1:{port}"


def synthetic_images(wit, dest, limit):
    """The test web's generated photos, saved as files (fetched once from a test web we start)."""
    import pyarrow.parquet as pq

    os.makedirs(dest, exist_ok=True)
    proc, base = start_server(wit, ["--pages", "300"])
    try:
        path = os.path.join(dest, "manifest.parquet")
        with urllib.request.urlopen(base + "/manifest.parquet") as r, open(path, "wb") as f:
            f.write(r.read())
        rows = pq.read_table(path).to_pylist()
        seen, files = set(), []
        for row in rows:
            if row["expected"] != "success" or row["url"] in seen:
                continue
            seen.add(row["url"])
            name = f"s{len(files):05d}" + os.path.splitext(row["url"].split("?")[0])[1]
            with urllib.request.urlopen(row["url"]) as r, open(os.path.join(dest, name), "wb") as f:
                f.write(r.read())
            files.append((name, row["caption"]))
            if len(files) >= limit:
                break
        os.remove(path)
        return files
    finally:
        proc.terminate()
        proc.wait()


def wheel_photos(python, dest, wheels):
    """Real photographs shipped inside scikit-image and scikit-learn wheels, fetched from PyPI now
    (the wheels are cached in `wheels`, outside the served folder)."""
    os.makedirs(dest, exist_ok=True)
    os.makedirs(wheels, exist_ok=True)
    if not glob.glob(os.path.join(wheels, "*.whl")):
        subprocess.check_call([python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", wheels, "scikit-image", "scikit-learn"])
    files = []
    wanted = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera", "coins", "hubble", "immunohistochemistry", "retina", "china", "flower", "page", "moon", "text", "horse", "logo", "color", "brick", "grass", "gravel")
    for whl in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                base = os.path.basename(name)
                stem, ext = os.path.splitext(base)
                if ext.lower() not in (".png", ".jpg", ".jpeg") or not any(stem.startswith(w) for w in wanted):
                    continue
                if not ("skimage/data/" in name or "sklearn/datasets/images/" in name):
                    continue
                target = os.path.join(dest, base)
                with z.open(name) as src, open(target, "wb") as out:
                    out.write(src.read())
                files.append((base, stem.replace("_", " ")))
    if not files:
        raise SystemExit("no photographs found in the scikit-image / scikit-learn wheels")
    return files


def write_url_list(path, base, subdir, files, n):
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls, caps = [], []
    for i in range(n):
        name, cap = files[i % len(files)]
        urls.append(f"{base}/{subdir}/{name}?n={i}")
        caps.append(cap)
    pq.write_table(pa.table({"url": urls, "caption": caps}), path)


def count_success(folder):
    import pyarrow.parquet as pq

    ok = total = 0
    for p in glob.glob(os.path.join(folder, "*.parquet")):
        st = pq.read_table(p, columns=["status"]).column("status").to_pylist()
        total += len(st)
        ok += sum(1 for s in st if s == "success")
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(folder, "*.tar")))
    return ok, total, size


def img2dataset_cmd(python, url_list, out, threads):
    code = (
        "from img2dataset import download\n"
        f"download(url_list={url_list!r}, input_format='parquet', url_col='url', caption_col='caption',"
        f" output_format='webdataset', output_folder={out!r}, processes_count=1, thread_count={threads},"
        " image_size=256, resize_mode='border', encode_format='jpg', encode_quality=95,"
        " number_sample_per_shard=1000, timeout=10, retries=0, distributor='multiprocessing',"
        " enable_wandb=False)\n"
    )
    return [python, "-c", code]


def wit_download_cmd(wit, url_list, out, threads):
    return [wit, "download", url_list, "-o", out, "--input-format", "parquet", "--caption-col", "caption", "--image-size", "256",
            "--resize-mode", "border", "--encode-format", "jpg", "--encode-quality", "95",
            "--samples-per-shard", "1000", "--concurrency", str(threads),
            "--per-host-concurrency", str(threads), "--retries", "0",
            "--timeout", "10", "--allow-net", "127.0.0.1/32"]


def bench_download(args, wit, python, work, sets, base):
    rows = []
    for name, n in sets:
        url_list = os.path.join(work, f"{name}.parquet")
        runs = {"img2dataset": [], "wit": []}
        for rep in range(args.repeats):
            for tool in ("img2dataset", "wit"):
                out = os.path.join(work, "out", f"{tool}-{name}")
                shutil.rmtree(out, ignore_errors=True)
                cmd = img2dataset_cmd(python, url_list, out, args.threads) if tool == "img2dataset" else wit_download_cmd(wit, url_list, out, args.threads)
                m = measured(cmd, env=PEER_ENV if tool == "img2dataset" else None)
                m["ok"], m["total"], m["bytes"] = count_success(out)
                runs[tool].append(m)
                print(f"  download {name} rep {rep} {tool}: {m['wall']:.2f}s wall, {m['cpu']:.2f} CPU-s, {m['ok']}/{m['total']} ok, {m['rss_mb']:.0f} MB", flush=True)
        summary = {}
        for tool, ms in runs.items():
            summary[tool] = {
                "wall": statistics.median(m["wall"] for m in ms),
                "cpu": statistics.median(m["cpu"] for m in ms),
                "rss_mb": max(m["rss_mb"] for m in ms),
                "ok": ms[-1]["ok"], "total": ms[-1]["total"], "bytes": ms[-1]["bytes"],
            }
            summary[tool]["ips_cpu"] = summary[tool]["ok"] / max(summary[tool]["cpu"], 1e-9)
        ratio = summary["wit"]["ips_cpu"] / max(summary["img2dataset"]["ips_cpu"], 1e-9)
        rows.append((name, n, summary, ratio))
    return rows


PY_LOADER = r'''
import glob, sys, time, random, resource
import numpy as np, webdataset as wds
from PIL import Image
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
def rrc(img, size=224, scale=(0.9, 1.0), ratio=(3/4, 4/3)):
    # torchvision RandomResizedCrop.get_params, then a bicubic resize of the box.
    import math
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * random.uniform(*scale)
        ar = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = random.randint(0, w - cw), random.randint(0, h - ch)
            return img.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    s = min(w, h)
    x, y = (w - s) // 2, (h - s) // 2
    return img.resize((size, size), Image.BICUBIC, box=(x, y, x + s, y + s))
def transform(img):
    a = np.asarray(rrc(img.convert("RGB")), dtype=np.float32) / 255.0
    return ((a - MEAN) / STD).transpose(2, 0, 1)
shards, n, bs = sorted(glob.glob(sys.argv[1] + "/*.tar")), int(sys.argv[2]), int(sys.argv[3])
ds = wds.WebDataset(shards, shardshuffle=False).repeat().shuffle(5000, initial=1000).decode("pil").to_tuple("jpg;png;jpeg;webp", "txt").map_tuple(transform, lambda t: t).batched(bs)
t0, c0, seen = time.perf_counter(), time.process_time(), 0
for imgs, txts in ds:
    seen += len(imgs)
    if seen >= n:
        break
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(f"cpu: {cpu:.3f} s")
print(f"wall: {dt:.3f} s for {seen} samples")
print(f"samples/s: {seen/dt:.1f}")
'''


def loader_run(cmd):
    """One loader run. Both tools print `cpu:` and `wall:` (their process's CPU seconds and the
    wall seconds of the timed loop) and `samples/s:`. Cores used is the loop's CPU over its wall
    time, so start-up (imports, thread pools, wit's tokenizer training, counting samples) counts
    for neither tool."""
    m = measured(cmd)
    field = lambda name: float([l for l in m["out"].splitlines() if l.startswith(name + ":")][-1].split(":")[1].split()[0])
    m["sps"] = field("samples/s")
    m["loop_cores"] = field("cpu") / max(field("wall"), 1e-9)
    return m


def bench_loader(args, wit, python, work, sources):
    rows = []
    script = os.path.join(work, "py_loader.py")
    with open(script, "w") as f:
        f.write(PY_LOADER)
    for label, folder in sources:
        if not glob.glob(os.path.join(folder, "*.tar")):
            continue
        runs = {"webdataset+PIL": [], "wit": []}
        for rep in range(args.repeats):
            runs["webdataset+PIL"].append(loader_run([python, script, folder, str(args.loader_samples), str(args.batch)]))
            m = loader_run([wit, "bench", "loader", "--data", folder, "--batch-size", str(args.batch), "--threads", "1", "--samples", str(args.loader_samples), "--crop", "rrc"])
            runs["wit"].append(m)
            print(f"  loader {label} rep {rep}: python {runs['webdataset+PIL'][-1]['sps']:.0f}/s, wit {m['sps']:.0f}/s", flush=True)
        summary = {}
        for tool, ms in runs.items():
            summary[tool] = {"sps": statistics.median(m["sps"] for m in ms), "cores": statistics.median(m["loop_cores"] for m in ms)}
            summary[tool]["sps_core"] = summary[tool]["sps"] / max(summary[tool]["cores"], 1.0)
        rows.append((label, summary, summary["wit"]["sps_core"] / max(summary["webdataset+PIL"]["sps_core"], 1e-9)))
    return rows


PY_HTML = r'''
import os, sys, time
from urllib.parse import urljoin
from selectolax.lexbor import LexborHTMLParser
LAZY_SRC = ("data-src", "data-original", "data-lazy-src", "data-lazy")
SRCSETS = ("data-srcset", "data-lazy-srcset", "srcset")
DECODABLE = ("image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif", "image/bmp", "image/x-ms-bmp")
def resolve(base, ref):
    ref = (ref or "").strip()
    if not ref:
        return None
    try:
        u = urljoin(base, ref)
    except ValueError:
        return None
    return u if u[:5].lower() == "http:" or u[:6].lower() == "https:" else None
def largest(srcset, base):
    best, best_w = None, -1.0
    for cand in srcset.split(","):
        parts = cand.split()
        if not parts:
            continue
        w = 1.0
        if len(parts) > 1 and parts[1][-1:] in ("w", "x"):
            try:
                w = float(parts[1][:-1])
            except ValueError:
                continue
        u = resolve(base, parts[0])
        if u and w > best_w:
            best, best_w = u, w
    return best
def srcset_of(attrs, base):
    for k in SRCSETS:
        if attrs.get(k):
            u = largest(attrs[k], base)
            if u:
                return u
    return None
def img_url(img, base):
    parent = img.parent
    if parent is not None and parent.tag == "picture":
        for src in parent.iter():
            if src.tag == "source":
                t = src.attributes.get("type")
                if t is None or t.strip().lower() in DECODABLE:
                    u = srcset_of(src.attributes, base)
                    if u:
                        return u
    a = img.attributes
    u = srcset_of(a, base)
    if u:
        return u
    for k in LAZY_SRC:
        if a.get(k):
            u = resolve(base, a[k])
            if u:
                return u
    return resolve(base, a.get("src"))
def pixels(v):
    v = (v or "").strip().removesuffix("px")
    return int(v) if v.isdigit() else None
def extract(body, url):
    tree = LexborHTMLParser(body)
    t = tree.css_first("title")
    title = " ".join(t.text().split()) if t else None
    base = url
    b = tree.css_first("base[href]")
    if b is not None:
        base = resolve(url, b.attributes.get("href")) or url
    images = []
    for pos, img in enumerate(tree.css("img")):
        u = img_url(img, base)
        if u:
            a = img.attributes
            images.append((u, " ".join((a.get("alt") or "").split()), pos, pixels(a.get("width")), pixels(a.get("height"))))
    links = [u for el in tree.css("a, area") if (u := resolve(base, el.attributes.get("href")))]
    robots = [d.strip().lower() for m in tree.css("meta") if (m.attributes.get("name") or "").lower() == "robots" for d in (m.attributes.get("content") or "").split(",")]
    return title, images, links, robots
root, base, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
pages = []
for d, _, names in os.walk(root):
    for n in names:
        if n.lower().endswith((".html", ".htm")):
            path = os.path.join(d, n)
            with open(path, "rb") as f:
                pages.append((f.read(), urljoin(base, os.path.relpath(path, root))))
pages.sort(key=lambda p: p[1])
size = sum(len(b) for b, _ in pages)
images = links = 0
t0 = time.perf_counter()
for rep in range(repeat):
    for body, url in pages:
        _, im, li, _ = extract(body, url)
        if rep == 0:
            images += len(im)
            links += len(li)
dt = max(time.perf_counter() - t0, 1e-9)
print(f"images: {images}")
print(f"links: {links}")
print(f"pages/s: {len(pages) * repeat / dt:.1f}")
print(f"MB/s: {size * repeat / dt / 1e6:.2f}")
'''


def save_pages(wit, dest, pages):
    """Saves every page of a generated test web (the page_url column of its manifest) under
    `dest`, named by URL path (`/` becomes index.html). Returns (page count, MB)."""
    import pyarrow.parquet as pq

    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    proc, base = start_server(wit, ["--pages", str(pages)])
    try:
        path = os.path.join(dest, "..", "pages-manifest.parquet")
        with urllib.request.urlopen(base + "/manifest.parquet") as r, open(path, "wb") as f:
            f.write(r.read())
        urls = sorted(set(pq.read_table(path, columns=["page_url"]).column("page_url").to_pylist()))
        size = 0
        for url in urls:
            rel = url[len(base):].split("?")[0].lstrip("/") or "index.html"
            if rel.endswith("/"):
                rel += "index.html"
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with urllib.request.urlopen(url) as r, open(target, "wb") as f:
                body = r.read()
                f.write(body)
            size += len(body)
        return len(urls), size / 1e6
    finally:
        proc.terminate()
        proc.wait()


def parse_fields(out):
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("images", "links", "pages/s", "MB/s"):
            fields[key] = float(value)
    return fields


def bench_html(args, wit, python, work):
    """HTML extraction on one thread: wit_crawler::html::extract vs selectolax (lexbor) doing the
    same work (title, <base>, img src/srcset/lazy/alt/width/height, <picture>, a/area links,
    meta robots, URL resolution) on the same saved pages."""
    pages_dir = os.path.join(work, "html", "pages")
    n_pages, mb = save_pages(wit, pages_dir, args.html_pages)
    base = "http://127.0.0.1/"
    script = os.path.join(work, "py_html.py")
    with open(script, "w") as f:
        f.write(PY_HTML)
    repeat = 2 if args.quick else 10
    runs = {"selectolax": [], "wit": []}
    for rep in range(args.repeats):
        m = measured([python, script, pages_dir, base, str(repeat)])
        m.update(parse_fields(m["out"]))
        runs["selectolax"].append(m)
        m = measured([wit, "bench", "html", "--pages", pages_dir, "--base-url", base, "--repeat", str(repeat)])
        m.update(parse_fields(m["out"]))
        runs["wit"].append(m)
        print(f"  html rep {rep}: selectolax {runs['selectolax'][-1]['pages/s']:.0f} pages/s, wit {m['pages/s']:.0f} pages/s", flush=True)
    summary = {}
    for tool, ms in runs.items():
        summary[tool] = {k: statistics.median(m[k] for m in ms) for k in ("pages/s", "MB/s", "images", "links")}
    ratio = summary["wit"]["pages/s"] / max(summary["selectolax"]["pages/s"], 1e-9)
    return [(f"test web, {n_pages} pages, {mb:.2f} MB", summary, ratio)]


def steps_per_s(out):
    """The `steps/s: N` line both trainer benchmarks print."""
    return next(float(l.split(":", 1)[1]) for l in out.splitlines() if l.startswith("steps/s:"))


def bench_train(args, wit, torch_python):
    """Training steps on synthetic pairs, all cores each, alternating A/B: `wit bench train` on
    the `tiny` CLIP against the same model, batch and step in PyTorch (bench/torch_clip.py), then
    the ResNet image tower (`tiny-rn`, open_clip's RN50) against open_clip's own model and step
    (bench/open_clip_step.py). Without a torch venv (the quick run) only wit's `tiny` runs and
    the row says so. Returns rows of (model, batch, summary, ratio)."""
    quick = args.quick or not torch_python
    cases = [("tiny", "`tiny` CLIP vs PyTorch", *((16, 2) if args.quick else (128, 20)), "4096", None)]
    if not quick:
        cases += [
            ("tiny-rn", "`tiny-rn` (ResNet) vs open_clip", 128, 10, "4096", ["--model", "tiny-rn", "--model-config", os.path.join(REPO, "bench", "tiny-rn.json")]),
            ("rn50", "RN50 vs open_clip", 8, 3, "49408", ["--model", "RN50"]),
        ]
    rows = []
    for config, label, batch, steps, vocab, open_clip_model in cases:
        common = ["--batch-size", str(batch), "--steps", str(steps), "--warmup-steps", "2" if steps > 3 else "1"]
        tools = {"wit": [wit, "bench", "train", "--config", config, *common, "--caption-tokens", "16", "--vocab-size", vocab]}
        if torch_python and open_clip_model is None:
            script = os.path.join(REPO, "bench", "torch_clip.py")
            tools["PyTorch"] = [torch_python, script, "--threads", str(os.cpu_count() or 1), *common, "--caption-tokens", "16", "--vocab-size", vocab]
        elif torch_python:
            script = os.path.join(REPO, "bench", "open_clip_step.py")
            tools["open_clip"] = [torch_python, script, *open_clip_model, *common, "--caption-tokens", "16", "--precision", "fp32", "--device", "cpu"]
        runs = {t: [] for t in tools}
        for rep in range(args.repeats):
            for tool, cmd in reversed(tools.items()):
                m = measured(cmd)
                m["steps/s"] = steps_per_s(m["out"])
                runs[tool].append(m)
            print(f"  train {config} rep {rep}: " + ", ".join(f"{t} {runs[t][-1]['steps/s']:.3f} steps/s" for t in runs), flush=True)
        summary = {t: {"steps/s": statistics.median(m["steps/s"] for m in ms), "cpu": statistics.median(m["cpu"] for m in ms), "rss_mb": statistics.median(m["rss_mb"] for m in ms)} for t, ms in runs.items()}
        peer = next((t for t in summary if t != "wit"), None)
        ratio = summary["wit"]["steps/s"] / summary[peer]["steps/s"] if peer else None
        rows.append((label, batch, summary, ratio))
    return rows


def git_commit():
    """The short HEAD commit, marked when the working tree differs from it."""
    def git(*a):
        return subprocess.run(["git", "-C", REPO, *a], text=True, capture_output=True)
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "none yet (uncommitted working tree)"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + (" + uncommitted changes" if dirty else "")


def describe_set(folder, files):
    """`N files, jpg/png, 172–1411 px` for the header."""
    from PIL import Image

    sides, exts = [], set()
    for name, _ in files:
        with Image.open(os.path.join(folder, name)) as im:
            sides.append(max(im.size))
        exts.add(os.path.splitext(name)[1].lstrip(".").lower())
    return f"{len(files)} distinct files ({'/'.join(sorted(exts))}, longest side {min(sides)}–{max(sides)} px)"


def render(args, dl_rows, loader_rows, html_rows, train_row, load):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except Exception:
        pass
    lines = [
        f"# wit benchmark results",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} cores, {cpu}",
        f"- load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}"
        + (" — other processes were busy: absolute numbers are depressed, ratios less so" if max(load) > 0.5 * (os.cpu_count() or 1) else ""),
        f"- commit: {git_commit()}",
        f"- command: `{' '.join(['bash', 'bench/run.sh'] + args.argv)}` (A/B alternated {args.repeats}×, medians)",
    ]
    if args.sets:
        lines += [
            f"- image sets, each file requested under many unique URLs (`?n=i`) from `wit testweb --static` on 127.0.0.1:",
            f"  synthetic = the test web's generated photos, {args.sets['synthetic']};",
            f"  photos = real photographs shipped in the scikit-image and scikit-learn wheels, {args.sets['photos']}",
        ]
    if dl_rows is not None:
        lines += [
            "",
            "## Download: wit vs img2dataset (256 px, border, jpg q95, 1,000 per shard, "
            f"{args.threads} threads/requests in flight)",
            "",
            "| image set | URLs | tool | wall s | CPU s | images / CPU-s | success | peak RSS MB | output MB | ratio (wit / img2dataset, images per CPU-s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for name, n, s, ratio in dl_rows or []:
        for tool in ("img2dataset", "wit"):
            m = s[tool]
            lines.append(f"| {name} | {n} | {tool} | {m['wall']:.2f} | {m['cpu']:.2f} | {m['ips_cpu']:.1f} | {m['ok']}/{m['total']} | {m['rss_mb']:.0f} | {m['bytes']/1e6:.1f} | {'**%.2f×**' % ratio if tool == 'wit' else ''} |")
    if loader_rows is not None:
        lines += ["", f"## Loader: wit vs webdataset + PIL (RandomResizedCrop 224, scale 0.9–1, bicubic, CLIP mean/std, batch {args.batch}, shuffle buffer 5000, one process / one thread)", "",
                  "Cores used: each tool's CPU seconds (all threads) over the wall seconds of its timed loop, so start-up counts for neither; per core divides by at least 1.", "",
                  "| shards | tool | samples/s | cores used | samples/s per core | ratio (per core) |", "|---|---|---|---|---|---|"]
    for label, s, ratio in loader_rows or []:
        for tool in ("webdataset+PIL", "wit"):
            m = s[tool]
            lines.append(f"| {label} | {tool} | {m['sps']:.0f} | {m['cores']:.2f} | {m['sps_core']:.0f} | {'**%.2f×**' % ratio if tool == 'wit' else ''} |")
    if html_rows is not None:
        lines += ["", "## HTML extraction: wit vs selectolax (lexbor), one thread each, same pages, same work", "",
                  "| pages | tool | pages/s | MB/s | images found | links found | ratio (pages/s per core) |", "|---|---|---|---|---|---|---|"]
    for label, s, ratio in html_rows or []:
        for tool in ("selectolax", "wit"):
            m = s[tool]
            lines.append(f"| {label} | {tool} | {m['pages/s']:.0f} | {m['MB/s']:.2f} | {m['images']:.0f} | {m['links']:.0f} | {'**%.2f×**' % ratio if tool == 'wit' else ''} |")
    if train_row is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"## Trainer on CPU: `wit bench train` vs the same model in PyTorch / open_clip (synthetic pairs, captions of 16 tokens, f32, {os.cpu_count()} threads each)", "",
              "| model | batch | tool | steps/s | samples/s | peak RSS MB | ratio (steps/s) |", "|---|---|---|---|---|---|---|"]
    for label, batch, summary, ratio in train_row:
        for tool, m in summary.items():
            cell = ("**%.2f×**" % ratio if ratio else "peer not run (quick run: no torch venv)") if tool == "wit" else ""
            lines.append(f"| {label} | {batch} | {tool} | {m['steps/s']:.3f} | {m['steps/s'] * batch:.1f} | {m['rss_mb']:.0f} | {cell} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wit", required=True, help="path of the wit binary (release build)")
    ap.add_argument("--work", required=True, help="scratch folder")
    ap.add_argument("--out", required=True, help="markdown file to write the results table to")
    ap.add_argument("--quick", action="store_true", help="tiny inputs, one repeat: a smoke run")
    ap.add_argument("--threads", type=int, default=64, help="img2dataset threads = wit requests in flight")
    ap.add_argument("--synthetic-urls", type=int, help="download URLs of test-web photos (default 6000, quick 60)")
    ap.add_argument("--photo-urls", type=int, help="download URLs of real photographs (default 2000, quick 30)")
    ap.add_argument("--loader-samples", type=int, help="samples each loader run reads (default 3000, quick 128)")
    ap.add_argument("--html-pages", type=int, help="test-web pages for HTML extraction (default 1000, quick 30)")
    ap.add_argument("--repeats", type=int, help="A/B alternations (default 3, quick 1)")
    ap.add_argument("--sections", default="download,loader,html,train", help="comma-separated subset of download,loader,html,train to run (bench/run.sh writes a subset to bench/RESULTS-<sections>.md)")
    ap.add_argument("--torch-python", help="python of a venv with torch, for the trainer comparison (bench/run.sh passes it on full runs)")
    args = ap.parse_args()
    given = sys.argv[1:]
    internal = ("--wit", "--work", "--out", "--torch-python")
    args.argv = [a for i, a in enumerate(given) if a not in internal and (i == 0 or given[i - 1] not in internal)]
    pick = lambda value, quick, full: value if value is not None else (quick if args.quick else full)
    args.repeats = pick(args.repeats, 1, 3)
    args.loader_samples = pick(args.loader_samples, 128, 3000)
    args.html_pages = pick(args.html_pages, 30, 1000)
    args.batch = 16 if args.quick else 256
    n_syn, n_photo = pick(args.synthetic_urls, 60, 6000), pick(args.photo_urls, 30, 2000)
    python = sys.executable
    load_start = os.getloadavg()[0]
    work = os.path.abspath(args.work)
    sections = set(args.sections.split(","))
    unknown = sections - {"download", "loader", "html", "train"}
    if unknown:
        raise SystemExit(f"unknown --sections {sorted(unknown)}: choose from download,loader,html,train")
    if "loader" in sections and "download" not in sections and not os.path.isdir(os.path.join(work, "out", "wit-synthetic")):
        raise SystemExit("the loader benchmark reads the download benchmark's shards: run --sections download first")
    args.sets = None
    dl = ld = hb = tr = None
    if "download" in sections:
        images = os.path.join(work, "www")
        shutil.rmtree(images, ignore_errors=True)
        syn = synthetic_images(args.wit, os.path.join(images, "synthetic"), 40 if args.quick else 400)
        photos = wheel_photos(python, os.path.join(images, "photos"), os.path.join(work, "wheels"))
        args.sets = {"synthetic": describe_set(os.path.join(images, "synthetic"), syn), "photos": describe_set(os.path.join(images, "photos"), photos)}
        server = subprocess.Popen([args.wit, "testweb", "--static", images, "--port", str(port := free_port())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/photos/{photos[0][0]}")
            write_url_list(os.path.join(work, "synthetic.parquet"), base, "synthetic", syn, n_syn)
            write_url_list(os.path.join(work, "photos.parquet"), base, "photos", photos, n_photo)
            print("download benchmark", flush=True)
            dl = bench_download(args, args.wit, python, work, [("synthetic", n_syn), ("photos", n_photo)], base)
        finally:
            server.terminate()
            server.wait()
    if "loader" in sections:
        print("loader benchmark", flush=True)
        out = os.path.join(work, "out")
        ld = bench_loader(args, args.wit, python, work, [("wit shards (synthetic)", os.path.join(out, "wit-synthetic")), ("img2dataset shards (synthetic)", os.path.join(out, "img2dataset-synthetic")), ("img2dataset shards (photos)", os.path.join(out, "img2dataset-photos"))])
    if "html" in sections:
        print("html benchmark", flush=True)
        hb = bench_html(args, args.wit, python, work)
    if "train" in sections:
        print("trainer benchmark", flush=True)
        tr = bench_train(args, args.wit, args.torch_python)
    table = render(args, dl, ld, hb, tr, (load_start, os.getloadavg()[0]))
    history = kept_history(args.out)
    with open(args.out, "w") as f:
        f.write(table + history)
    print(table)


def kept_history(path):
    """The hand-written history at the end of an earlier results file (from its first heading
    starting `## How the ratio moved`), so a rerun replaces the table but keeps the record."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    at = text.find("\n## How the ratio moved")
    return "" if at < 0 else "\n" + text[at:].lstrip("\n")


if __name__ == "__main__":
    main()
