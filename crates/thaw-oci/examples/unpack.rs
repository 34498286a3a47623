//! Unpacks a layer or a whole image, for benchmarks and manual checks.
//!
//! ```text
//! unpack LAYER_FILE DIR [--overlay]      one layer (gzip, zstd or plain tar) into DIR
//! unpack oci:PATH[:TAG] DIR              every layer of an image, applied in order into DIR
//! ```

use std::path::Path;
use std::process::ExitCode;

use thaw_oci::layout::{Layout, LayoutRef};
use thaw_oci::unpack::{unpack, UnpackOptions, WhiteoutMode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(src), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: unpack LAYER_FILE|oci:PATH[:TAG] DIR [--overlay]");
        return ExitCode::from(2);
    };
    let mode = if args.iter().any(|a| a == "--overlay") { WhiteoutMode::Overlay } else { WhiteoutMode::Apply };
    let dir = Path::new(dir);
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("unpack: creating {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let result = if src.starts_with("oci:") {
        (|| -> Result<(), Box<dyn std::error::Error>> {
            let r = LayoutRef::parse(src)?;
            let layout = Layout::open(&r.path)?;
            let image = layout.image(r.tag.as_deref())?;
            for layer in &image.layers {
                let blob = std::io::BufReader::with_capacity(1 << 20, layout.open_blob(&layer.descriptor.digest)?);
                let opts = UnpackOptions {
                    mode,
                    expected_diff_id: Some(layer.diff_id.clone()),
                    expected_digest: Some(layer.descriptor.digest.clone()),
                    ..UnpackOptions::default()
                };
                unpack(blob, dir, &opts)?;
            }
            Ok(())
        })()
    } else {
        (|| -> Result<(), Box<dyn std::error::Error>> {
            let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(src)?);
            let r = unpack(f, dir, &UnpackOptions { mode, ..UnpackOptions::default() })?;
            eprintln!("{} entries, diff_id {}", r.entries, r.diff_id);
            Ok(())
        })()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unpack: {e}");
            ExitCode::FAILURE
        }
    }
}
