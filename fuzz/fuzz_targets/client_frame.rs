//! The client frame decoder (`protocol::codec::decode_client`), in both encodings: any bytes
//! decode to a frame or an error, never a panic; and a frame that decodes encodes back, in
//! either encoding, to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{decode_client, encode_client, Encoding};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        let Ok(frame) = decode_client(encoding, data) else { continue };
        for again in [Encoding::Json, Encoding::MessagePack] {
            let bytes = encode_client(again, &frame);
            let decoded = decode_client(again, &bytes)
                .unwrap_or_else(|err| panic!("{frame:?} re-encoded in {again:?} does not decode: {}", err.message));
            assert_eq!(decoded, frame, "{again:?} round trip");
        }
    }
});
