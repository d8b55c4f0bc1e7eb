// Wallets: every wallet the browser announces through EIP-6963 (mipd),
// else the legacy `window.ethereum`; connecting, switching to the gate's
// chain, signing the sign-in message (personal_sign) and sending deposits,
// through viem's wallet client on the wallet's own EIP-1193 provider. The
// page never sees a key and talks to no RPC node: the wallet does.

import { createStore, type EIP6963ProviderDetail, type Store } from "mipd";
import {
  type Address,
  type EIP1193Provider,
  type Hash,
  createWalletClient,
  custom,
  encodeFunctionData,
  erc20Abi,
  numberToHex,
} from "viem";
import { errorCode } from "./problem";

/** A wallet the user can pick. */
export interface WalletChoice {
  id: string;
  name: string;
  icon?: string;
  provider: EIP1193Provider;
}

let store: Store | undefined;

/** Wallets announced now; `onChange` hears later announcements. */
export function discoverWallets(onChange: (wallets: WalletChoice[]) => void): WalletChoice[] {
  store ??= createStore();
  const list = (details: readonly EIP6963ProviderDetail[]): WalletChoice[] => {
    const wallets: WalletChoice[] = details.map((d) => ({
      id: d.info.uuid,
      name: d.info.name,
      icon: d.info.icon,
      provider: d.provider as EIP1193Provider,
    }));
    const legacy = (window as { ethereum?: EIP1193Provider }).ethereum;
    if (wallets.length === 0 && legacy) {
      wallets.push({ id: "window.ethereum", name: "Browser wallet", provider: legacy });
    }
    return wallets;
  };
  store.subscribe((details) => onChange(list(details)));
  return list(store.getProviders());
}

/** A connected wallet account. */
export class Wallet {
  private readonly client;

  private constructor(
    readonly choice: WalletChoice,
    readonly address: Address,
  ) {
    this.client = createWalletClient({ account: address, transport: custom(choice.provider) });
  }

  /** Asks the wallet for an account (the wallet shows its prompt). */
  static async connect(choice: WalletChoice): Promise<Wallet> {
    const accounts = (await choice.provider.request({ method: "eth_requestAccounts" })) as Address[];
    if (!accounts?.length) throw new Error("The wallet shared no account.");
    return new Wallet(choice, accounts[0]);
  }

  /** The chain the wallet is on. */
  async chainId(): Promise<number> {
    return Number(await this.choice.provider.request({ method: "eth_chainId" }));
  }

  /**
   * Makes sure the wallet is on `chainId`, asking it to switch. A wallet
   * that does not know the chain (4902) is asked to add it when the gate
   * names a public RPC URL for it (`rpcUrl`); else the 4902 goes to the
   * caller, which says what to do.
   */
  async ensureChain(chainId: number, rpcUrl?: string | null): Promise<void> {
    if ((await this.chainId()) === chainId) return;
    const switchTo = () =>
      this.choice.provider.request({
        method: "wallet_switchEthereumChain",
        params: [{ chainId: numberToHex(chainId) }],
      });
    try {
      await switchTo();
    } catch (e) {
      if (errorCode(e) !== 4902 || !rpcUrl) throw e;
      await this.choice.provider.request({
        method: "wallet_addEthereumChain",
        params: [
          {
            chainId: numberToHex(chainId),
            chainName: chainId === 31337 ? "Anvil (local)" : `deskgate chain ${chainId}`,
            rpcUrls: [rpcUrl],
            nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
          },
        ],
      });
      await switchTo();
    }
    if ((await this.chainId()) !== chainId) {
      throw new Error(`Your wallet is still on another chain; switch it to chain ${chainId}.`);
    }
  }

  /** EIP-191 personal_sign of `message`, as the sign-in expects. */
  sign(message: string): Promise<Hash> {
    return this.client.signMessage({ message });
  }

  /** Sends `wei` to `to`; returns the transaction hash. */
  sendEth(to: Address, wei: bigint): Promise<Hash> {
    return this.client.sendTransaction({ to, value: wei, chain: null });
  }

  /** Sends `amount` base units of the ERC-20 at `token` to `to`. */
  sendToken(token: Address, to: Address, amount: bigint): Promise<Hash> {
    const data = encodeFunctionData({ abi: erc20Abi, functionName: "transfer", args: [to, amount] });
    return this.client.sendTransaction({ to: token, data, chain: null });
  }

  /**
   * Calls `onChange` when the user switches account in the wallet. A chain
   * change is not one: the page switches chains itself, and checks the
   * chain before every request that needs it.
   */
  watch(onChange: () => void): () => void {
    const provider = this.choice.provider;
    provider.on("accountsChanged", onChange);
    return () => provider.removeListener("accountsChanged", onChange);
  }
}
