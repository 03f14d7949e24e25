//! A client that pipelines (sends several commands before reading) gets the responses in the
//! order of its commands, whether vtguard or the server answers each: a denied command's ERR
//! waits for the responses to the commands before it. Real MariaDB, a raw client over TLS
//! with a client certificate, the MySQL reference table ACL (`vtgate client 1` reads
//! `vt_insert_test` and `seq_%`, writes nothing).

use std::io::{Read, Write};

use vtguard_agent::proxy::mysql::handshake::cap;
use vtguard_tests::mysql::{clientcert_setup, err_of, mariadb_available, packet, tls_login_with};

/// SERVER_MORE_RESULTS_EXISTS.
const MORE_RESULTS: u16 = 0x0008;

/// One response as the client reads it.
#[derive(Debug, PartialEq, Eq)]
enum Response {
    /// A result set's rows (first column, as text), and whether another result follows
    /// (SERVER_MORE_RESULTS_EXISTS in its terminator).
    Rows(Vec<String>, bool),
    Ok(u16),
    Err(u16),
    /// A COM_STMT_PREPARE answer: (parameters, columns).
    Prepared(u16, u16),
}

struct Client<S> {
    s: S,
}

impl<S: Read + Write> Client<S> {
    /// A packet: (sequence, payload). Payloads here are under 16 MiB.
    fn packet(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 4];
        self.s.read_exact(&mut h).expect("packet header");
        let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).expect("packet payload");
        (h[3], p)
    }

    /// The next response to a COM_QUERY (one result of it), checking that it starts at
    /// sequence 1 (or continues a multi-result response) as the protocol has it.
    fn response(&mut self, first_of_command: bool) -> Response {
        let (seq, head) = self.packet();
        if first_of_command {
            assert_eq!(seq, 1, "a response starts at sequence 1: {head:?}");
        }
        match head[0] {
            0x00 => Response::Ok(status_of_ok(&head)),
            0xff => Response::Err(err_of(&head).0),
            n => {
                let mut last = seq;
                for _ in 0..n {
                    last = self.next(last).0;
                }
                let (s, eof) = self.next(last);
                assert_eq!(eof[0], 0xfe, "EOF after the columns");
                last = s;
                let mut rows = Vec::new();
                loop {
                    let (s, p) = self.next(last);
                    last = s;
                    if p[0] == 0xfe && p.len() < 9 {
                        let status = u16::from_le_bytes([p[3], p[4]]);
                        return Response::Rows(rows, status & MORE_RESULTS != 0);
                    }
                    assert_ne!(p[0], 0xff, "no error inside the rows");
                    rows.push(String::from_utf8_lossy(&p[1..1 + usize::from(p[0])]).into_owned());
                }
            }
        }
    }

    /// The packet after the one at `last`: its sequence must follow.
    fn next(&mut self, last: u8) -> (u8, Vec<u8>) {
        let (seq, p) = self.packet();
        assert_eq!(
            seq,
            last.wrapping_add(1),
            "sequence numbers follow within a response"
        );
        (seq, p)
    }

    /// A COM_STMT_PREPARE response (no DEPRECATE_EOF: definitions end with EOFs).
    fn prepared(&mut self) -> Response {
        let (seq, head) = self.packet();
        assert_eq!(seq, 1);
        if head[0] == 0xff {
            return Response::Err(err_of(&head).0);
        }
        let columns = u16::from_le_bytes([head[5], head[6]]);
        let params = u16::from_le_bytes([head[7], head[8]]);
        let mut last = seq;
        for n in [params, columns] {
            for _ in 0..n {
                last = self.next(last).0;
            }
            if n > 0 {
                let (s, eof) = self.next(last);
                assert_eq!(eof[0], 0xfe);
                last = s;
            }
        }
        Response::Prepared(params, columns)
    }
}

fn status_of_ok(p: &[u8]) -> u16 {
    // 0x00, affected rows and last insert id (single-byte here), status.
    assert!(p[1] < 0xfb && p[2] < 0xfb, "small lenenc values");
    u16::from_le_bytes([p[3], p[4]])
}

