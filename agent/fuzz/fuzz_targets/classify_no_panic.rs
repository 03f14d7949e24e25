//! Arbitrary bytes through the lexer, the extractor and a decision, in both modes: no panic,
//! whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtguard_agent::acl::{decide::decide, Mode, Settings, TableAcl};

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let acl = TableAcl::parse(
        "fuzz.json",
        br#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t%"], "readers": ["u"], "writers": ["u"], "admins": []}]}"#,
    )
    .expect("acl");
    for mode in [Mode::Vitess, Mode::Secure] {
        let s = Settings {
            strict: true,
            dry_run: false,
            exempt: None,
            mode,
        };
        let _ = decide(&acl, &s, "u", &[], &sql);
    }
});
