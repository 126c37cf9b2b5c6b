//! `wit bench`: micro-benchmarks whose output `bench/` parses to compare wit with its Python
//! peers on the same machine and data.

mod html;
mod train;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use wit_loader::{
    read_captions, resolve_shards, CropMode, DefaultSource, ImageOutput, Loader, LoaderConfig,
    LoaderStats, ShardSource, TextTokenizer,
};

/// Subcommands of `wit bench`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Time the data loader (decode, crop, normalise, tokenize, collate) on shards.
    ///
    /// Prints per-stage times, the loop's CPU and wall seconds, and a final line `samples/s: N`.
    /// Example: wit bench loader --data 'out/{00000..00009}.tar' --threads 1 --samples 5000
    Loader(LoaderBenchArgs),
    /// Time HTML extraction (images with srcset/alt, links) on saved pages, one thread.
    ///
    /// Prints `pages/s: N` and `MB/s: N`.
    /// Example: wit bench html --pages saved-pages/ --repeat 5
    Html(html::HtmlBenchArgs),
    /// Time training steps of a model config on synthetic pairs (compare: bench/torch_clip.py).
    ///
    /// Prints `steps/s: N` and `samples/s: N`.
    /// Example: wit bench train --config tiny --batch-size 128 --steps 20
    Train(train::TrainBenchArgs),
}

/// The crop used by `wit bench loader`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CropArg {
    /// open_clip's RandomResizedCrop (scale 0.9–1, bicubic): what webdataset + open_clip run.
    Rrc,
    /// The CLIP paper's random square from a resized image.
    Clip,
    /// Evaluation: resize short side, center crop.
    Center,
}

/// Flags of `wit bench loader`.
#[derive(clap::Args, Debug)]
pub struct LoaderBenchArgs {
    /// Shards: .tar paths, brace patterns, a folder, a shardindex.json or http(s) URLs.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<String>,
    /// Samples per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Decode threads (the comparison with webdataset + PIL uses 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Samples to load (epochs repeat until reached).
    #[arg(long, default_value_t = 10_000)]
    pub samples: u64,
    /// Crop augmentation.
    #[arg(long, value_enum, default_value_t = CropArg::Rrc)]
    pub crop: CropArg,
    /// Output square side.
    #[arg(long, default_value_t = 224)]
    pub image_size: u32,
    /// Emit u8 images instead of normalised f32.
    #[arg(long)]
    pub u8: bool,
    /// Sample shuffle buffer (open_clip: 5000).
    #[arg(long, default_value_t = 5000)]
    pub shuffle_buffer: usize,
    /// A HF tokenizer.json; without it a small BPE is trained on the shards' captions first
    /// (not timed).
    #[arg(long)]
    pub tokenizer: Option<std::path::PathBuf>,
}

/// Runs `wit bench`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Loader(args) => bench_loader(args),
        Command::Html(args) => html::bench_html(args),
        Command::Train(args) => train::bench_train(args),
    }
}

fn bench_loader(args: LoaderBenchArgs) -> anyhow::Result<ExitCode> {
    let source: Arc<dyn ShardSource> = Arc::new(DefaultSource::default());
    let tokenizer = match &args.tokenizer {
        Some(path) => TextTokenizer::from_file(path)?,
        None => {
            let entries = resolve_shards(&args.data, source.as_ref())?;
            TextTokenizer::train(read_captions(entries, source.clone()).take(20_000), 4096)?
        }
    };
    let mut cfg = LoaderConfig::new(args.data.clone(), Arc::new(tokenizer));
    cfg.batch_size = args.batch_size;
    cfg.threads = args.threads.max(1);
    cfg.image_size = args.image_size;
    cfg.shuffle_buffer = args.shuffle_buffer;
    cfg.shuffle_initial = args.shuffle_buffer / 5;
    cfg.source = source;
    cfg.crop = match args.crop {
        CropArg::Rrc => CropMode::Rrc,
        CropArg::Clip => CropMode::Clip,
        CropArg::Center => CropMode::Center,
    };
    cfg.output = if args.u8 {
        ImageOutput::U8
    } else {
        ImageOutput::Normalized
    };
    let mut loader = Loader::new(cfg)?;
    println!(
        "loader bench: {} samples in the shards, batch {}, {} thread(s), target {}",
        loader.total_samples(),
        args.batch_size,
        args.threads,
        args.samples
    );
    let (start, cpu_start) = (Instant::now(), process_cpu_seconds());
    let mut samples = 0u64;
    while samples < args.samples {
        if let Some(batch) = loader.next_batch()? {
            samples += batch.keys.len() as u64;
        }
    }
    let (secs, cpu_end) = (start.elapsed().as_secs_f64(), process_cpu_seconds());
    print_stages(&loader.stats(), samples);
    if let (Some(end), Some(start)) = (cpu_end, cpu_start) {
        println!("cpu: {:.3} s", end - start);
    }
    println!("wall: {secs:.3} s for {samples} samples");
    println!("samples/s: {:.1}", samples as f64 / secs);
    Ok(ExitCode::SUCCESS)
}

/// User plus system CPU seconds of this process, all threads: with the wall time it says how
/// many cores a loop kept busy (Python's `time.process_time()` for the peer). Unix only.
#[cfg(unix)]
fn process_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes only into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

#[cfg(not(unix))]
fn process_cpu_seconds() -> Option<f64> {
    None
}

fn print_stages(s: &LoaderStats, samples: u64) {
    let per = |secs: f64| secs * 1e3 / samples.max(1) as f64;
    let stages = [
        ("read", s.read_s),
        ("decode", s.decode_s),
        ("crop+resize", s.resize_s),
        ("tokenize", s.tokenize_s),
        ("collate", s.collate_s),
        ("wait", s.wait_s),
    ];
    for (name, secs) in stages {
        println!("{name:>12}: {secs:8.3} s  {:7.3} ms/sample", per(secs));
    }
    println!("     skipped: {}", s.skipped());
}