fn query(sql: &str) -> Vec<u8> {
    let mut q = vec![0x03];
    q.extend_from_slice(sql.as_bytes());
    packet(0, &q)
}

fn command(code: u8, body: &[u8]) -> Vec<u8> {
    let mut q = vec![code];
    q.extend_from_slice(body);
    packet(0, &q)
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_commands_are_answered_in_order_whoever_answers() {
    if !mariadb_available("pipelined_commands_are_answered_in_order_whoever_answers") {
        return;
    }
    let setup = clientcert_setup().await;
    let (pki, addr) = (&setup.pki, setup.l.addr);
    let (tls, _) = tls_login_with(
        pki,
        addr,
        "vtgate-client-1",
        "vtgate client 1",
        false,
        cap::MULTI_STATEMENTS,
    )
    .expect("login");
    let mut c = Client { s: tls };
    let many: Vec<String> = (1..=20_000).map(|n| n.to_string()).collect();
    let allowed_big = query("select seq from vt.seq_1_to_20000");
    let denied_update = query("update vt.vt_insert_test set msg = 'pwned'");
    let allowed_small = query("select msg from vt.vt_insert_test where id = 1");
    let denied_delete = query("delete from vt.vt_insert_test");

    // Every interleaving of allowed (A) and denied (D) commands, up to four, in one write.
    for pattern in ["AD", "DA", "ADAD", "DDAA", "AADD", "DADA", "ADDA", "DAAD"] {
        let mut write = Vec::new();
        for (i, k) in pattern.chars().enumerate() {
            write.extend(match (k, i % 2) {
                ('A', 0) => &allowed_big,
                ('A', _) => &allowed_small,
                (_, 0) => &denied_update,
                _ => &denied_delete,
            });
        }
        c.s.write_all(&write).expect("pipelined commands");
        for (i, k) in pattern.chars().enumerate() {
            let got = c.response(true);
            let want = match (k, i % 2) {
                ('A', 0) => Response::Rows(many.clone(), false),
                ('A', _) => Response::Rows(vec!["one".into()], false),
                _ => Response::Err(1142),
            };
            // Compare the big result by size and ends, to keep a failure readable.
            match (&got, &want) {
                (Response::Rows(g, _), Response::Rows(w, _)) if w.len() > 100 => assert!(
                    g.len() == w.len() && g.first() == w.first() && g.last() == w.last(),
                    "{pattern} #{i}: {} rows",
                    g.len()
                ),
                _ => assert_eq!(got, want, "{pattern} #{i}"),
            }
        }
    }

    // A multi-statement query (two result sets, chained) and a denied command behind it.
    let mut write = query("select seq from vt.seq_1_to_2; select seq from vt.seq_1_to_3");
    write.extend(&denied_update);
    c.s.write_all(&write).expect("multi-statement and denied");
    let first = c.response(true);
    assert_eq!(first, Response::Rows(vec!["1".into(), "2".into()], true));
    assert_eq!(
        c.response(false),
        Response::Rows(vec!["1".into(), "2".into(), "3".into()], false)
    );
    assert_eq!(c.response(true), Response::Err(1142));

    // Prepared statements: an allowed prepare (one parameter, one column), a close (no
    // response), a denied prepare, a ping; in one write.
    let mut write = command(0x16, b"select msg from vt.vt_insert_test where id = ?");
    write.extend(command(0x19, &1u32.to_le_bytes()));
    write.extend(command(0x16, b"update vt.vt_insert_test set msg = ?"));
    write.extend(command(0x0e, b""));
    c.s.write_all(&write).expect("prepares");
    assert_eq!(c.prepared(), Response::Prepared(1, 1));
    assert_eq!(c.prepared(), Response::Err(1142));
    assert!(matches!(c.response(true), Response::Ok(_)), "the ping's OK");

    // And the session is in step afterwards; nothing denied changed anything.
    c.s.write_all(&allowed_small).expect("query");
    assert_eq!(c.response(true), Response::Rows(vec!["one".into()], false));
    assert_eq!(
        setup
            .db
            .root_sql("select group_concat(msg order by id) from vt.vt_insert_test"),
        "one,two,three\n"
    );
}
