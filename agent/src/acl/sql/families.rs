//! No table missed: MySQL statements by grammar family, each with the (role, table) pairs it
//! needs written by hand. With nothing granted each is denied; granted exactly those pairs, it
//! is allowed (so nothing spurious is asked for either).

use super::{classify, Class, Mode};
use crate::acl::{
    decide::{decide, Decision, Settings},
    tableacl::{Role, TableAcl},
};
use Role::{Admin as A, Reader as R, Writer as W};

/// (statement, needs in secure mode).
const FAMILIES: &[(&str, &[(Role, &str)])] = &[
    // Names: quoting, qualification, case, non-ASCII, escapes.
    ("select * from secret", &[(R, "secret")]),
    ("select*from`secret`", &[(R, "secret")]),
    ("select * from ks.secret", &[(R, "secret")]),
    ("select * from `ks`.`secret`", &[(R, "secret")]),
    ("select * from ks . secret", &[(R, "secret")]),
    ("select * from .secret", &[(R, "secret")]),
    ("select * from \"secret\"", &[(R, "secret")]),
    ("SELECT * FROM Secret", &[(R, "Secret")]),
    ("select * from `sécret`", &[(R, "sécret")]),
    ("select * from sécret", &[(R, "sécret")]),
    ("select * from `se``cret`", &[(R, "se`cret")]),
    ("select * from 1secret", &[(R, "1secret")]),
    ("select * from ks.1secret", &[(R, "1secret")]),
    ("select * from t1 as `from`, secret", &[(R, "t1"), (R, "secret")]),
    // Joins.
    ("select * from a, secret", &[(R, "a"), (R, "secret")]),
    ("select * from a join secret using (id)", &[(R, "a"), (R, "secret")]),
    ("select * from a natural left outer join secret", &[(R, "a"), (R, "secret")]),
    ("select * from a straight_join secret on a.x = secret.x", &[(R, "a"), (R, "secret")]),
    ("select * from a cross join secret", &[(R, "a"), (R, "secret")]),
    (
        "select * from t1 a join t2 b on a.id = b.id, secret",
        &[(R, "t1"), (R, "t2"), (R, "secret")],
    ),
    (
        "select * from (a join secret on a.x = secret.x) join c on c.y = a.y",
        &[(R, "a"), (R, "secret"), (R, "c")],
    ),
    ("select * from t1 natural join (secret)", &[(R, "t1"), (R, "secret")]),
    ("select * from { oj t left outer join secret on 1 }", &[(R, "t"), (R, "secret")]),
    (
        "select * from t use index (i) join secret force index for join (j) on 1",
        &[(R, "t"), (R, "secret")],
    ),
    ("select * from t partition (p0), secret", &[(R, "t"), (R, "secret")]),
    // Subqueries in every position.
    ("select * from (select * from secret) d", &[(R, "secret")]),
    (
        "select * from ((select a from secret) union (select a from t)) d",
        &[(R, "secret"), (R, "t")],
    ),
    ("select (select x from secret) from dual", &[(R, "secret")]),
    ("select * from t where x in (select x from secret)", &[(R, "t"), (R, "secret")]),
    ("select * from t where exists (select 1 from secret)", &[(R, "t"), (R, "secret")]),
    ("select * from t where x = any (select x from secret)", &[(R, "t"), (R, "secret")]),
    (
        "select * from t having max(x) > (select max(y) from secret)",
        &[(R, "t"), (R, "secret")],
    ),
    ("select * from t order by (select y from secret limit 1)", &[(R, "t"), (R, "secret")]),
    ("select * from t group by (select 1 from secret)", &[(R, "t"), (R, "secret")]),
    (
        "select * from t join u on u.x = (select x from secret)",
        &[(R, "t"), (R, "u"), (R, "secret")],
    ),
    ("select concat(a, (select b from secret)) from t", &[(R, "t"), (R, "secret")]),
    ("select extract(year from (select d from secret))", &[(R, "secret")]),
    ("select * from t, lateral (select * from secret) d", &[(R, "t"), (R, "secret")]),
    (
        "select * from json_table((select j from secret), '$' columns (a int path '$')) jt",
        &[(R, "secret")],
    ),
    // Set operations, TABLE, VALUES.
    ("select x from t union select y from secret", &[(R, "t"), (R, "secret")]),
    ("select x from t union all select y from secret", &[(R, "t"), (R, "secret")]),
    ("select x from t except select y from secret", &[(R, "t"), (R, "secret")]),
    ("select x from t intersect select y from secret", &[(R, "t"), (R, "secret")]),
    ("(select 1 from t) union (select 2 from secret)", &[(R, "t"), (R, "secret")]),
    ("table secret", &[(R, "secret")]),
    ("select 1 union table secret", &[(R, "secret")]),
    ("(table secret)", &[(R, "secret")]),
    ("values row(1) union select * from secret", &[(R, "secret")]),
    // CTEs: names in scope are not tables, and only there.
    ("with c as (select * from secret) select * from c", &[(R, "secret")]),
    (
        "with recursive c (n) as (select 1 union all select n + 1 from c where n < 5) select * from c",
        &[],
    ),
    (
        "select * from secret, (with secret as (select 1) select * from secret) d",
        &[(R, "secret")],
    ),
    ("with secret as (select * from secret) select * from secret", &[(R, "secret")]),
    ("with secret as (select 1) select * from ks.secret", &[(R, "secret")]),
    (
        "with c as (select 1) select * from c union select * from (with d as (select 2) select * from d) x, d",
        &[(R, "d")],
    ),
    // Comments, executable and versioned comments.
    ("select * from /* x */ secret -- y", &[(R, "secret")]),
    ("select * from # c\n secret", &[(R, "secret")]),
    ("select 1 /*! from secret */", &[(R, "secret")]),
    ("select 1 /*!50700 from secret */", &[(R, "secret")]),
    ("select 1 /*M! from secret */", &[(R, "secret")]),
    ("/*!50000 select */ * from secret", &[(R, "secret")]),
    (
        "select * from t /*!99999 where x in (select x from secret) */",
        &[(R, "t"), (R, "secret")],
    ),
    ("select 1--1\nfrom secret", &[(R, "secret")]),
    // Strings that look like SQL, and the readings of backslashes.
    ("select 'x'' from secret' from t", &[(R, "t")]),
    ("select * from t where a = 'x' /* ' */ and b in (select b from secret)", &[(R, "t"), (R, "secret")]),
    ("select 1 from t where x = '-- ' and y in (select y from secret)", &[(R, "t"), (R, "secret")]),
    ("select 'a\\' from secret -- '", &[(R, "secret")]),
    ("select \"a\\\" from secret -- \"", &[(R, "secret")]),
    // Multi-statements.
    ("select 1; delete from secret", &[(W, "secret")]),
    ("select 1 from t; /*! drop table secret */", &[(R, "t"), (A, "secret")]),
    // SELECT extras.
    ("select next value from seq", &[(W, "seq")]),
    ("select * into @x from secret", &[(R, "secret")]),
    ("select * from secret into @x", &[(R, "secret")]),
    ("select * from secret for update", &[(R, "secret")]),
    ("select * from secret lock in share mode", &[(R, "secret")]),
    ("select * from t for update of t nowait", &[(R, "t")]),
    // INSERT, REPLACE.
    ("insert into secret values (1)", &[(W, "secret")]),
    ("insert secret values (1)", &[(W, "secret")]),
    ("insert low_priority ignore into ks.secret set a = 1", &[(W, "secret")]),
    ("insert into t select * from secret", &[(W, "t"), (R, "secret")]),
    ("insert into t (a) (select a from secret)", &[(W, "t"), (R, "secret")]),
    ("insert into t table secret", &[(W, "t"), (R, "secret")]),
    ("insert into t values ((select max(a) from secret))", &[(W, "t"), (R, "secret")]),
    (
        "insert into t values (1) on duplicate key update a = (select max(a) from secret), b = 2",
        &[(W, "t"), (R, "secret")],
    ),
    (
        "insert into t select * from u on duplicate key update a = 1, b = 2",
        &[(W, "t"), (R, "u")],
    ),
    ("insert into t with c as (select * from secret) select * from c", &[(W, "t"), (R, "secret")]),
    ("insert into t select * from t", &[(W, "t"), (R, "t")]),
    ("replace into secret select * from t", &[(W, "secret"), (R, "t")]),
    // UPDATE.
    ("update secret set a = 1", &[(W, "secret")]),
    ("update low_priority ignore secret set a = 1", &[(W, "secret")]),
    ("update t, secret set t.a = secret.a", &[(W, "t"), (W, "secret")]),
    ("update t join secret on t.id = secret.id set t.a = 1", &[(W, "t"), (W, "secret")]),
    ("update t set a = (select max(a) from secret)", &[(W, "t"), (R, "secret")]),
    ("update t set a = 1 where b in (select b from secret)", &[(W, "t"), (R, "secret")]),
    (
        "with c as (select * from secret) update t join c on t.id = c.id set t.a = c.a",
        &[(W, "t"), (R, "secret")],
    ),
    ("update (select * from secret) d set d.a = 1", &[(R, "secret")]),
    (
        "update ((select * from t) d join secret on 1) set secret.a = 1",
        &[(R, "t"), (W, "secret")],
    ),
    (
        "select * from ((select a from t) d join secret on 1)",
        &[(R, "t"), (R, "secret")],
    ),
    ("table .secret", &[(R, "secret")]),
    // DELETE.
    ("delete from secret", &[(W, "secret")]),
    ("delete low_priority quick ignore from secret where a = 1", &[(W, "secret")]),
    ("delete from secret where a in (select a from t)", &[(W, "secret"), (R, "t")]),
    ("delete t1 from t1 join secret on t1.id = secret.id", &[(W, "t1"), (W, "secret")]),
    ("delete t1, secret from t1, secret", &[(W, "t1"), (W, "secret")]),
    ("delete from t1 using t1 join secret on 1", &[(W, "t1"), (W, "secret")]),
    ("delete a from t as a", &[(W, "t")]),
    ("delete a.* from t as a, secret b", &[(W, "t"), (W, "secret")]),
    ("delete secret from t", &[(W, "t"), (W, "secret")]),
    (
        "delete secret from t where x in (select 1 from secret)",
        &[(W, "t"), (W, "secret"), (R, "secret")],
    ),
    ("delete ks.secret from ks.secret join t on 1", &[(W, "secret"), (W, "t")]),
    ("delete from secret partition (p0) where a = 1 order by b limit 1", &[(W, "secret")]),
    // DDL.
    ("create table t2 as select * from secret", &[(A, "t2"), (R, "secret")]),
    ("create table t2 select * from secret", &[(A, "t2"), (R, "secret")]),
    ("create table t2 like secret", &[(A, "t2"), (A, "secret")]),
    ("create table t2 (like secret)", &[(A, "t2"), (A, "secret")]),
    ("create table t2 (a int references secret (id))", &[(A, "t2"), (A, "secret")]),
    (
        "create table t2 (a int, foreign key (a) references ks.secret (id) on delete cascade)",
        &[(A, "t2"), (A, "secret")],
    ),
    (
        "create table m (a int) engine=merge union=(secret, t) insert_method=last",
        &[(A, "m"), (A, "secret"), (A, "t")],
    ),
    ("create temporary table if not exists secret (a int)", &[(A, "secret")]),
    ("create view v as select * from secret", &[(A, "v"), (R, "secret")]),
    (
        "create or replace algorithm=merge definer=`u`@`h` sql security definer view v (a) as select a from secret with cascaded check option",
        &[(A, "v"), (R, "secret")],
    ),
    ("alter view v as select * from secret", &[(A, "v"), (R, "secret")]),
    ("create unique index i using btree on secret (a)", &[(A, "secret")]),
    ("alter table secret add column x int", &[(A, "secret")]),
    ("alter table t rename to secret", &[(A, "t"), (A, "secret")]),
    ("alter table t rename secret", &[(A, "t"), (A, "secret")]),
    ("alter table t rename column a to b", &[(A, "t")]),
    ("alter table t exchange partition p with table secret without validation", &[(A, "t"), (A, "secret")]),
    ("alter table t add foreign key (a) references secret (id)", &[(A, "t"), (A, "secret")]),
    ("drop table secret", &[(A, "secret")]),
    ("drop temporary table if exists t, secret", &[(A, "t"), (A, "secret")]),
    ("drop view secret", &[(A, "secret")]),
    ("drop index i on secret lock none", &[(A, "secret")]),
    ("rename table t to secret, a to b", &[(A, "t"), (A, "secret"), (A, "a"), (A, "b")]),
    ("truncate secret", &[(A, "secret")]),
    ("truncate table ks.secret", &[(A, "secret")]),
    ("analyze table secret", &[(W, "secret")]),
    ("analyze local table t, secret", &[(W, "t"), (W, "secret")]),
    ("optimize table secret", &[(A, "secret")]),
    ("repair table secret", &[(A, "secret")]),
    ("check table secret", &[(R, "secret")]),
    ("checksum table secret", &[(R, "secret")]),
    ("flush tables secret with read lock", &[(A, "secret")]),
    // Statements Vitess does not check: secure mode's rules.
    ("lock tables secret read", &[(R, "secret")]),
    ("lock tables t read local, secret as s low_priority write", &[(R, "t"), (W, "secret")]),
    ("load data infile '/x' into table secret", &[(W, "secret")]),
    (
        "load data local infile 'x' replace into table ks.secret fields terminated by ',' set a = (select max(a) from t)",
        &[(W, "secret"), (R, "t")],
    ),
    ("load xml infile 'x' into table secret", &[(W, "secret")]),
    ("handler secret open", &[(R, "secret")]),
    ("handler secret read first", &[(R, "secret")]),
    ("call proc(1)", &[(W, "call:proc")]),
    ("call ks.proc((select a from secret))", &[(W, "call:proc"), (R, "secret")]),
    ("prepare s from 'select * from secret'", &[(R, "secret")]),
    ("execute immediate 'delete from secret'", &[(W, "secret")]),
    ("prepare s from 'prepare t from ''delete from secret'''", &[(W, "secret")]),
    ("do (select a from secret)", &[(R, "secret")]),
    ("set @a = (select a from secret)", &[(R, "secret")]),
    ("set @a = 1, @b = (select a from secret)", &[(R, "secret")]),
    ("show columns from secret", &[(R, "secret")]),
    ("show full fields in ks.secret like 'a%'", &[(R, "secret")]),
    ("show create table secret", &[(R, "secret")]),
    ("show index from secret from ks", &[(R, "secret")]),
    ("show tables where 1 in (select 1 from secret)", &[(R, "secret")]),
    ("describe secret", &[(R, "secret")]),
    ("desc ks.secret a", &[(R, "secret")]),
    ("explain select * from secret", &[(R, "secret")]),
    ("explain format = json delete from secret", &[(W, "secret")]),
    ("explain analyze select * from secret", &[(R, "secret")]),
    ("vexplain queries select * from secret", &[(R, "secret")]),
    ("stream * from secret", &[(R, "secret")]),
    // Fuzz (differential): MySQL reads `//` as two divisions, Vitess as a comment: both
    // readings are checked.
    ("select 1 //* c */ 2 from secret", &[(R, "secret")]),
];

