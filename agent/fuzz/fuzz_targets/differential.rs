//! For every text sqlparser parses and vtguard's extractor reads, the two name the same
//! (role, table) pairs for each statement sqlparser's AST covers (SELECT, INSERT, REPLACE,
//! UPDATE, DELETE, table DDL). Seeds and commands: agent/fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(diff) = vtguard_agent::acl::sql::reference::differential(
        sql,
        vtguard_agent::acl::sql::reference::Compare::NoneMissed,
    ) {
        panic!("{sql:?}\n{diff}");
    }
});
