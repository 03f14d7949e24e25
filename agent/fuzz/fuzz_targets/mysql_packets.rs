//! The MySQL protocol glue that faces the network, on arbitrary bytes: the packet reader, the
//! login and greeting parsers, and the response tracker of the relay. No panic; a login that
//! parses is forwarded as one that names the same user with the same credentials.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtguard_agent::proxy::mysql::{
    handshake::{Greeting, Login},
    packet,
    responses::{Expect, Responses},
};

fuzz_target!(|data: &[u8]| {
    if let Ok(login) = Login::parse(data) {
        // What vtguard forwards is the login re-encoded: it parses, names the same user with
        // the same credentials and capabilities, and encoding it again changes nothing (fields
        // a client left out come back empty, well formed).
        let bytes = login.encode();
        let again = Login::parse(&bytes).expect("an encoded login parses");
        assert_eq!(
            (&again.user, &again.auth_response, again.capabilities),
            (&login.user, &login.auth_response, login.capabilities)
        );
        assert_eq!(again.encode(), bytes);
    }
    let _ = Greeting::parse(data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut r = data;
        while let Ok((_, p)) = packet::read(&mut r, 1 << 16).await {
            assert!(p.len() <= 1 << 16);
        }
    });
    for caps in [0, 1 << 24] {
        let mut t = Responses::new(caps);
        for command in data.iter().take(8) {
            if let Some(e) = Expect::of(*command) {
                t.expect(e);
            }
        }
        let mut ends = 0;
        t.feed(data, |e| {
            if let vtguard_agent::proxy::mysql::responses::Event::Ended { at, .. } = e {
                assert!(at <= data.len());
                ends += 1;
            }
        });
        assert!(ends <= 8, "no more responses end than were owed");
    }
});
