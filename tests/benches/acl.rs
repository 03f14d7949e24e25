//! Table-ACL costs: a decision for a 3-table join against 10 000 table groups, uncached,
//! cached, and for a workload where every statement has new literals (the shape cache);
//! sqlparser's parse of the same statement (what the uncached decision cost before the
//! extractor); load + validate + swap of a policy with 100 000 entries.
//! `cargo bench -p vtguard-tests --bench acl` (or `cargo xtask bench`).

use criterion::{criterion_group, criterion_main, Criterion};
use vtguard_agent::acl::{decide::decide, Enforcer, Mode, Settings, TableAcl};

fn policy_json(groups: usize, tables_per_group: usize) -> String {
    let mut out = String::from(r#"{"table_groups": ["#);
    for g in 0..groups {
        if g > 0 {
            out.push(',');
        }
        let tables: Vec<String> = (0..tables_per_group)
            .map(|t| format!("\"t{g}_{t}\""))
            .collect();
        out.push_str(&format!(
            r#"{{"name": "g{g}", "table_names_or_prefixes": [{}], "readers": ["u{g}", "me"], "writers": ["u{g}"], "admins": []}}"#,
            tables.join(",")
        ));
    }
    out.push_str("]}");
    out
}

fn bench(c: &mut Criterion) {
    let settings = Settings {
        strict: true,
        dry_run: false,
        exempt: None,
        mode: Mode::Secure,
    };
    let acl =
        TableAcl::parse("bench.json", policy_json(10_000, 1).as_bytes()).expect("10 000 groups");
    let sql = "select * from t17_0 a join t4242_0 b on a.id = b.id join t9999_0 c on b.id = c.id where a.x = 1";
    assert!(decide(&acl, &settings, "me", &[], sql).is_allow());
    c.bench_function("acl/decide_3_table_join_10k_groups_uncached", |b| {
        b.iter(|| decide(&acl, &settings, "me", &[], sql))
    });
    c.bench_function("acl/sqlparser_parse_3_table_join", |b| {
        b.iter(|| vtguard_agent::acl::sql::reference::needs(sql))
    });
    let enforcer = Enforcer::new(acl.clone(), settings.clone());
    c.bench_function("acl/decide_3_table_join_10k_groups_cached", |b| {
        b.iter(|| enforcer.check("me", &[], sql))
    });
    // Every statement new to the decision cache (more distinct texts than it holds), one shape.
    let texts: Vec<String> = (0..200_000)
        .map(|i| {
            format!("select * from t17_0 a join t4242_0 b on a.id = b.id join t9999_0 c on b.id = c.id where a.x = {i} and c.name = 'n{i}'")
        })
        .collect();
    assert!(enforcer.check("me", &[], &texts[0]).is_allow());
    let mut i = 0;
    c.bench_function(
        "acl/decide_3_table_join_10k_groups_distinct_literals",
        |b| {
            b.iter(|| {
                i = (i + 1) % texts.len();
                enforcer.check("me", &[], &texts[i])
            })
        },
    );

    let big = policy_json(10_000, 10);
    let mut g = c.benchmark_group("acl/load");
    g.sample_size(10);
    g.bench_function("parse_validate_swap_100k_entries", |b| {
        b.iter(|| {
            let acl = TableAcl::parse("big.json", big.as_bytes()).expect("100 000 entries");
            enforcer.replace(acl);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
