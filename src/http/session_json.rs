//! How a session record reads in JSON. Its owner (`sessions.rs`) and the
//! operator (`admin.rs`) are shown the same fields, so both build them here.
//!
//! Below the handlers: this file imports nothing of `http/`.

use deskgate_actors::ports::{EndReason, SessionRecord};
use serde_json::{Value, json};

use crate::sessions::profiles::profile_name;

/// Why a session ended, as its serde form; `null` while it has not.
pub(crate) fn reason_json(reason: Option<&EndReason>) -> Value {
    reason
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or(Value::Null)
}

/// A session record: profile, GPUs, state, what was billed, why it ended.
pub(crate) fn record_json(record: &SessionRecord) -> Value {
    json!({
        "id": record.id.to_string(),
        "profile": profile_name(record.gpus),
        "gpus": record.gpus,
        "state": record.state.as_str(),
        "gpu_ids": record.gpu_addrs.iter().map(|g| g.index).collect::<Vec<_>>(),
        "host": record.gpu_addrs.first().map(|g| g.host),
        "billed_credit_seconds": record.billed_credit,
        "billed_seconds": record.billed_ms / 1000,
        "end_reason": reason_json(record.end_reason.as_ref()),
    })
}
