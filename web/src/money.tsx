// Money on the page: credit as time per profile, the deposit form (quote,
// send through the wallet, follow the transaction until it is credited),
// the wallet's deposits with live status, and the ledger, paged.

import { useEffect, useState } from "preact/hooks";
import type { Address, Hash } from "viem";
import { type Account, type Asset, type Deposit, type DepositCheck, type LedgerPage, type Pricing, type Quote, api } from "./api";
import { creditAsTime, duration, short, units } from "./format";
import { describe } from "./problem";
import type { Wallet } from "./wallet";

const DECIMALS: Record<Asset, number> = { eth: 18, token: 18 };
const SYMBOL: Record<Asset, string> = { eth: "ETH", token: "tokens" };

export function MoneyPanel(props: {
  pricing?: Pricing;
  account: Account;
  wallet?: Wallet;
  onConnectWallet: () => void;
  onAccountChanged: () => Promise<unknown>;
}) {
  const [deposits, setDeposits] = useState<Deposit[]>([]);
  const refreshDeposits = () =>
    api.deposits().then(
      (d) => setDeposits(d.deposits),
      () => {},
    );
  useEffect(() => {
    refreshDeposits();
  }, [props.account.credit_seconds]);

  const profiles = props.pricing?.profiles ?? [];
  return (
    <section class="panel money" aria-labelledby="credit-heading">
      <h2 id="credit-heading">Credit</h2>
      <p class="credit" data-testid="credit">
        {creditAsTime(props.account.credit_seconds, 1)}
      </p>
      {profiles.length > 1 && (
        <ul class="per-profile">
          {profiles.map((p) => (
            <li key={p.name}>
              {p.name}: {creditAsTime(props.account.credit_seconds, p.gpus)}
            </li>
          ))}
        </ul>
      )}
      {props.pricing?.tiers.length ? <Tiers pricing={props.pricing} /> : null}
      <DepositForm {...props} onDeposited={async () => { await refreshDeposits(); await props.onAccountChanged(); }} />
      <Deposits deposits={deposits} />
      <Ledger credit={props.account.credit_seconds} />
    </section>
  );
}

function Tiers({ pricing }: { pricing: Pricing }) {
  return (
    <details class="tiers">
      <summary>Token-holder discounts</summary>
      <ul>
        {pricing.tiers.map((t) => (
          <li key={t.min_token_balance}>
            {t.discount_percent}% off when holding at least {units(BigInt(t.min_token_balance), 18)} tokens
          </li>
        ))}
      </ul>
    </details>
  );
}

type Tracking = { hash: Hash; check?: DepositCheck; error?: string };

/** Sends the deposit `quote` prices through `wallet`; returns its hash. */
export async function sendDeposit(wallet: Wallet, pricing: Pricing, quote: Quote): Promise<Hash> {
  await wallet.ensureChain(pricing.chain_id, pricing.wallet_rpc_url);
  const to = quote.revenue_address as Address;
  const amount = BigInt(quote.amount);
  if (quote.asset === "eth") return wallet.sendEth(to, amount);
  const token = pricing.assets.find((a) => a.asset === "token")?.address as Address;
  return wallet.sendToken(token, to, amount);
}