/// Statements secure mode refuses by design: (statement, words the message names).
const BY_DESIGN: &[(&str, &str)] = &[
    ("select * from secret into outfile '/tmp/x'", "INTO OUTFILE"),
    (
        "select * into dumpfile '/tmp/x' from secret",
        "INTO OUTFILE",
    ),
    (
        "create procedure p() begin delete from secret; end",
        "stored programs",
    ),
    (
        "create definer = `u`@`h` trigger tr before insert on secret for each row delete from t",
        "stored programs",
    ),
    (
        "create event e on schedule every 1 hour do delete from secret",
        "stored programs",
    ),
    ("drop database d", "DROP DATABASE"),
    ("grant select on secret to u", "GRANT"),
    ("revoke all on secret from u", "GRANT"),
    ("prepare s from @q", "PREPARE"),
    ("execute immediate @q", "EXECUTE IMMEDIATE"),
    (
        "begin not atomic delete from secret; end",
        "compound statements",
    ),
    ("flush tables", "FLUSH"),
    ("flush tables with read lock", "FLUSH"),
    ("lock instance for backup", "LOCK INSTANCE"),
    (
        "alter vschema on secret add vindex hash (id)",
        "ALTER VSCHEMA",
    ),
];

/// Text secure mode cannot read (the server may read it otherwise, or it is not MySQL).
const UNREADABLE: &[&str] = &[
    // Under GBK or SJIS the byte before the backslash may swallow it.
    "select 'é\\' from secret -- '",
    "select * from",
    "select * from t where a in (select * from)",
    "select * from t1 x y",
    "select * from t1 as",
    // Fuzz (differential): sqlparser reads `fun@ction` as one name; MySQL does not.
    "create table fun@ction_default3 (x bool DEFAULT (true AND false))",
    "select * from t@x",
    "delete from a1, nner j, a2 using t1 as a1 inner join t2 as a2 where a.id",
    "delete a, b from c, 3.lebfrom a, b7",
    "insert i insert i table table",
    "select * from secret straight_join",
    "select * from (secret",
    "delete from",
    "insert into (select 1)",
];

