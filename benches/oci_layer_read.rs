//! Decode throughput of `OciSource::open_layer` (verified blob → decompress → diff_id).
//!
//! `cargo bench --bench oci_layer_read -- oci:/work/corpus/oci/zstd:dev [--platform os/arch]`
//! prints, per layer, the compressed and uncompressed sizes and MB/s of uncompressed output.

use std::time::Instant;

use strata::oci::{ImageRef, OciSource, PlatformSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut refs = Vec::new();
    let mut platform = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--platform" => platform = Some(PlatformSpec::parse(&args.next().unwrap_or_default())?),
            "--bench" => {}
            _ => refs.push(a),
        }
    }
    if refs.is_empty() {
        for kind in ["gzip", "zstd", "zstd-chunked", "uncompressed"] {
            let dir = format!("/work/corpus/oci/{kind}");
            if std::path::Path::new(&dir).is_dir() {
                refs.push(format!("oci:{dir}:dev"));
            }
        }
    }
    for r in refs {
        let r = ImageRef::parse(&r)?;
        let src = OciSource::open(&r)?;
        let img = src.resolve(r.reference(), platform.as_ref())?;
        let (mut total, start) = (0u64, Instant::now());
        for l in &img.layers {
            let t = Instant::now();
            let n = src.open_layer(l)?.finish()?;
            let s = t.elapsed().as_secs_f64();
            total += n;
            println!(
                "{r} {} {:?}: {} -> {} bytes, {:.3}s, {:.0} MB/s",
                &l.digest[..19],
                l.compression,
                l.size,
                n,
                s,
                n as f64 / s / 1e6
            );
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "{r} total: {total} bytes, {s:.3}s, {:.0} MB/s",
            total as f64 / s / 1e6
        );
    }
    Ok(())
}
