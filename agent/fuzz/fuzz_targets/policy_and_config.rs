//! The tableacl parser (JSON and binary) and the config parser on arbitrary bytes: an error
//! with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtguard_agent::{acl::TableAcl, config::Config};

fuzz_target!(|data: &[u8]| {
    if let Err(e) = TableAcl::parse("fuzz.json", data) {
        assert!(!e.to_string().is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Config::parse(std::path::Path::new("fuzz.toml"), text) {
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }
});
