//! Fuzzes the JSON a gate and a `deskgate launcher` exchange
//! (src/launcher/remote/wire.rs, src/launcher/remote/service/): the launch
//! spec as the launcher's `POST /v1/sessions` reads it (the body as a
//! `serde_json::Value`, as axum's `Json` extractor reads it, then
//! `service::check_spec`, which refuses privilege fields and checks the
//! GPUs against the host's), and `serde_json::from_slice` of every wire type
//! either side reads: `LaunchRequest`, `LaunchResponse`, `ContainerView`,
//! `ExitEvent`, `WebRtcOfferMsg` (the launcher's WebRTC socket) and
//! `WebRtcReport` (the gate's).
//!
//! What must hold: no input panics or hangs; a spec naming a privilege
//! field is refused with 403; an accepted spec names each GPU once and only
//! GPUs the host offers (here 0 to 3), and carries the body's session and
//! host.
#![no_main]

use std::collections::BTreeSet;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use deskgate::launcher::remote::service::check_spec;
use deskgate::launcher::remote::wire::{
    ContainerView, ExitEvent, LaunchRequest, LaunchResponse, WebRtcOfferMsg, WebRtcReport,
};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// Some of the fields `check_spec` refuses by name.
const PRIVILEGED: [&str; 4] = ["privileged", "binds", "image", "host_config"];

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<LaunchRequest>(data);
    let _ = serde_json::from_slice::<LaunchResponse>(data);
    let _ = serde_json::from_slice::<ContainerView>(data);
    let _ = serde_json::from_slice::<ExitEvent>(data);
    let _ = serde_json::from_slice::<WebRtcOfferMsg>(data);
    let _ = serde_json::from_slice::<WebRtcReport>(data);

    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let offered = BTreeSet::from([0, 1, 2, 3]);
    let asks_privilege = body
        .as_object()
        .is_some_and(|fields| PRIVILEGED.iter().any(|f| fields.contains_key(*f)));
    match check_spec(&body, &offered) {
        Ok(spec) => {
            assert!(!asks_privilege, "a privilege field was accepted");
            let unique: BTreeSet<u32> = spec.gpu_indices.iter().copied().collect();
            assert_eq!(unique.len(), spec.gpu_indices.len(), "a GPU named twice");
            assert!(unique.is_subset(&offered), "a GPU the host does not offer");
            if let Some(session) = body["session"].as_str() {
                assert_eq!(
                    Uuid::parse_str(session).ok(),
                    Some(spec.session.0),
                    "the body's session"
                );
            }
            assert_eq!(
                body["host"].as_u64(),
                Some(u64::from(spec.host)),
                "the body's host"
            );
        }
        Err(problem) => {
            if asks_privilege {
                assert_eq!(problem.into_response().status(), StatusCode::FORBIDDEN);
            }
        }
    }
});
