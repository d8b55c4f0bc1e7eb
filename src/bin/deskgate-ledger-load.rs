//! Drives the ledger with idempotent billing debits, for load and crash
//! testing against a real PostgreSQL (`DESKGATE_DATABASE_URL`).
//!
//! Credits one wallet once, then posts debits `load:<wallet>:<i>` of one
//! credit-second for i in `--from..--to`, `--batch` per transaction, and
//! prints `committed <last i>` after each commit. Killing it at any moment
//! and running it again over the same range must leave every key applied
//! exactly once; `tests/ledger.rs` does exactly that.

use anyhow::Context;
use clap::Parser;
use deskgate::money::ledger::{Operation, PgLedger, Posting, SystemAccount};
use deskgate::platform::secret::Secret;
use deskgate_actors::ports::WalletId;

#[derive(Parser, Debug)]
struct Args {
    /// The wallet debited (0x address).
    #[arg(long)]
    wallet: String,
    /// Credit given once (under key `load-credit:<wallet>`) before debiting.
    #[arg(long, default_value_t = 1_000_000)]
    credit: i64,
    /// First debit index.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// One past the last debit index.
    #[arg(long)]
    to: u64,
    /// Debits per transaction.
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

fn debit_posting(wallet: &WalletId, index: u64) -> Posting {
    Posting {
        key: format!("load:{wallet}:{index}"),
        operation: Operation::Debit {
            wallet: wallet.clone(),
            amount: 1,
            to: SystemAccount::Usage,
        },
        reference: None,
        created_by: "system".into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = std::env::var("DESKGATE_DATABASE_URL")
        .context("DESKGATE_DATABASE_URL is not set (run `make services` to start PostgreSQL)")?;
    let ledger = PgLedger::new(deskgate::db::pool(&Secret::new(url))?);
    let wallet = WalletId::new(&args.wallet);
    ledger
        .credit(
            &wallet,
            args.credit,
            SystemAccount::Revenue,
            format!("load-credit:{wallet}"),
        )
        .await?;
    let indices: Vec<u64> = (args.from..args.to).collect();
    for chunk in indices.chunks(args.batch.max(1)) {
        let postings: Vec<Posting> = chunk.iter().map(|&i| debit_posting(&wallet, i)).collect();
        for (index, answer) in chunk.iter().zip(ledger.post_batch(&postings).await?) {
            answer.with_context(|| format!("debit {index}"))?;
        }
        println!("committed {}", chunk[chunk.len() - 1]);
    }
    Ok(())
}
