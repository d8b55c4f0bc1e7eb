//! The ledger's vocabulary and its pure core: accounts, operations, postings
//! and receipts, and [`plan`], which decides every posting of a batch in
//! memory (replay, conflict, insufficient credit, or new) against the locked
//! balances. Nothing here does I/O; [`PgLedger`](super::PgLedger) reads and
//! writes what [`plan`] decides.
//!
//! Invariants: a posting's entries sum to zero and list a wallet first (the
//! one whose balance the transaction answers with); [`Posting::validate`]
//! refuses malformed postings before any I/O; [`plan`] never lets a wallet's
//! running balance go negative.

use std::collections::HashMap;
use std::fmt;

use deskgate_actors::ports::{CreditSeconds, DebitKey, LedgerError, WalletId};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};

/// Longest idempotency key accepted (the column's CHECK says the same).
pub const MAX_KEY_LEN: usize = 200;

/// A system account: where credit comes from and goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SystemAccount {
    /// The other side of credited deposits.
    Revenue,
    /// The other side of billing debits.
    Usage,
    /// The other side of manual adjustments.
    Admin,
}

impl SystemAccount {
    fn name(self) -> &'static str {
        match self {
            Self::Revenue => "revenue",
            Self::Usage => "usage",
            Self::Admin => "admin",
        }
    }
}

/// An account in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    /// A user's wallet: `wallet:<0x address>`; its balance never goes negative.
    Wallet(WalletId),
    /// A system account; its balance is the sum of its entries and may be negative.
    System(SystemAccount),
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wallet(wallet) => write!(f, "wallet:{wallet}"),
            Self::System(system) => f.write_str(system.name()),
        }
    }
}

/// What a posting does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Adds credit to a wallet, taken from a system account (revenue for a
    /// deposit, admin for an adjustment).
    Credit {
        /// The wallet credited.
        wallet: WalletId,
        /// Credit-seconds, positive.
        amount: CreditSeconds,
        /// Where the credit comes from.
        from: SystemAccount,
    },
    /// Takes credit from a wallet into a system account (usage for billing,
    /// admin for an adjustment).
    Debit {
        /// The wallet debited.
        wallet: WalletId,
        /// Credit-seconds, positive.
        amount: CreditSeconds,
        /// Where the credit goes.
        to: SystemAccount,
    },
    /// Moves credit from one wallet to another.
    Transfer {
        /// The wallet debited.
        from: WalletId,
        /// The wallet credited.
        to: WalletId,
        /// Credit-seconds, positive.
        amount: CreditSeconds,
    },
}

impl Operation {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Credit { .. } => "credit",
            Self::Debit { .. } => "debit",
            Self::Transfer { .. } => "transfer",
        }
    }

    pub(super) fn amount(&self) -> CreditSeconds {
        match self {
            Self::Credit { amount, .. }
            | Self::Debit { amount, .. }
            | Self::Transfer { amount, .. } => *amount,
        }
    }

    /// The entries, in `seq` order. The first is always a wallet: the one
    /// whose balance the transaction answers with.
    pub(super) fn entries(&self) -> [(Account, CreditSeconds); 2] {
        match self {
            Self::Credit {
                wallet,
                amount,
                from,
            } => [
                (Account::Wallet(wallet.clone()), *amount),
                (Account::System(*from), -amount),
            ],
            Self::Debit { wallet, amount, to } => [
                (Account::Wallet(wallet.clone()), -amount),
                (Account::System(*to), *amount),
            ],
            Self::Transfer { from, to, amount } => [
                (Account::Wallet(from.clone()), -amount),
                (Account::Wallet(to.clone()), *amount),
            ],
        }
    }

    pub(super) fn wallets(&self) -> Vec<&WalletId> {
        match self {
            Self::Credit { wallet, .. } | Self::Debit { wallet, .. } => vec![wallet],
            Self::Transfer { from, to, .. } => vec![from, to],
        }
    }
}

