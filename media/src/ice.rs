//! Why a WebRTC connection failed, in words an operator can act on.
//!
//! The adapter records the ICE states a connection went through
//! ([`IceHistory`]); when the connection fails, [`IceFailure::classify`]
//! names the reason from a closed set, and [`report`] logs it at warn with
//! the candidates involved and counts it as
//! `deskgate_media_ice_failures_total{reason}` (`no_pair`, `consent_lost`,
//! `dtls`).

use std::fmt;

use webrtc::peer_connection::{RTCIceConnectionState, RTCStatsReport, RTCStatsReportEntry};

/// Why a peer connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IceFailure {
    /// ICE never connected: no candidate pair between the browser and this
    /// host succeeded (a firewall, no TURN, unreachable addresses).
    NoPair,
    /// ICE connected, then the browser stopped answering consent checks
    /// (its network went away, or a NAT binding expired).
    ConsentLost,
    /// ICE connected but the DTLS handshake on top of it failed.
    Dtls,
}

impl IceFailure {
    /// The metric label: a closed set.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoPair => "no_pair",
            Self::ConsentLost => "consent_lost",
            Self::Dtls => "dtls",
        }
    }

    /// The reason for a connection that failed after `history`.
    pub fn classify(history: &IceHistory) -> Self {
        if !history.connected {
            Self::NoPair
        } else if matches!(
            history.last,
            RTCIceConnectionState::Disconnected | RTCIceConnectionState::Failed
        ) {
            Self::ConsentLost
        } else {
            Self::Dtls
        }
    }
}

impl fmt::Display for IceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoPair => "no candidate pair succeeded",
            Self::ConsentLost => "consent lost: the browser stopped answering",
            Self::Dtls => "the DTLS handshake failed",
        })
    }
}

/// The ICE states one connection has been through.
#[derive(Clone, Copy, Debug, Default)]
pub struct IceHistory {
    /// ICE reached connected (or completed) at least once.
    pub connected: bool,
    /// The latest state.
    pub last: RTCIceConnectionState,
}

impl IceHistory {
    /// Records a state change.
    pub fn on_state(&mut self, state: RTCIceConnectionState) {
        if matches!(
            state,
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
        ) {
            self.connected = true;
        }
        self.last = state;
    }
}

/// The candidates of a failed connection, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CandidateSummary {
    /// `local-type→remote-type` of the selected pair, or `none`.
    pub selected_pair: String,
    /// The types of the local candidates gathered, e.g. `host,srflx`, or
    /// `none`.
    pub local: String,
    /// The types of the browser's candidates, or `none`.
    pub remote: String,
}

impl CandidateSummary {
    /// Reads the summary from a stats report of the connection.
    pub fn from_stats(report: &RTCStatsReport) -> Self {
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for entry in report.iter() {
            match entry {
                RTCStatsReportEntry::LocalCandidate(c) => {
                    local.push(c.candidate_type.to_string());
                }
                RTCStatsReportEntry::RemoteCandidate(c) => {
                    remote.push(c.candidate_type.to_string());
                }
                _ => {}
            }
        }
        let type_of = |id: &str| match report.get(id) {
            Some(
                RTCStatsReportEntry::LocalCandidate(c) | RTCStatsReportEntry::RemoteCandidate(c),
            ) => c.candidate_type.to_string(),
            _ => "?".to_owned(),
        };
        let selected_pair = report
            .transport()
            .map(|t| t.selected_candidate_pair_id.as_str())
            .filter(|id| !id.is_empty())
            .and_then(|id| match report.get(id) {
                Some(RTCStatsReportEntry::IceCandidatePair(pair)) => Some(format!(
                    "{}→{}",
                    type_of(&pair.local_candidate_id),
                    type_of(&pair.remote_candidate_id)
                )),
                _ => None,
            })
            .unwrap_or_else(|| "none".to_owned());
        Self {
            selected_pair,
            local: types(local),
            remote: types(remote),
        }
    }
}

/// Distinct types, sorted, comma-separated; `none` for none.
fn types(mut all: Vec<String>) -> String {
    all.sort();
    all.dedup();
    if all.is_empty() {
        "none".to_owned()
    } else {
        all.join(",")
    }
}

/// Logs and counts a failed connection of stream `stream`.
pub fn report(
    failure: IceFailure,
    history: &IceHistory,
    candidates: &CandidateSummary,
    stream: &str,
) {
    metrics::counter!("deskgate_media_ice_failures_total", "reason" => failure.label())
        .increment(1);
    tracing::warn!(
        stream,
        reason = failure.label(),
        detail = %failure,
        ice_state = %history.last,
        selected_pair = %candidates.selected_pair,
        local_candidates = %candidates.local,
        remote_candidates = %candidates.remote,
        "WebRTC connection failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use RTCIceConnectionState as S;

    fn after(states: &[RTCIceConnectionState]) -> IceFailure {
        let mut h = IceHistory::default();
        for s in states {
            h.on_state(*s);
        }
        IceFailure::classify(&h)
    }

    #[test]
    fn the_reason_follows_the_states_gone_through() {
        assert_eq!(after(&[S::New, S::Checking, S::Failed]), IceFailure::NoPair);
        assert_eq!(after(&[]), IceFailure::NoPair);
        assert_eq!(
            after(&[S::Checking, S::Connected, S::Disconnected, S::Failed]),
            IceFailure::ConsentLost
        );
        assert_eq!(after(&[S::Checking, S::Connected]), IceFailure::Dtls);
        assert_eq!(IceFailure::NoPair.label(), "no_pair");
        assert_eq!(
            format!("ICE failed ({})", IceFailure::NoPair),
            "ICE failed (no candidate pair succeeded)"
        );
    }

    #[test]
    fn candidate_types_are_listed_once_each() {
        assert_eq!(
            types(vec!["srflx".into(), "host".into(), "host".into()]),
            "host,srflx"
        );
        assert_eq!(types(Vec::new()), "none");
    }
}
