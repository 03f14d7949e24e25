//! An impostor on the upstream's port (the real server down or restarting, someone else
//! listening there) must not get a caller's password: vtguard refuses every authentication
//! that would have the client send its password in clear, before the client is asked for it,
//! unless the listener sets `mysql-allow-clear-text-without-tls = true`.
//!
//! The impostor is a small MySQL-protocol server written here (it records every byte a
//! client sends it); the client is the real PyMySQL, over TLS with a client certificate.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use vtguard_agent::proxy::mysql::handshake::{cap, Greeting};
use vtguard_tests::{
    mysql::{clientcert, packet, py_client, python_has, start_listener},
    pki::Pki,
};

const PASSWORD: &str = "s3cret-Passw0rd";

/// How the impostor asks for the password.
#[derive(Clone, Copy, Debug)]
enum Ask {
    /// Its greeting names `mysql_clear_password`.
    Greeting,
    /// A mysql_native_password greeting, then an AuthSwitchRequest to `mysql_clear_password`
    /// once the login arrives.
    Switch,
    /// caching_sha2_password, then "perform full authentication" (0x01 0x04).
    FullAuthentication,
}

/// A fake MySQL server on 127.0.0.1: greets, asks for the password as `ask` says, and keeps
/// every byte each client sends. Returns its address and the bytes.
async fn impostor(ask: Ask) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let keep = Arc::clone(&keep);
            tokio::spawn(async move {
                let plugin: &[u8] = match ask {
                    Ask::Greeting => b"mysql_clear_password",
                    Ask::Switch => b"mysql_native_password",
                    Ask::FullAuthentication => b"caching_sha2_password",
                };
                let greeting = Greeting {
                    server_version: b"8.0.36-impostor".to_vec(),
                    connection_id: 7,
                    salt: b"abcdefghijklmnopqrst".to_vec(),
                    capabilities: cap::LONG_PASSWORD
                        | cap::PROTOCOL_41
                        | cap::SECURE_CONNECTION
                        | cap::PLUGIN_AUTH
                        | cap::PLUGIN_AUTH_LENENC
                        | cap::CONNECT_WITH_DB
                        | cap::TRANSACTIONS
                        | cap::MULTI_STATEMENTS
                        | cap::MULTI_RESULTS,
                    charset: 33,
                    status: 2,
                    mariadb_ext: 0,
                    auth_plugin: plugin.to_vec(),
                };
                if s.write_all(&packet(0, &greeting.encode())).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                let mut asked = false;
                loop {
                    let n = match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => n,
                        _ => return,
                    };
                    keep.lock()
                        .expect("impostor bytes")
                        .extend_from_slice(&buf[..n]);
                    if asked {
                        // The answer to the request: refuse it, so that the client stops waiting.
                        let err = b"\xff\x15\x04#28000Access denied";
                        let _ = s.write_all(&packet(4, err)).await;
                        return;
                    }
                    asked = true;
                    // The login arrived (sequence 1): ask for the password.
                    let ask_packet = match ask {
                        // The login carried the answer already.
                        Ask::Greeting => {
                            let err = b"\xff\x15\x04#28000Access denied";
                            let _ = s.write_all(&packet(2, err)).await;
                            return;
                        }
                        Ask::Switch => {
                            let mut p = vec![0xfe];
                            p.extend_from_slice(b"mysql_clear_password\0");
                            p
                        }
                        Ask::FullAuthentication => vec![0x01, 0x04],
                    };
                    if s.write_all(&packet(2, &ask_packet)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// PyMySQL through a clientcert listener in front of an impostor that asks as `ask`; with
/// `allow`, the listener relays clear-text authentication. Returns PyMySQL's output and what
/// the impostor received.
async fn login_through_vtguard(ask: Ask, allow: bool) -> (Vec<String>, Vec<u8>) {
    let pki = Pki::generate();
    let (upstream, seen) = impostor(ask).await;
    let extra = if allow {
        "mysql-allow-clear-text-without-tls = true\n"
    } else {
        ""
    };
    let l = start_listener(&clientcert(&pki, upstream).extra(extra).toml(), None).await;
    let addr = l.addr;
    let out = tokio::task::spawn_blocking(move || {
        py_client(
            "pymysql",
            addr,
            "vtgate client 1",
            PASSWORD,
            Some((&pki, "vtgate-client-1")),
            &["select 1"],
        )
    })
    .await
    .expect("python client");
    // Whatever the client sent has reached the impostor by the time the client gave up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bytes = seen.lock().expect("impostor bytes").clone();
    (out, bytes)
}

fn holds_password(bytes: &[u8]) -> bool {
    bytes
        .windows(PASSWORD.len())
        .any(|w| w == PASSWORD.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_byte_reaches_an_impostor_asking_for_it_in_clear() {
    if !python_has(
        "no_password_byte_reaches_an_impostor_asking_for_it_in_clear",
        "pymysql",
    ) {
        return;
    }
    for ask in [Ask::Greeting, Ask::Switch, Ask::FullAuthentication] {
        let (out, bytes) = login_through_vtguard(ask, false).await;
        assert_eq!(out.len(), 1, "{ask:?}: {out:?}");
        assert!(
            out[0].starts_with("CONNECT_ERR 1045 ")
                && out[0].contains("asked for the password in clear")
                && out[0].contains("mysql-allow-clear-text-without-tls"),
            "{ask:?}: the client is told why: {out:?}"
        );
        assert!(
            !holds_password(&bytes),
            "{ask:?}: the password reached the impostor"
        );
    }
}

/// The control: with the key set, the same client does send its password, and the test sees
/// it, so the test above could fail.
#[tokio::test(flavor = "multi_thread")]
async fn with_clear_text_allowed_the_password_is_relayed() {
    if !python_has("with_clear_text_allowed_the_password_is_relayed", "pymysql") {
        return;
    }
    // (A second switch, the impostor's after vtguard's own, PyMySQL refuses by itself.)
    let (_, bytes) = login_through_vtguard(Ask::Greeting, true).await;
    assert!(
        holds_password(&bytes),
        "with mysql-allow-clear-text-without-tls the password goes upstream"
    );
}