/// One request to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    /// Idempotency key: the posting takes effect at most once under it.
    pub key: String,
    /// What it does.
    pub operation: Operation,
    /// What it is about (a session, a deposit, a ticket); not part of the
    /// parameters a repeated key is compared on.
    pub reference: Option<String>,
    /// Who asked: `system`, `admin` or `wallet:<address>`.
    pub created_by: String,
}

impl Posting {
    /// A billing debit of one session interval into `usage`.
    pub fn billing_debit(wallet: &WalletId, amount: CreditSeconds, key: DebitKey) -> Self {
        Self {
            key: key.to_string(),
            operation: Operation::Debit {
                wallet: wallet.clone(),
                amount,
                to: SystemAccount::Usage,
            },
            reference: Some(format!("session:{}", key.session)),
            created_by: "system".into(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), LedgerError> {
        if self.key.is_empty() || self.key.len() > MAX_KEY_LEN {
            return Err(LedgerError::InvalidRequest(format!(
                "the idempotency key must be 1 to {MAX_KEY_LEN} bytes"
            )));
        }
        let amount = self.operation.amount();
        if amount <= 0 {
            return Err(LedgerError::InvalidAmount(amount));
        }
        for wallet in self.operation.wallets() {
            if !is_wallet_address(wallet.as_str()) {
                return Err(LedgerError::InvalidRequest(format!(
                    "{wallet:?} is not a 0x-prefixed 20-byte hex address"
                )));
            }
        }
        if let Operation::Transfer { from, to, .. } = &self.operation
            && from == to
        {
            return Err(LedgerError::InvalidRequest(
                "a transfer needs two different wallets".into(),
            ));
        }
        Ok(())
    }
}

fn is_wallet_address(address: &str) -> bool {
    address.len() == 42
        && address.starts_with("0x")
        && address[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a posting did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The ledger transaction's id.
    pub txn_id: i64,
    /// The first wallet's balance right after the transaction.
    pub balance_after: CreditSeconds,
    /// True when the key had been posted before and this is its first answer.
    pub replayed: bool,
}

/// One line of a wallet's statement: a transaction and what it did to the wallet.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct StatementLine {
    /// The ledger transaction.
    #[diesel(sql_type = BigInt)]
    pub txn_id: i64,
    /// `credit`, `debit` or `transfer`.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// What it is about: a session, a deposit, an adjustment.
    #[diesel(sql_type = Nullable<Text>)]
    pub reference: Option<String>,
    /// Credit-seconds added (positive) or taken (negative).
    #[diesel(sql_type = BigInt)]
    pub amount: CreditSeconds,
    /// When it was posted.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The outcome of each posting of a batch, in order.
pub type BatchOutcome = Vec<Result<Receipt, LedgerError>>;

/// A transaction already in the ledger, as far as comparing a repeated key needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostedTxn {
    /// Its id.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// The answer it gave.
    pub balance_after: CreditSeconds,
    /// Its entries in `seq` order: account name and amount.
    pub entries: Vec<(String, CreditSeconds)>,
}

/// A transaction [`plan`] decided to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTxn {
    /// Which posting of the batch it comes from.
    pub posting: usize,
    /// The first wallet's balance after it.
    pub balance_after: CreditSeconds,
}

/// What [`plan`] decided for one posting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answered without writing (a replay, or a failure).
    Answered(Result<Receipt, LedgerError>),
    /// To be written as `new[i]`.
    New(usize),
    /// The same key as an earlier posting of this batch that is written as
    /// `new[i]`: it answers what that one answers.
    SameAsNew(usize),
}

