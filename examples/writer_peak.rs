//! Memory probe for the composefs writer: peak RSS per phase.
//!
//! `cargo run --release --example writer_peak -- DUMPFILE` prints the
//! resident set after each phase and the peak reached within it (the
//! kernel's high-water mark is reset between phases through
//! `/proc/self/clear_refs`).

use std::io::BufWriter;

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn reset_peak() {
    // Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn phase(name: &str) {
    thread_local!(static T: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) });
    let ms = T.with(|t| {
        let now = std::time::Instant::now();
        let ms = t.get().map_or(0.0, |p| (now - p).as_secs_f64() * 1e3);
        t.set(Some(now));
        ms
    });
    println!(
        "{name:<28} rss {:>7} KB   peak in phase {:>7} KB   {ms:6.1} ms",
        status("VmRSS:"),
        status("VmHWM:")
    );
    reset_peak();
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .expect("usage: writer_peak DUMPFILE [OUT]");
    let out = std::env::args().nth(2);
    reset_peak();
    phase("start");
    let input = std::fs::read(&path)?;
    phase("read dump");
    let tree = strata::dumpfile::parse(&input, Default::default())?;
    phase("parse");
    drop(input);
    phase("drop input");
    let opts = strata::erofs::WriteOptions::default();
    let plan = strata::erofs::ImagePlan::new(&tree, &opts)?;
    phase("plan (validate + layout)");
    let n = match &out {
        Some(p) => {
            let mut w = BufWriter::with_capacity(256 * 1024, std::fs::File::create(p)?);
            plan.write_to(&mut w)?
        }
        None => plan.write_to(&mut std::io::sink())?,
    };
    phase("stream image");
    drop(plan);
    let v = strata::erofs::write_image(&tree, &opts)?;
    phase("write_image (Vec)");
    println!("image {n} bytes, vec {} bytes", v.len());
    Ok(())
}
