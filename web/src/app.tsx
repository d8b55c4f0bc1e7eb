// The page: a wallet signs in, then the account (credit, deposits, ledger),
// the profiles to start and the session (queue, desktop, end) show. State
// lives here and flows down; each panel reports back through callbacks.
//
// Signed-in state is the gate's HttpOnly cookie: on load the page asks for
// /account and is signed in if that answers.

import { useCallback, useEffect, useState } from "preact/hooks";
import { type Account, type Pricing, type Session, api } from "./api";
import { MoneyPanel } from "./money";
import { ApiError, describe } from "./problem";
import { SessionPanel } from "./session";
import { Wallet, type WalletChoice, discoverWallets } from "./wallet";

export function App() {
  const [pricing, setPricing] = useState<Pricing>();
  const [wallets, setWallets] = useState<WalletChoice[]>([]);
  const [wallet, setWallet] = useState<Wallet>();
  const [account, setAccount] = useState<Account | null>();
  const [session, setSession] = useState<Session | null>(null);
  const [busy, setBusy] = useState<string>();
  const [error, setError] = useState<string>();

  const refreshAccount = useCallback(async () => {
    try {
      const a = await api.account();
      setAccount(a);
      return a;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        setAccount(null);
        return null;
      }
      throw e;
    }
  }, []);

  useEffect(() => {
    setWallets(discoverWallets(setWallets));
    api.pricing().then(setPricing, (e) => setError(describe(e)));
    refreshAccount()
      .then(async (a) => {
        if (a?.active_session) setSession(await api.session(a.active_session));
      })
      .catch((e) => setError(describe(e)));
  }, [refreshAccount]);

  const run = async (what: string, action: () => Promise<void>) => {
    setBusy(what);
    setError(undefined);
    try {
      await action();
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy(undefined);
    }
  };

  const connect = (choice: WalletChoice) =>
    run("Connecting…", async () => {
      const w = await Wallet.connect(choice);
      setWallet(w);
      w.watch(() => setWallet(undefined));
    });

  const signIn = () =>
    run("Waiting for your signature…", async () => {
      if (!wallet || !pricing) return;
      await wallet.ensureChain(pricing.chain_id, pricing.wallet_rpc_url);
      const challenge = await api.nonce(wallet.address);
      const signature = await wallet.sign(challenge.message);
      await api.verify(challenge.message, signature);
      const a = await refreshAccount();
      if (a?.active_session) setSession(await api.session(a.active_session));
    });

  const signOut = () =>
    run("Signing out…", async () => {
      await api.logout();
      setAccount(null);
      setSession(null);
    });

  const signedIn = account?.address;
  const walletMatches =
    !!wallet && !!signedIn && wallet.address.toLowerCase() === signedIn.toLowerCase();

  return (
    <div class="page">
      <header class="top">
        <h1>deskgate</h1>
        <div class="who" aria-live="polite">
          {signedIn ? (
            <>
              <span class="address" title={signedIn}>
                Signed in as {signedIn.slice(0, 6)}…{signedIn.slice(-4)}
              </span>
              <button onClick={signOut} disabled={!!busy}>
                Sign out
              </button>
            </>
          ) : wallet ? (
            <>
              <span class="address">{wallet.choice.name}: {wallet.address.slice(0, 6)}…{wallet.address.slice(-4)}</span>
              <button class="primary" onClick={signIn} disabled={!!busy || !pricing}>
                Sign in
              </button>
            </>
          ) : null}
        </div>
      </header>

      {busy && (
        <p class="busy" role="status">
          {busy}
        </p>
      )}
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}

      {account === undefined ? (
        <p class="loading">Loading…</p>
      ) : !signedIn ? (
        <WalletPicker wallets={wallets} connected={wallet} onConnect={connect} busy={!!busy} pricing={pricing} />
      ) : (
        <main class="signed-in">
          <SessionPanel
            pricing={pricing}
            account={account!}
            wallet={walletMatches ? wallet : undefined}
            session={session}
            onSession={setSession}
            onAccountChanged={refreshAccount}
          />
          <MoneyPanel
            pricing={pricing}
            account={account!}
            wallet={walletMatches ? wallet : undefined}
            onConnectWallet={() => setWallet(undefined)}
            onAccountChanged={refreshAccount}
          />
        </main>
      )}
    </div>
  );
}

function WalletPicker(props: {
  wallets: WalletChoice[];
  connected?: Wallet;
  onConnect: (w: WalletChoice) => void;
  busy: boolean;
  pricing?: Pricing;
}) {
  if (props.connected) {
    return (
      <section class="panel intro">
        <h2>Sign in</h2>
        <p>
          Your wallet will ask you to sign a message that names this site and a one-time code. Signing costs
          nothing and sends no transaction.
        </p>
      </section>
    );
  }
  return (
    <section class="panel intro" aria-labelledby="connect-heading">
      <h2 id="connect-heading">GPU desktops in your browser</h2>
      <p>
        Pay with an Ethereum wallet by the second of GPU time, wait your turn fairly when GPUs are busy, and get a
        full desktop in this tab.
      </p>
      {props.wallets.length === 0 ? (
        <div class="help">
          <p>
            <strong>No wallet found in this browser.</strong> Install a wallet extension (for example MetaMask or
            Rabby), reload this page, and it will be listed here.
          </p>
          {props.pricing && <p>This gate runs on chain {props.pricing.chain_id}.</p>}
        </div>
      ) : (
        <ul class="wallets">
          {props.wallets.map((w) => (
            <li key={w.id}>
              <button class="primary" onClick={() => props.onConnect(w)} disabled={props.busy} aria-label={props.wallets.length === 1 ? "Connect wallet" : `Connect wallet ${w.name}`}>
                {w.icon && <img src={w.icon} alt="" width={20} height={20} />}
                Connect wallet{props.wallets.length > 1 ? `: ${w.name}` : ""}
              </button>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
