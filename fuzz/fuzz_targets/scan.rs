//! Differential fuzz target: wherever the fast MIME scan answers which part gets the pixel (or
//! why none does), the answer must be the one mail-parser's full parse gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixelrelay::rewrite::scan_agrees;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = scan_agrees(data) {
        panic!("{e}");
    }
});