/// Decides every posting of a batch, in order, against the locked balances
/// and the transactions that exist under the batch's keys. Pure: no I/O.
pub fn plan(
    postings: &[Posting],
    balances: &mut HashMap<String, CreditSeconds>,
    existing: &HashMap<String, PostedTxn>,
) -> (Vec<Decision>, Vec<NewTxn>) {
    let mut decisions = Vec::with_capacity(postings.len());
    let mut new: Vec<NewTxn> = Vec::new();
    let mut new_by_key: HashMap<&str, usize> = HashMap::new();
    for (index, posting) in postings.iter().enumerate() {
        let entries = named_entries(&posting.operation);
        if let Some(posted) = existing.get(&posting.key) {
            let same = posted.kind == posting.operation.kind() && posted.entries == entries;
            decisions.push(Decision::Answered(if same {
                Ok(Receipt {
                    txn_id: posted.id,
                    balance_after: posted.balance_after,
                    replayed: true,
                })
            } else {
                Err(LedgerError::KeyConflict(posting.key.clone()))
            }));
            continue;
        }
        if let Some(&earlier) = new_by_key.get(posting.key.as_str()) {
            let first = &postings[new[earlier].posting].operation;
            decisions.push(if *first == posting.operation {
                Decision::SameAsNew(earlier)
            } else {
                Decision::Answered(Err(LedgerError::KeyConflict(posting.key.clone())))
            });
            continue;
        }
        match apply_entries(balances, &entries) {
            Ok(balance_after) => {
                new_by_key.insert(&posting.key, new.len());
                decisions.push(Decision::New(new.len()));
                new.push(NewTxn {
                    posting: index,
                    balance_after,
                });
            }
            Err(err) => decisions.push(Decision::Answered(Err(err))),
        }
    }
    (decisions, new)
}

fn named_entries(operation: &Operation) -> Vec<(String, CreditSeconds)> {
    operation
        .entries()
        .into_iter()
        .map(|(account, amount)| (account.to_string(), amount))
        .collect()
}

