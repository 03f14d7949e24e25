//! The caller-ID rewrite on arbitrary request bytes. Invariant: when vtguard forwards a message
//! (it parses as protobuf fields), the forwarded message holds exactly one field 2 (the
//! immediate caller ID), equal to the proven one, and every other field byte for byte and in
//! order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtguard_agent::proxy::grpc::wire;

fuzz_target!(|data: &[u8]| {
    let Ok(fields) = wire::fields(data) else {
        return;
    };
    let ours = b"\x0a\x0fvtgate client 1\x12\x02g1";
    let out = wire::replace_field(data, &fields, 2, ours);
    let got = wire::fields(&out).expect("the forwarded message parses");
    let twos: Vec<_> = got.iter().filter(|f| f.number == 2).collect();
    assert_eq!(twos.len(), 1, "exactly one caller ID");
    assert_eq!(&out[twos[0].payload.clone()], &ours[..], "the proven one");
    let others = |msg: &[u8], fs: &[wire::Field]| -> Vec<Vec<u8>> {
        fs.iter()
            .filter(|f| f.number != 2)
            .map(|f| msg[f.span.clone()].to_vec())
            .collect()
    };
    assert_eq!(
        others(data, &fields),
        others(&out, &got),
        "every other byte kept"
    );
});
