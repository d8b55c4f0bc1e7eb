//! The audit log: who did what, when (issue 4, in progress).