/// Applies entries to the running wallet balances if none goes negative;
/// returns the first entry's new balance.
fn apply_entries(
    balances: &mut HashMap<String, CreditSeconds>,
    entries: &[(String, CreditSeconds)],
) -> Result<CreditSeconds, LedgerError> {
    let mut updated = Vec::with_capacity(entries.len());
    for (account, amount) in entries {
        let Some(&balance) = balances.get(account) else {
            continue; // a system account: unbounded, not materialised
        };
        let after = balance
            .checked_add(*amount)
            .ok_or_else(|| LedgerError::InvalidRequest("the balance would overflow".into()))?;
        if after < 0 {
            return Err(LedgerError::InsufficientCredit {
                balance,
                asked: -amount,
            });
        }
        updated.push((account, after));
    }
    for (account, after) in &updated {
        balances.insert((*account).clone(), *after);
    }
    // as_slice: diesel's RunQueryDsl::first would otherwise claim the call.
    Ok(updated.as_slice().first().map_or(0, |(_, after)| *after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wallet(n: u8) -> WalletId {
        WalletId::new(&format!("0x{}", format!("{n:02x}").repeat(20)))
    }

    fn debit(key: &str, w: u8, amount: CreditSeconds) -> Posting {
        Posting {
            key: key.into(),
            operation: Operation::Debit {
                wallet: wallet(w),
                amount,
                to: SystemAccount::Usage,
            },
            reference: None,
            created_by: "system".into(),
        }
    }

    fn balances(pairs: &[(u8, CreditSeconds)]) -> HashMap<String, CreditSeconds> {
        pairs
            .iter()
            .map(|(w, b)| (Account::Wallet(wallet(*w)).to_string(), *b))
            .collect()
    }

    #[test]
    fn debits_in_a_batch_see_each_other() {
        let mut held = balances(&[(1, 100)]);
        let batch = [debit("a", 1, 60), debit("b", 1, 60), debit("c", 1, 40)];
        let (decisions, new) = plan(&batch, &mut held, &HashMap::new());
        assert_eq!(decisions[0], Decision::New(0));
        assert_eq!(
            decisions[1],
            Decision::Answered(Err(LedgerError::InsufficientCredit {
                balance: 40,
                asked: 60
            }))
        );
        assert_eq!(decisions[2], Decision::New(1));
        assert_eq!(
            new.iter().map(|n| n.balance_after).collect::<Vec<_>>(),
            [40, 0]
        );
        assert_eq!(held[&Account::Wallet(wallet(1)).to_string()], 0);
    }

    #[test]
    fn a_repeated_key_answers_the_first_result_or_conflicts() {
        let mut held = balances(&[(1, 100)]);
        let posted = PostedTxn {
            id: 7,
            kind: "debit".into(),
            balance_after: 90,
            entries: named_entries(&debit("k", 1, 10).operation),
        };
        let existing = HashMap::from([("k".to_string(), posted)]);
        let (decisions, new) = plan(
            &[debit("k", 1, 10), debit("k", 1, 11)],
            &mut held,
            &existing,
        );
        assert!(new.is_empty());
        assert_eq!(
            decisions[0],
            Decision::Answered(Ok(Receipt {
                txn_id: 7,
                balance_after: 90,
                replayed: true
            }))
        );
        assert_eq!(
            decisions[1],
            Decision::Answered(Err(LedgerError::KeyConflict("k".into())))
        );
        assert_eq!(
            held[&Account::Wallet(wallet(1)).to_string()],
            100,
            "nothing taken"
        );
    }

    #[test]
    fn a_key_twice_in_one_batch_is_written_once() {
        let mut held = balances(&[(1, 100)]);
        let batch = [debit("k", 1, 10), debit("k", 1, 10), debit("k", 1, 20)];
        let (decisions, new) = plan(&batch, &mut held, &HashMap::new());
        assert_eq!(new.len(), 1);
        assert_eq!(decisions[1], Decision::SameAsNew(0));
        assert_eq!(
            decisions[2],
            Decision::Answered(Err(LedgerError::KeyConflict("k".into())))
        );
        assert_eq!(held[&Account::Wallet(wallet(1)).to_string()], 90);
    }

    #[test]
    fn a_transfer_fails_whole_when_the_source_lacks_credit() {
        let mut held = balances(&[(1, 5), (2, 0)]);
        let transfer = Posting {
            key: "t".into(),
            operation: Operation::Transfer {
                from: wallet(1),
                to: wallet(2),
                amount: 6,
            },
            reference: None,
            created_by: "system".into(),
        };
        let (decisions, new) = plan(&[transfer], &mut held, &HashMap::new());
        assert!(new.is_empty());
        assert!(matches!(
            decisions[0],
            Decision::Answered(Err(LedgerError::InsufficientCredit { .. }))
        ));
        assert_eq!(held, balances(&[(1, 5), (2, 0)]));
    }

    #[test]
    fn malformed_postings_are_refused_before_any_io() {
        assert_eq!(
            debit("k", 1, 0).validate(),
            Err(LedgerError::InvalidAmount(0))
        );
        assert!(matches!(
            debit("", 1, 1).validate(),
            Err(LedgerError::InvalidRequest(_))
        ));
        assert!(matches!(
            debit(&"x".repeat(MAX_KEY_LEN + 1), 1, 1).validate(),
            Err(LedgerError::InvalidRequest(_))
        ));
        let mut bad_wallet = debit("k", 1, 1);
        bad_wallet.operation = Operation::Debit {
            wallet: WalletId::new("alice"),
            amount: 1,
            to: SystemAccount::Usage,
        };
        assert!(matches!(
            bad_wallet.validate(),
            Err(LedgerError::InvalidRequest(_))
        ));
        let self_transfer = Posting {
            operation: Operation::Transfer {
                from: wallet(1),
                to: wallet(1),
                amount: 1,
            },
            ..debit("k", 1, 1)
        };
        assert!(matches!(
            self_transfer.validate(),
            Err(LedgerError::InvalidRequest(_))
        ));
        assert_eq!(debit("k", 1, 1).validate(), Ok(()));
    }
}
