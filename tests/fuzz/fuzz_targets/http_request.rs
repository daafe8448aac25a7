//! The HTTP request head parser: any bytes give a route, a refusal or "more needed", never
//! a panic; what a route carries is within its bounds.
#![no_main]

use broadcast_server::wire::http::{MAX_POST, Route, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_request(data);
    assert_eq!(parsed, parse_request(data), "not deterministic");
    match parsed {
        Ok(Some(request)) => match request.route {
            Route::Publish {
                length,
                head_len,
                body,
                ..
            } => {
                assert!(length <= MAX_POST, "a body over the bound accepted");
                assert!(head_len <= data.len());
                assert!(body.is_none(), "a body before it was read");
            }
            Route::WebSocket { key, .. } => {
                let decoded =
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &key);
                assert_eq!(
                    decoded.map(|k| k.len()).ok(),
                    Some(16),
                    "a bad key accepted"
                );
            }
            _ => {}
        },
        // More is needed: nothing to check but that it did not panic.
        Ok(None) => {}
        Err(refusal) => {
            assert!(
                (400..600).contains(&refusal.status.0),
                "a refusal that is not an error"
            );
            assert!(!refusal.reason.is_empty());
        }
    }
});