/** Asks the gate about `hash` every second until it is credited or rejected. */
export async function followDeposit(hash: Hash, onCheck: (check: DepositCheck) => void): Promise<DepositCheck> {
  for (;;) {
    const check = await api.checkDeposit(hash);
    onCheck(check);
    if (check.status !== "pending") return check;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

/** A deposit check in words. */
export function depositStatus(check: DepositCheck | undefined): string {
  if (!check) return "Sent; waiting for the gate to see it…";
  if (check.status === "credited") return `Credited: ${duration(check.credit_seconds ?? 0)} of GPU time.`;
  if (check.status === "rejected") return `Not credited: ${check.reason ?? "the gate refused this transaction"}.`;
  if (check.required) return `Confirmations ${check.confirmations}/${check.required}…`;
  return check.reason ? `Waiting: ${check.reason}…` : "Waiting for the block to be finalized…";
}

function DepositForm(props: {
  pricing?: Pricing;
  wallet?: Wallet;
  onConnectWallet: () => void;
  onDeposited: () => Promise<void>;
}) {
  const pricing = props.pricing;
  const assets = pricing?.assets ?? [];
  const [asset, setAsset] = useState<Asset>("eth");
  const [minutes, setMinutes] = useState(60);
  const [profile, setProfile] = useState("small");
  const [quote, setQuote] = useState<Quote>();
  const [error, setError] = useState<string>();
  const [sending, setSending] = useState(false);
  const [tracking, setTracking] = useState<Tracking>();

  useEffect(() => {
    if (!pricing?.deposits_enabled || !(minutes > 0)) return;
    let current = true;
    api.quote(asset, minutes, profile).then(
      (q) => current && (setQuote(q), setError(undefined)),
      (e) => current && (setQuote(undefined), setError(describe(e))),
    );
    return () => {
      current = false;
    };
  }, [asset, minutes, profile, pricing?.deposits_enabled]);

  if (!pricing) return null;
  if (!pricing.deposits_enabled) {
    return <p class="note">This gate takes no deposits right now.</p>;
  }

  const send = async (e: Event) => {
    e.preventDefault();
    if (!quote || !props.wallet) return;
    setSending(true);
    setError(undefined);
    let hash: Hash;
    try {
      hash = await sendDeposit(props.wallet, pricing, quote);
    } catch (err) {
      setError(describe(err));
      return;
    } finally {
      setSending(false);
    }
    // Follow the transaction until the gate credits or rejects it.
    setTracking({ hash });
    try {
      const check = await followDeposit(hash, (c) => setTracking({ hash, check: c }));
      if (check.status === "credited") await props.onDeposited();
    } catch (err) {
      setTracking({ hash, error: describe(err) });
    }
  };

  return (
    <form class="deposit" onSubmit={send} aria-labelledby="deposit-heading">
      <h3 id="deposit-heading">Top up</h3>
      <div class="row">
        <label>
          Pay with
          <select value={asset} onChange={(e) => setAsset(e.currentTarget.value as Asset)}>
            {assets.map((a) => (
              <option key={a.asset} value={a.asset}>
                {a.asset === "eth" ? "ETH" : `Token ${short(a.address ?? "")}`}
              </option>
            ))}
          </select>
        </label>
        <label>
          Minutes
          <input
            type="number"
            min={1}
            step={1}
            value={minutes}
            onInput={(e) => setMinutes(Math.floor(Number(e.currentTarget.value)))}
          />
        </label>
        <label>
          On profile
          <select value={profile} onChange={(e) => setProfile(e.currentTarget.value)}>
            {pricing.profiles.map((p) => (
              <option key={p.name} value={p.name}>
                {p.name} ({p.gpus} GPU{p.gpus === 1 ? "" : "s"})
              </option>
            ))}
          </select>
        </label>
      </div>
      {quote && (
        <p class="quote" aria-live="polite">
          {units(BigInt(quote.amount), DECIMALS[asset])} {SYMBOL[asset]} buys {duration(quote.minutes * 60)} on{" "}
          {quote.profile}
          {quote.discount_percent > 0 ? ` (${quote.discount_percent}% holder discount)` : ""}, sent to{" "}
          <code title={quote.revenue_address}>{short(quote.revenue_address)}</code>.
        </p>
      )}
      {props.wallet ? (
        <button class="primary" type="submit" disabled={!quote || sending}>
          Deposit
        </button>
      ) : (
        <p class="note">
          Connect the wallet you signed in with to deposit.{" "}
          <button type="button" onClick={props.onConnectWallet}>
            Connect wallet
          </button>
        </p>
      )}
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {tracking && <TrackedDeposit tracking={tracking} />}
    </form>
  );
}

function TrackedDeposit({ tracking }: { tracking: Tracking }) {
  const c = tracking.check;
  const text = tracking.error ?? depositStatus(c);
  return (
    <p class={`tracking ${c?.status ?? "sent"}`} role="status" data-testid="deposit-status">
      <code title={tracking.hash}>{short(tracking.hash)}</code> {text}
    </p>
  );
}

function Deposits({ deposits }: { deposits: Deposit[] }) {
  if (deposits.length === 0) return null;
  return (
    <details class="deposits">
      <summary>Deposits ({deposits.length})</summary>
      <table>
        <thead>
          <tr>
            <th>Transaction</th>
            <th>Amount</th>
            <th>Status</th>
            <th>Credit</th>
          </tr>
        </thead>
        <tbody>
          {deposits.map((d) => (
            <tr key={`${d.tx_hash}:${d.log_index}`}>
              <td>
                <code title={d.tx_hash}>{short(d.tx_hash)}</code>
              </td>
              <td>
                {units(BigInt(d.amount), DECIMALS[d.asset])} {SYMBOL[d.asset]}
              </td>
              <td>{d.status}</td>
              <td>{d.credit_seconds ? duration(d.credit_seconds) : "—"}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </details>
  );
}

function Ledger({ credit }: { credit: number }) {
  const [pages, setPages] = useState<LedgerPage[]>([]);
  const [open, setOpen] = useState(false);
  useEffect(() => {
    if (open) api.ledger().then((p) => setPages([p]), () => {});
  }, [open, credit]);
  const next = pages.at(-1)?.next_before;
  return (
    <details class="ledger" onToggle={(e) => setOpen(e.currentTarget.open)}>
      <summary>Ledger</summary>
      <table>
        <thead>
          <tr>
            <th>When</th>
            <th>What</th>
            <th>Credit</th>
          </tr>
        </thead>
        <tbody>
          {pages.flatMap((p) =>
            p.entries.map((e) => (
              <tr key={`${e.txn_id}`}>
                <td>{new Date(e.created_at).toLocaleString()}</td>
                <td>{e.kind.replace(/_/g, " ")}</td>
                <td class="num">
                  {e.amount > 0 ? "+" : e.amount < 0 ? "−" : ""}
                  {duration(Math.abs(e.amount))}
                </td>
              </tr>
            )),
          )}
        </tbody>
      </table>
      {next && (
        <button type="button" onClick={() => api.ledger(next).then((p) => setPages([...pages, p]))}>
          Older entries
        </button>
      )}
    </details>
  );
}