fn settings() -> Settings {
    Settings {
        strict: true,
        dry_run: false,
        exempt: None,
        mode: Mode::Secure,
    }
}

/// An ACL granting `u` exactly `needs`.
fn granting(needs: &[(Role, &str)]) -> TableAcl {
    let mut tables: Vec<&str> = needs.iter().map(|(_, t)| *t).collect();
    tables.sort();
    tables.dedup();
    let mut groups = vec![
        r#"{"name": "other", "table_names_or_prefixes": ["zzz_unrelated"], "readers": ["x"]}"#
            .to_owned(),
    ];
    for (i, t) in tables.iter().enumerate() {
        let has = |r: Role| {
            if needs.iter().any(|(nr, nt)| *nr == r && nt == t) {
                r#"["u"]"#
            } else {
                "[]"
            }
        };
        groups.push(format!(
            r#"{{"name": "g{i}", "table_names_or_prefixes": [{}], "readers": {}, "writers": {}, "admins": {}}}"#,
            serde_json::to_string(t).expect("json"),
            has(R),
            has(W),
            has(A)
        ));
    }
    let json = format!(r#"{{"table_groups": [{}]}}"#, groups.join(","));
    TableAcl::parse("fixture.json", json.as_bytes()).expect("fixture acl")
}

#[test]
fn every_family_names_exactly_its_tables() {
    let mut checked = 0;
    for (sql, want) in FAMILIES {
        let classes = classify(sql, Mode::Secure).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let mut got: Vec<(Role, String)> = Vec::new();
        for c in classes {
            match c {
                Class::Checked { needs, .. } => got.extend(needs),
                Class::Unchecked { .. } => {}
                Class::Denied { reason } => panic!("{sql}: denied: {reason}"),
            }
        }
        got.sort();
        got.dedup();
        let mut want: Vec<(Role, String)> =
            want.iter().map(|(r, t)| (*r, (*t).to_owned())).collect();
        want.sort();
        assert_eq!(got, want, "{sql}");
        // Nothing granted: denied whenever a table is named.
        let none = decide(&granting(&[]), &settings(), "u", &[], sql);
        assert_eq!(none.is_allow(), want.is_empty(), "{sql}: {none:?}");
        // Exactly these grants: allowed.
        let wanted: Vec<(Role, &str)> = want.iter().map(|(r, t)| (*r, t.as_str())).collect();
        let exact = decide(&granting(&wanted), &settings(), "u", &[], sql);
        assert!(exact.is_allow(), "{sql}: {exact:?}");
        checked += 1;
    }
    assert!(checked >= 150, "{checked} families");
}

#[test]
fn secure_mode_refuses_by_design_naming_the_kind_and_the_setting() {
    let everything = granting(&[
        (R, "secret"),
        (W, "secret"),
        (A, "secret"),
        (R, "t"),
        (W, "t"),
    ]);
    for (sql, kind) in BY_DESIGN {
        let d = decide(&everything, &settings(), "u", &[], sql);
        let Decision::Deny { message, .. } = &d else {
            panic!("{sql}: {d:?}")
        };
        assert!(message.contains(kind), "{sql}: {message}");
        assert!(
            message.contains(r#"mode = "vitess" in [tableacl]"#),
            "{sql}: {message}"
        );
        assert!(!d.is_unreadable(), "{sql}");
    }
}

#[test]
fn text_that_cannot_be_read_is_refused_as_unreadable() {
    let everything = granting(&[(R, "secret"), (W, "secret"), (R, "t"), (R, "t1")]);
    for sql in UNREADABLE {
        let d = decide(&everything, &settings(), "u", &[], sql);
        assert!(d.is_unreadable(), "{sql}: {d:?}");
        let Decision::Deny { message, .. } = d else {
            unreachable!()
        };
        assert!(message.contains("sha256"), "the digest is named: {message}");
        assert!(
            !message.contains("secret"),
            "the text is not echoed: {message}"
        );
    }
}

/// What sysbench, Django, Rails and mysqldump send: allowed in both modes when every role is
/// granted.
const APPLICATIONS: &[&str] = &[
    // Rails' MySQL adapter on every new connection (with `encoding:`), and its queries.
    "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci, @@SESSION.sql_mode = CONCAT(CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'), ',NO_AUTO_VALUE_ON_ZERO'), @@SESSION.sql_auto_is_null = 0, @@SESSION.wait_timeout = 2147483",
    "SELECT `users`.* FROM `users` WHERE `users`.`id` = 1 LIMIT 1",
    "SELECT 1 AS one FROM `users` WHERE `users`.`email` = BINARY 'a@b.c' LIMIT 1",
    "SHOW FULL FIELDS FROM `users`",
    "INSERT INTO `users` (`email`, `created_at`) VALUES ('a@b.c', '2024-01-01 00:00:00.000000')",
    "UPDATE `users` SET `users`.`updated_at` = '2024-01-01 00:00:00' WHERE `users`.`id` = 1",
    "SELECT GET_LOCK('rails_migration', 0)",
    // Django.
    "SELECT @@SQL_AUTO_IS_NULL",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SELECT VERSION()",
    "SELECT (1) AS `a` FROM `auth_user` WHERE `auth_user`.`username` = 'x' LIMIT 1",
    "SAVEPOINT `s140245_x1`",
    "RELEASE SAVEPOINT `s140245_x1`",
    "SELECT `django_session`.`session_key`, `django_session`.`session_data` FROM `django_session` WHERE (`django_session`.`expire_date` > '2024-01-01 00:00:00' AND `django_session`.`session_key` = 'abc') LIMIT 21",
    // sysbench oltp_read_write.
    "BEGIN",
    "SELECT c FROM sbtest1 WHERE id=5",
    "SELECT c FROM sbtest1 WHERE id BETWEEN 1 AND 100",
    "SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN 1 AND 100",
    "SELECT c FROM sbtest1 WHERE id BETWEEN 1 AND 100 ORDER BY c",
    "SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN 1 AND 100 ORDER BY c",
    "UPDATE sbtest1 SET k=k+1 WHERE id=5",
    "UPDATE sbtest1 SET c='83868641912-28773972837' WHERE id=5",
    "DELETE FROM sbtest1 WHERE id=5",
    "INSERT INTO sbtest1 (id, k, c, pad) VALUES (5, 4993, '83868641912', '67847967377')",
    "COMMIT",
    // mysqldump.
    "/*!40100 SET @@SQL_MODE='' */",
    "/*!40103 SET TIME_ZONE='+00:00' */",
    "SET SQL_QUOTE_SHOW_CREATE=1",
    "START TRANSACTION /*!40100 WITH CONSISTENT SNAPSHOT */",
    "SHOW VARIABLES LIKE 'ndbinfo\\_version'",
    "SHOW CREATE DATABASE IF NOT EXISTS `shop`",
    "SHOW TABLE STATUS FROM `shop` WHERE Name = 'users'",
    "SHOW CREATE TABLE `users`",
    "SELECT /*!40001 SQL_NO_CACHE */ * FROM `users`",
    "LOCK TABLES `users` READ /*!32311 LOCAL */",
    "UNLOCK TABLES",
    "SET CHARACTER SET utf8mb4",
];

#[test]
fn application_statements_are_allowed() {
    let everything = TableAcl::parse(
        "all.json",
        br#"{"table_groups": [{"name": "all", "table_names_or_prefixes": ["%"], "readers": ["u"], "writers": ["u"], "admins": ["u"]}]}"#,
    )
    .expect("acl");
    for mode in [Mode::Vitess, Mode::Secure] {
        let s = Settings { mode, ..settings() };
        for sql in APPLICATIONS {
            let d = decide(&everything, &s, "u", &[], sql);
            assert!(d.is_allow(), "{mode:?}: {sql}: {d:?}");
        }
    }
}

/// Statements hidden after a stored program whose blocks end earlier than they seem (`begin`
/// is also a variable name) are still checked in vitess mode.
#[test]
fn what_follows_a_stored_program_is_checked() {
    let vitess = Settings {
        mode: Mode::Vitess,
        ..settings()
    };
    let none = granting(&[]);
    for sql in [
        "create procedure p() begin declare begin int; end; delete from secret; select 1 as end",
        "create procedure p() begin select 1; end; delete from secret",
    ] {
        let d = decide(&none, &vitess, "u", &[], sql);
        assert!(!d.is_allow(), "{sql}: {d:?}");
    }
    assert!(decide(
        &none,
        &vitess,
        "u",
        &[],
        "create procedure p() begin select 1; end"
    )
    .is_allow());
}

#[test]
fn fuzz_and_review_findings() {
    // Fuzz (differential): sqlparser reads `x * from t` as a product with a column named
    // `from`; FROM is reserved in MySQL, so the server reads a FROM clause, and so does vtguard.
    let c = classify(
        "SELECT JSON_ARRAselect /* XOR of columns in where */ * from t where a xor bY(1)",
        Mode::Vitess,
    )
    .expect("readable");
    assert_eq!(
        c,
        vec![Class::Checked {
            plan: "Select",
            needs: vec![(R, "t".into())]
        }]
    );
    // NTH_VALUE's FROM FIRST|LAST is followed by OVER or RESPECT|IGNORE NULLS; `FROM first
    // IGNORE INDEX (i)` is a table.
    let c = classify("select * from first ignore index (i)", Mode::Secure).expect("readable");
    assert_eq!(
        c,
        vec![Class::Checked {
            plan: "Select",
            needs: vec![(R, "first".into())]
        }]
    );
}

/// Every input the differential fuzz target found (agent/fuzz/regressions) now passes it.
#[test]
fn fuzz_regressions_pass_the_differential() {
    use super::reference::{differential, Compare};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).expect("agent/fuzz/regressions") {
        let path = f.expect("entry").path();
        let bytes = std::fs::read(&path).expect("readable");
        let Ok(sql) = std::str::from_utf8(&bytes) else {
            continue;
        };
        differential(sql, Compare::NoneMissed).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        n += 1;
    }
    assert!(n >= 7, "{n} regressions");
}
