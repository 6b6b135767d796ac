//! The inter-node decoder (`cluster::wire`): any bytes from a peer decode to a message or
//! to `RouterMessage::Invalid`, never a panic, and so do the payloads nested in it (deliveries,
//! runs of deliveries, pushes); a message that decodes encodes back to one that decodes.
#![no_main]

use cluster::wire::{self, RouterMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let message = wire::decode(data);
    match &message {
        RouterMessage::Invalid(_) => {}
        RouterMessage::Deliver(bytes) => {
            let _ = wire::decode_delivery(bytes);
        }
        RouterMessage::DeliverRun(bytes) => {
            let _ = wire::decode_run(bytes);
        }
        RouterMessage::Push(bytes) => {
            let _ = wire::decode_push(bytes);
        }
        _ => {}
    }
    if !matches!(message, RouterMessage::Invalid(_)) {
        let again = wire::decode(&wire::encode(&message));
        assert_eq!(again, message, "round trip");
    }
    // The nested payloads are also reached without a valid envelope around them.
    let _ = wire::decode_delivery(data);
    let _ = wire::decode_run(data);
    let _ = wire::decode_push(data);
});
