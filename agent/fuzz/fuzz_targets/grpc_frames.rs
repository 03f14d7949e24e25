//! The gRPC frame reader and decompression on arbitrary bodies: an error or frames that lie
//! inside the body and within the limit, never a panic or an allocation past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtguard_agent::proxy::grpc::frame;

fuzz_target!(|data: &[u8]| {
    let max = 1 << 16;
    let Ok(frames) = frame::split(data, max) else {
        return;
    };
    for f in &frames {
        assert!(f.payload.len() <= max);
        for encoding in [
            None,
            Some("gzip"),
            Some("snappy"),
            Some("identity"),
            Some("br"),
        ] {
            if let Ok(msg) = frame::decompress(f, encoding, max) {
                assert!(
                    msg.len() <= max,
                    "decompressed within grpc-max-message-size"
                );
            }
        }
    }
});
