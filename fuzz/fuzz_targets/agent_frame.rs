//! Any bytes, as a stream of agent protocol frames in either direction:
//! decoding never panics nor allocates past the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vws_guest::{read_frame, FromAgent, ToAgent};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(_)) = read_frame::<ToAgent>(&mut r) {}
    let mut r = data;
    while let Ok(Some(_)) = read_frame::<FromAgent>(&mut r) {}
});
