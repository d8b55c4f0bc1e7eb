//! diesel table definitions for the tables the stores query through the DSL.
//!
//! Written by hand to match `migrations/`; the stores' tests read and write
//! every column, so a drift shows up there. The ledger's tables are not here:
//! the ledger speaks SQL directly.

diesel::table! {
    /// Desktop sessions (migration 3); see `crate::sessions::store`.
    sessions (id) {
        /// The session id.
        id -> Uuid,
        /// Owner, lower-case 0x address.
        address -> Text,
        /// GPUs asked for.
        gpus -> Int4,
        /// `queued`, `launching`, `running`, `stopping` or `ended`.
        state -> Text,
        /// The GPU host, while GPUs are held.
        host -> Nullable<Int4>,
        /// Device indices held on `host`.
        gpu_indices -> Array<Int4>,
        /// The container, once launched.
        container_id -> Nullable<Text>,
        /// Full billing intervals debited.
        billed_intervals -> Int8,
        /// Credit-seconds debited.
        billed_credit -> Int8,
        /// Running time billed, in milliseconds.
        billed_ms -> Int8,
        /// Why it ended, as the actors serialise `EndReason`.
        end_reason -> Nullable<Jsonb>,
        /// First saved.
        created_at -> Timestamptz,
        /// Last saved.
        updated_at -> Timestamptz,
        /// First saved as running.
        started_at -> Nullable<Timestamptz>,
        /// Saved as ended.
        ended_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Sign-in nonces handed out (migration 4).
    challenges (nonce) {
        /// The nonce in the EIP-4361 message.
        nonce -> Text,
        /// The address it was issued to.
        address -> Text,
        /// When it was issued.
        issued_at -> Timestamptz,
        /// When it stops being accepted.
        expires_at -> Timestamptz,
        /// When a signature over it was accepted.
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Bearer tokens, by their SHA-256 only (migration 4).
    auth_tokens (token_sha256) {
        /// SHA-256 of the token (32 bytes).
        token_sha256 -> Bytea,
        /// The address it signs in.
        address -> Text,
        /// When it was issued.
        issued_at -> Timestamptz,
        /// When it stops being accepted.
        expires_at -> Timestamptz,
        /// When it was revoked.
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Who did what, when (migration 1).
    audit_log (id) {
        /// Insertion order.
        id -> Int8,
        /// When it was recorded.
        at -> Timestamptz,
        /// `admin`, `system` or `wallet:<address>`.
        actor -> Text,
        /// Dotted verb, e.g. `credit.adjust`.
        action -> Text,
        /// What it concerns.
        subject -> Nullable<Text>,
        /// Anything else worth keeping.
        details -> Jsonb,
    }
}
