//! xz on every core: liblzma's multithreaded encoder (the `xz -T` one), which cuts the input into blocks
//! compressed side by side; the output is one standard `.xz` stream any `xz -d` or `tar xJf` reads.
//!
//! Preset 6 is `xz`'s default. The blocks are liblzma's default for the preset (three times the 8 MiB
//! dictionary), so splitting costs well under 1 % of size against a single-threaded `xz -6`, and the output does
//! not depend on how many threads made it.

use std::io::{Read, Write};

use liblzma::stream::{Check, MtStreamBuilder};
use liblzma::write::XzEncoder;

use super::FormatError;

/// `xz`'s default preset.
pub const PRESET: u32 = 6;
/// Uncompressed bytes read at a time (the cancel flag is polled between reads).
const READ: usize = 1 << 20;

/// What compression did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XzStats {
    /// Uncompressed bytes.
    pub input: u64,
    /// Compressed bytes written.
    pub output: u64,
}

/// Compresses `input` into `output` as xz at [`PRESET`] on `threads` threads. `progress` gets uncompressed byte
/// counts; `cancel` is polled between reads.
pub fn compress<R: Read, W: Write>(
    mut input: R,
    output: W,
    threads: usize,
    progress: &dyn Fn(u64),
    cancel: &dyn Fn() -> bool,
) -> Result<XzStats, FormatError> {
    let stream = MtStreamBuilder::new()
        .threads(threads.clamp(1, 64) as u32)
        .preset(PRESET)
        .check(Check::Crc64)
        .encoder()
        .map_err(|e| FormatError::Compress(format!("starting the xz encoder: {e}")))?;
    let mut encoder = XzEncoder::new_stream(output, stream);
    let mut buffer = vec![0u8; READ];
    let mut total = 0u64;
    loop {
        if cancel() {
            return Err(FormatError::Interrupted);
        }
        let n = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(FormatError::Read { offset: total, source }),
        };
        encoder.write_all(&buffer[..n]).map_err(FormatError::Write)?;
        total += n as u64;
        progress(n as u64);
    }
    encoder.try_finish().map_err(FormatError::Write)?;
    let output = encoder.total_out();
    encoder.finish().map_err(FormatError::Write)?;
    Ok(XzStats { input: total, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_is_one_xz_stream_that_decompresses_to_the_input_whatever_the_threads() {
        let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 97) as u8 ^ (i / 4099) as u8).collect();
        let mut outputs = Vec::new();
        for threads in [1, 2, 4] {
            let mut out = Vec::new();
            let stats = compress(&input[..], &mut out, threads, &|_| {}, &|| false).unwrap_or_default();
            assert_eq!(stats.input, input.len() as u64);
            assert_eq!(stats.output, out.len() as u64);
            assert_eq!(&out[..6], b"\xfd7zXZ\0", "an xz stream");
            let mut back = Vec::new();
            liblzma::read::XzDecoder::new(&out[..]).read_to_end(&mut back).unwrap_or_default();
            assert!(back == input, "{threads} threads: decompresses to the input");
            outputs.push(out);
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]), "the same bytes whatever the thread count");
    }

    #[test]
    fn cancelling_stops_before_the_next_read() {
        let input = vec![7u8; 4 << 20];
        let result = compress(&input[..], Vec::new(), 2, &|_| {}, &|| true);
        assert!(matches!(result, Err(FormatError::Interrupted)));
    }
}
